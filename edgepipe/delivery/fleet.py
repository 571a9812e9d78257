"""Deploy one bundle to many devices: Ansible-style inventories, bounded parallelism, merged results.

Why: a model is judged on the fleet it ships to, not on one board. Inventories use the Ansible
INI/YAML vocabulary (`ansible_host`, `ansible_port`, ...) so the same file drives both
`edgepipe deploy --inventory` and the bundle's own `deploy/playbook.yml`. One broken device must
not stop the others: each host runs in its own worker, a failure is retried once, and the
outcome is a table plus `fleet.json` whose latency spread shows how much devices disagree.
"""

from __future__ import annotations

import json
import shlex
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from edgepipe.delivery.deploy import DeployResult, SshTarget, check_host_name, deploy_bundle
from edgepipe.safeio import (CONFIG_MAX_BYTES, ensure_regular_file, parse_yaml, read_text_bounded,
                             write_text_replacing)
from edgepipe.errors import BudgetError, UserError, one_line

HOST_VARIABLES = {"ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
                  "edgepipe_remote_dir"}
# Ansible's older spellings of the same connection variables (still read by Ansible): dropping
# them made edgepipe connect to the inventory alias instead of `ansible_ssh_host`'s address
ANSIBLE_ALIASES = {"ansible_ssh_host": "ansible_host", "ansible_ssh_port": "ansible_port",
                   "ansible_ssh_user": "ansible_user", "ansible_private_key_file": "ansible_ssh_private_key_file"}
# how Ansible would reach the host that a plain `ssh host` does not do: ignoring one deploys
# somewhere else (a private address without its jump host) or not at all
UNSUPPORTED_CONNECTION = ("ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_ssh_args",
                          "ansible_password", "ansible_ssh_pass", "ansible_ssh_executable")


class FleetFailure(BudgetError):
    """Some hosts failed after their retry: exit code 1 (the others still deployed and reported)."""


@dataclass(frozen=True)
class InventoryHost:
    """One inventory entry: its alias plus the Ansible connection variables edgepipe understands."""

    name: str
    variables: dict = field(default_factory=dict, hash=False, compare=False)

    def target(self, identity: str | None = None, port: int = 22, user: str | None = None,
               **ssh_options) -> SshTarget:
        """SshTarget for this host; inventory variables win over the command-line defaults."""
        try:
            port = int(self.variables.get("ansible_port", port))
        except ValueError:
            raise UserError(f"host {self.name}: ansible_port {self.variables['ansible_port']!r} "
                            f"is not a number") from None
        return SshTarget(host=self.variables.get("ansible_host", self.name),
                         user=self.variables.get("ansible_user", user), port=port,
                         identity=self.variables.get("ansible_ssh_private_key_file", identity),
                         label=self.name, **ssh_options)

    @property
    def remote_dir(self) -> str | None:
        return self.variables.get("edgepipe_remote_dir")


def _parse_ini(text: str, path: Path) -> dict[str, dict]:
    hosts: dict[str, dict] = {}
    group_vars: dict[str, dict] = {}
    members: dict[str, list[str]] = {}
    section = "ungrouped"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section.endswith(":children"):
                raise UserError(f"{path}:{number}: [{section}] groups of groups are not supported; "
                                f"list hosts directly under each group")
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise UserError(f"{path}:{number}: cannot parse line ({error}); check the quotes") from None
        if section.endswith(":vars"):
            key, sep, value = line.partition("=")
            if not sep:
                raise UserError(f"{path}:{number}: expected key=value under [{section}]")
            group_vars.setdefault(section[:-5], {})[key.strip()] = value.strip().strip("'\"")
            continue
        name, assignments = words[0], words[1:]
        variables = hosts.setdefault(name, {})
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep:
                raise UserError(f"{path}:{number}: expected key=value after host {name}, got {assignment!r}")
            variables[key] = value
        members.setdefault(section, []).append(name)
    for group, names in members.items():
        for name in names:
            hosts[name] = {**group_vars.get("all", {}), **group_vars.get(group, {}), **hosts[name]}
    return hosts


def _parse_yaml(text: str, path: Path) -> dict[str, dict]:
    document = parse_yaml(text, f"{path} (YAML inventory)") or {}
    hosts: dict[str, dict] = {}

    def mapping(value, what: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserError(f"{path}: {what} must be a mapping, got {type(value).__name__}")
        return value

    def walk(group, inherited: dict, where: str) -> None:
        group = mapping(group, f"group '{where}' (hosts/vars/children)")
        variables = {**inherited, **mapping(group.get("vars"), f"'{where}.vars'")}
        for name, host_vars in mapping(group.get("hosts"), f"'{where}.hosts'").items():
            host_vars = mapping(host_vars, f"the variables of host '{name}'")
            hosts[str(name)] = {**variables, **hosts.get(str(name), {}), **host_vars}
        for child_name, child in mapping(group.get("children"), f"'{where}.children'").items():
            walk(child, variables, f"{where}.children.{child_name}")

    if not isinstance(document, dict):
        raise UserError(f"{path}: a YAML inventory must be a mapping of groups (e.g. all: hosts: ...)")
    for name, group in document.items():
        walk(group, {}, str(name))
    return hosts


def load_inventory(path: str | Path) -> list[InventoryHost]:
    """Read an Ansible INI (groups, host vars, [group:vars]) or YAML inventory."""
    path = Path(path)
    text = read_text_bounded(path, CONFIG_MAX_BYTES, "inventory", marked_unicode=True)
    parser = _parse_yaml if path.suffix in (".yml", ".yaml") else _parse_ini
    hosts = parser(text, path)
    if not hosts:
        raise UserError(f"{path}: inventory lists no hosts")
    inventory = []
    for name, variables in hosts.items():
        check_host_name(name, "host alias")
        for key, value in variables.items():
            if (key in HOST_VARIABLES or key in ANSIBLE_ALIASES) and (isinstance(value, (dict, list, bool))
                                                                  or value is None):
                raise UserError(f"{path}: host {name}: {key} must be a single value, got {type(value).__name__}")
            if isinstance(value, str) and "\0" in value:  # a key file with one was an internal error
                raise UserError(f"{path}: host {name}: {key} holds a NUL character ({value!r}); remove it")
        variables = _connection_variables(variables, path, name)
        key_file = variables.get("ansible_ssh_private_key_file")
        key_path = Path(key_file).expanduser() if key_file else None
        if key_path is not None and (key_path.exists() or key_path.is_symlink()):  # a FIFO would block ssh
            ensure_regular_file(key_path, CONFIG_MAX_BYTES, f"SSH private key of host {name}")  # (and the fleet)
        inventory.append(InventoryHost(name=name, variables=variables))
    return inventory


def _connection_variables(variables: dict, path: Path, host: str) -> dict[str, str]:
    """The host's connection variables edgepipe honours (old Ansible spellings read as the new
    ones); a connection setting it cannot honour is refused naming the host and the fix."""
    for key in UNSUPPORTED_CONNECTION:
        if key in variables:
            raise UserError(f"{path}: host {host}: {key} is not used by edgepipe deploy (it runs a plain `ssh "
                            f"ansible_host`); put the option (ProxyJump, ...) in ~/.ssh/config for that host, "
                            "or deploy with the bundle's deploy/playbook.yml")
    connection = str(variables.get("ansible_connection", "ssh"))
    if connection not in ("ssh", "smart", "paramiko"):
        raise UserError(f"{path}: host {host}: ansible_connection={connection} is not ssh; edgepipe deploy "
                        "copies over ssh only: deploy that host with the bundle's deploy/playbook.yml")
    kept = {ANSIBLE_ALIASES.get(key, key): value for key, value in variables.items()
            if key in ANSIBLE_ALIASES and ANSIBLE_ALIASES[key] not in variables}
    kept.update({key: value for key, value in variables.items() if key in HOST_VARIABLES})
    return {key: str(value) for key, value in kept.items()}


@dataclass
class HostOutcome:
    """The final state of one host after its attempts."""

    name: str
    attempts: int
    result: DeployResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


DeployOne = Callable[[InventoryHost], DeployResult]


def deploy_with_retry(host: InventoryHost, deploy_one: DeployOne, retries: int) -> HostOutcome:
    error = None
    for attempt in range(1, retries + 2):
        try:
            return HostOutcome(name=host.name, attempts=attempt, result=deploy_one(host))
        except (UserError, OSError) as caught:
            error = str(caught)
    return HostOutcome(name=host.name, attempts=retries + 1, error=error)


def deploy_fleet(bundle: str | Path, hosts: list[InventoryHost], parallel: int = 4, run: bool = False,
                 iterations: int | None = None, warmup: int | None = None, out_dir: str | Path | None = None,
                 remote_dir: str | None = None, retries: int = 1, transfer: str = "auto",
                 **ssh_options) -> list[HostOutcome]:
    """Deploy to every host with at most `parallel` at once; outcomes keep inventory order."""
    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    names = [host.name for host in hosts]
    if len(set(names)) != len(names):
        raise UserError("inventory lists the same host alias twice; aliases name the result folders")
    out_dir = Path(out_dir) if out_dir is not None else Path(bundle) / "report"

    def deploy_one(host: InventoryHost) -> DeployResult:
        return deploy_bundle(bundle, host.target(**ssh_options), remote_dir=host.remote_dir or remote_dir,
                             run=run, iterations=iterations, warmup=warmup, out_dir=out_dir, transfer=transfer)

    with ThreadPoolExecutor(max_workers=min(parallel, len(hosts)) or 1) as pool:
        return list(pool.map(lambda host: deploy_with_retry(host, deploy_one, retries), hosts))


def format_table(outcomes: list[HostOutcome]) -> str:
    """A plain-text per-host table: status, attempts, p50/p99 latency or the error."""
    rows = [("host", "status", "tries", "p50 ms", "p99 ms", "detail")]
    for outcome in outcomes:
        latency = (outcome.result.results or {}).get("latency_ms", {}) if outcome.result else {}
        detail = outcome.error if outcome.error else (outcome.result.remote_dir if outcome.result else "")
        rows.append((outcome.name, "ok" if outcome.ok else "FAILED", str(outcome.attempts),
                     _fmt(latency.get("p50")), _fmt(latency.get("p99")), detail))
    rows = [tuple(one_line(cell) for cell in row) for row in rows]  # a device's error text: one line, inert
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in rows)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def merge_results(results: list[dict]) -> dict:
    """Combine per-device results.json dicts (each may carry a "host" key) into one fleet summary.

    Returns {"schema": 1, "devices": [{"host", "results"}], "count": n,
    "latency_spread": {"p50": {min, median, max}, "p99": {...}}, "top1_spread": {...} | None}.
    """
    devices, p50s, p99s, top1s = [], [], [], []
    for index, entry in enumerate(results):
        entry = dict(entry)
        host = str(entry.pop("host", f"device{index}"))
        devices.append({"host": host, "results": entry})
        latency = entry.get("latency_ms") or {}
        if isinstance(latency.get("p50"), (int, float)):
            p50s.append(float(latency["p50"]))
        if isinstance(latency.get("p99"), (int, float)):
            p99s.append(float(latency["p99"]))
        top1 = (entry.get("accuracy") or {}).get("top1")
        if isinstance(top1, (int, float)):
            top1s.append(float(top1))
    return {"schema": 1, "count": len(devices), "devices": devices,
            "latency_spread": {"p50": _spread(p50s), "p99": _spread(p99s)},
            "top1_spread": _spread(top1s)}


def write_fleet_json(outcomes: list[HostOutcome], out_dir: str | Path) -> Path:
    """fleet.json: merged results of the hosts that ran, plus the names of those that failed."""
    ran = [{**outcome.result.results, "host": outcome.name}
           for outcome in outcomes if outcome.ok and outcome.result and outcome.result.results]
    merged = merge_results(ran)
    merged["failed"] = [{"host": outcome.name, "error": outcome.error} for outcome in outcomes if not outcome.ok]
    return write_text_replacing(Path(out_dir) / "fleet.json", json.dumps(merged, indent=2, sort_keys=True) + "\n")


def raise_if_failed(outcomes: list[HostOutcome]) -> None:
    failed = [outcome.name for outcome in outcomes if not outcome.ok]
    if failed:
        raise FleetFailure(f"{len(failed)} of {len(outcomes)} hosts failed: {', '.join(failed)}")
