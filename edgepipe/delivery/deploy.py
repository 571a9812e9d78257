"""Deploy one bundle to one device over SSH, verify it there, optionally run it and fetch results.

Why this shape: a device is reached only through the system `ssh`/`rsync`/`scp` binaries, so the
user's ssh agent, keys and known_hosts apply unchanged. Every local command is an argument list
(no local shell); every remote command is a POSIX-shell string built only from `shlex.quote`d
components, because ssh always hands the remote side a string for its shell. Host-key checking
is strict unless the user opts into trust-on-first-use. The upload lands in a sibling temp dir,
is verified with `sha256sum -c` on the device and only then renamed into place, so a corrupted
upload never replaces a working bundle.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgepipe.errors import UserError
from edgepipe.safeio import JSON_MAX_BYTES, parse_json, write_text_replacing
from edgepipe.templating import render

SAFE_HOST = re.compile(r"^[A-Za-z0-9_.:%\[\]][A-Za-z0-9_.:%\[\]-]*$")
SAFE_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")
# Remote paths legacy `scp` may hand to the remote shell: only these characters are allowed there.
SCP_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./~+-]+$")
UPLOAD_PREFIX = ".edgepipe-upload."
NOT_A_BUNDLE_EXIT = 93


def check_host_name(value: str, what: str = "host") -> str:
    """Refuse names that ssh could read as options or that carry whitespace/control characters."""
    pattern = SAFE_USER if what == "user" else SAFE_HOST
    if not value or value.startswith("-") or not pattern.match(value):
        raise UserError(f"refusing {what} name {value!r}: it must not start with '-' or contain "
                        f"whitespace, '@', '/', quotes or control characters")
    if value in (".", ".."):  # a host names its results folder (report/<host>/): never a parent folder
        raise UserError(f"refusing {what} name {value!r}: give the device's address or name")
    return value


def _ssh_config_path(path: str | Path) -> str:
    """A local path as ssh -o/-i values need it: absolute, `%` escaped, spaces kept in quotes."""
    text = str(Path(path).expanduser().resolve())
    if '"' in text:
        raise UserError(f"{text}: paths for ssh options must not contain '\"'; move or rename the file")
    text = text.replace("%", "%%")
    return f'"{text}"' if any(ch.isspace() for ch in text) else text


@dataclass(frozen=True)
class SshTarget:
    """How to reach one device: address, login and the trust settings for its host key."""

    host: str
    user: str | None = None
    port: int = 22
    identity: str | None = None
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    timeout: float = 20.0
    label: str | None = None

    def __post_init__(self):
        check_host_name(self.host)
        if self.user is not None:
            check_host_name(self.user, "user")
        if self.label is not None and (self.label in (".", "..") or not SAFE_HOST.match(self.label)):
            raise UserError(f"refusing host alias {self.label!r}: use letters, digits, '.', '_' or '-'")
        if not 0 < int(self.port) < 65536:
            raise UserError(f"port {self.port} for host {self.host} is not in 1..65535")

    @classmethod
    def parse(cls, destination: str, **options) -> "SshTarget":
        """Split `user@host` (the CLI's --host) into its parts."""
        user, _, host = destination.rpartition("@")
        return cls(host=host, user=user or None, **options)

    @property
    def name(self) -> str:
        return self.label or self.host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def destination(self, for_copy: bool = False) -> str:
        host = f"[{self.host}]" if for_copy and ":" in self.host and not self.host.startswith("[") else self.host
        return f"{self.user}@{host}" if self.user else host

    def ssh_options(self) -> list[str]:
        """Options shared by ssh and scp (both read -o and -i the same way)."""
        options = ["-o", "BatchMode=yes",
                   "-o", f"ConnectTimeout={max(1, int(round(self.timeout)))}",
                   "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
                   "-o", "LogLevel=ERROR",
                   "-o", "ServerAliveInterval=15",
                   "-o", f"Port={int(self.port)}"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={_ssh_config_path(self.known_hosts)}"]
        if self.identity:
            options += ["-o", "IdentitiesOnly=yes", "-i", _ssh_config_path(self.identity).strip('"')]
        return options

    def ssh_command(self, remote_script: str) -> list[str]:
        return ["ssh", *self.ssh_options(), "--", self.destination(), remote_script]


@dataclass
class DeployResult:
    """What happened on one device; `results` is the fetched results.json when --run was used."""

    host: str
    remote_dir: str
    transfer: str
    results_path: Path | None = None
    results: dict | None = None
    notes: list[str] = field(default_factory=list)


class RemoteShell:
    """Runs POSIX shell snippets on the device and turns ssh's failures into one-line UserErrors."""

    def __init__(self, target: SshTarget):
        self.target = target

    def run(self, script: str, check: bool = True, timeout: float | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess:
        try:
            completed = _run_bounded(self.target.ssh_command(script), stdin, timeout, JSON_MAX_BYTES)
        except FileNotFoundError:
            raise UserError("the 'ssh' client is not installed here; install openssh-client") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.target.address} did not answer within {timeout:.0f} s; "
                            f"check the device is up and not overloaded") from None
        except OutputTooLarge:
            raise UserError(f"{self.target.name}: the device answered more than {JSON_MAX_BYTES} bytes to one "
                            "command; nothing edgepipe asks for is that large, check the device") from None
        if completed.returncode == 255:
            raise ssh_failure(self.target, completed.stderr.decode(errors="replace"))
        if check and completed.returncode != 0:
            raise UserError(f"{self.target.name}: remote command failed ({completed.returncode}): "
                            f"{last_line(completed.stderr)}")
        return completed


class OutputTooLarge(Exception):
    """A command wrote more than the caller reads."""


def _run_bounded(argv: list[str], stdin: bytes | None, timeout: float | None, limit: int) -> subprocess.CompletedProcess:
    """subprocess.run with each output read up to `limit` bytes: a device that streams without end
    (`cat` of a huge results.json) is stopped instead of filling this machine's memory."""
    import threading

    process = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs: dict[str, bytes] = {}

    def drain(name, stream):
        data = stream.read(limit + 1)
        outputs[name] = data
        if len(data) > limit:
            process.kill()
        stream.close()

    readers = [threading.Thread(target=drain, args=(name, stream), daemon=True)
               for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    if stdin is not None:
        try:
            process.stdin.write(stdin)
            process.stdin.close()
        except BrokenPipeError:
            pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    for reader in readers:
        reader.join()
    if any(len(data) > limit for data in outputs.values()):
        raise OutputTooLarge()
    return subprocess.CompletedProcess(argv, process.returncode, outputs["stdout"], outputs["stderr"])


def last_line(output: bytes | str) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def ssh_failure(target: SshTarget, stderr: str) -> UserError:
    """Classify an ssh exit status 255 into the one-line error the user can act on."""
    lowered = stderr.lower()
    where = target.address
    if ("host key verification failed" in lowered or "host key is known" in lowered
            or "remote host identification has changed" in lowered):
        return UserError(f"host key for {where} is not trusted; add it to known_hosts"
                         f"{' (' + target.known_hosts + ')' if target.known_hosts else ''} "
                         f"or pass --accept-new-host-key")
    if "permission denied" in lowered or "too many authentication failures" in lowered:
        return UserError(f"authentication to {target.destination()} on port {target.port} failed; "
                         f"pass --identity with a key listed in the device's authorized_keys")
    unreachable = ("connection refused", "timed out", "no route to host", "could not resolve",
                   "network is unreachable", "name or service not known", "connection closed",
                   "connection reset")
    if any(marker in lowered for marker in unreachable):
        return UserError(f"cannot reach {where} within {target.timeout:g} s; "
                         f"check the address, port and network")
    return UserError(f"ssh to {where} failed: {last_line(stderr)}")


@dataclass
class DeviceFacts:
    """What the device offers, learned in one round trip (which also proves we can log in)."""

    home: str
    tools: frozenset[str]


PROBE_SCRIPT = ('printf "home=%s\\n" "$HOME"; '
                'for tool in rsync python3 sha256sum; do '
                'command -v "$tool" >/dev/null 2>&1 && printf "has=%s\\n" "$tool"; done; true')


def probe(shell: RemoteShell) -> DeviceFacts:
    completed = shell.run(PROBE_SCRIPT, timeout=shell.target.timeout + 15)
    home, tools = "", set()
    for line in completed.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "home":
            home = value
        elif key == "has":
            tools.add(value)
    if not home.startswith("/") or _has_control_characters(home):
        raise UserError(f"{shell.target.name}: could not determine the remote home directory (the device "
                        f"answered {home!r}); pass an absolute --remote-dir")
    return DeviceFacts(home=home, tools=frozenset(tools))


def _has_control_characters(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def resolve_remote_dir(remote_dir: str | None, bundle: Path, home: str) -> str:
    """Absolute remote path; `~/x` and relative paths are taken relative to the remote home."""
    text = remote_dir if remote_dir else f"~/edgepipe/{bundle.name}"
    if _has_control_characters(text):
        raise UserError(f"--remote-dir {text!r} contains control characters; choose a plain path")
    if text == "~" or text.startswith("~/"):
        text = home.rstrip("/") + text[1:]
    elif not text.startswith("/"):
        text = f"{home.rstrip('/')}/{text}"
    normalized = "/" + "/".join(part for part in text.split("/") if part not in ("", "."))
    if ".." in normalized.split("/") or normalized.rstrip("/") in ("", home.rstrip("/")):
        raise UserError(f"--remote-dir {remote_dir!r} must name a dedicated folder below '/' and "
                        f"not the home directory itself, without '..'")
    return normalized


def bundle_entries(bundle: Path) -> list[Path]:
    """Top-level entries to upload: everything except the host-side report/ folder."""
    return sorted(entry for entry in bundle.iterdir() if entry.name != "report")


def check_local_bundle(bundle: Path) -> Path:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise UserError(f"{bundle}: bundle directory not found; pass the folder `edgepipe build` wrote")
    for required in ("manifest.json", "SHA256SUMS", "run.py"):
        if not (bundle / required).is_file():
            raise UserError(f"{bundle}: missing {required}; rebuild the bundle with `edgepipe build`")
    from edgepipe.delivery.bundle import verify_bundle

    problems = verify_bundle(bundle)  # nothing unlisted (a planted numpy.py) is ever uploaded
    if problems:
        raise UserError(f"{bundle}: refusing to deploy a bundle that fails `edgepipe verify`: {problems[0]}")
    return bundle.resolve()


def expected_upload(bundle: Path) -> set[str]:
    """Every file an upload may hold: the manifest's files, manifest.json and SHA256SUMS."""
    from edgepipe.delivery.bundle import MANIFEST, SHA256SUMS, device_generated_names, load_manifest

    manifest = load_manifest(bundle)
    return ({entry["path"] for entry in manifest["files"]} | device_generated_names(manifest)
            | {MANIFEST, SHA256SUMS})


def upload(target: SshTarget, bundle: Path, staging: str, method: str) -> None:
    """Copy the bundle's contents into the (already created) remote staging dir."""
    if method == "rsync":
        remote_shell = " ".join(shlex.quote(part) for part in ["ssh", *target.ssh_options()])
        command = ["rsync", "-a", "--protect-args", "--exclude=/report/", "-e", remote_shell,
                   "--", f"{bundle}/", f"{target.destination(for_copy=True)}:{staging}/"]
    else:
        if not SCP_SAFE_PATH.match(staging):
            raise UserError(f"{target.name}: remote path {staging!r} has characters scp cannot pass "
                            f"safely; install rsync on both sides or choose a plain --remote-dir")
        command = ["scp", "-r", "-p", *target.ssh_options(), "--",
                   *[str(entry) for entry in bundle_entries(bundle)],
                   f"{target.destination(for_copy=True)}:{staging}/"]
    completed = subprocess.run(command, capture_output=True, check=False)
    if completed.returncode != 0:
        stderr = completed.stderr.decode(errors="replace")
        if completed.returncode == 255 or "connection" in stderr.lower():
            raise ssh_failure(target, stderr)
        raise UserError(f"{target.name}: {method} upload failed: {last_line(stderr)}")


def choose_transfer(requested: str, facts: DeviceFacts) -> str:
    local_rsync = shutil.which("rsync") is not None
    if requested == "rsync" and not (local_rsync and "rsync" in facts.tools):
        raise UserError("rsync is missing here or on the device; install it or use --transfer scp")
    if requested == "auto":
        return "rsync" if local_rsync and "rsync" in facts.tools else "scp"
    return requested


def discard(shell: RemoteShell, staging: str) -> None:
    """Best-effort removal of an upload dir after a failure; the original error is what matters."""
    try:
        shell.run(f"rm -rf -- {shlex.quote(staging)}", check=False, timeout=shell.target.timeout + 15)
    except UserError:
        pass


def verify_remote(shell: RemoteShell, staging: str, expected: set[str] | None = None) -> None:
    """`sha256sum -c` on the device, then the upload's file list against `expected` (what the
    manifest lists): a file that is missing, differs, or was not listed is named."""
    completed = shell.run(f"cd -- {shlex.quote(staging)} && LC_ALL=C sha256sum -c SHA256SUMS", check=False)
    if completed.returncode == 0:
        if expected is not None:
            _refuse_remote_extras(shell, staging, expected)
        return
    bad = [line.rsplit(":", 1)[0] for line in completed.stdout.decode(errors="replace").splitlines()
           if ": FAILED" in line]
    discard(shell, staging)
    detail = ", ".join(bad) if bad else last_line(completed.stderr)
    raise UserError(f"{shell.target.name}: sha256 verification failed on the device for {detail}; "
                    f"the bundle is corrupt or was modified, rebuild it")


def _refuse_remote_extras(shell: RemoteShell, staging: str, expected: set[str]) -> None:
    listed = shell.run(f"cd -- {shlex.quote(staging)} && find . ! -type d -print0", check=False)
    if listed.returncode != 0:
        discard(shell, staging)
        raise UserError(f"{shell.target.name}: cannot list the uploaded bundle: {last_line(listed.stderr)}")
    found = {name.decode(errors="replace")[2:] for name in listed.stdout.split(b"\0") if name}
    extra = sorted(found - expected)
    if extra:
        discard(shell, staging)
        raise UserError(f"{shell.target.name}: the upload holds '{extra[0]}', which the manifest does not list; "
                        f"the bundle was modified, rebuild it")


def install(shell: RemoteShell, staging: str, remote_dir: str) -> None:
    """Rename the verified upload into place, replacing only a previous edgepipe bundle."""
    dest, parent = shlex.quote(remote_dir), shlex.quote(remote_dir.rsplit("/", 1)[0] or "/")
    script = (f"mkdir -p -- {parent} && "
              f"if [ -e {dest} ]; then "
              f"if [ -f {dest}/manifest.json ]; then rm -rf -- {dest}; "
              f"else exit {NOT_A_BUNDLE_EXIT}; fi; fi && mv -- {shlex.quote(staging)} {dest}")
    completed = shell.run(script, check=False)
    if completed.returncode == 0:
        return
    discard(shell, staging)
    if completed.returncode == NOT_A_BUNDLE_EXIT:
        raise UserError(f"{shell.target.name}: {remote_dir} exists and is not an edgepipe bundle; "
                        f"choose another --remote-dir")
    raise UserError(f"{shell.target.name}: could not move the bundle to {remote_dir}: "
                    f"{last_line(completed.stderr)}")


def run_remote(shell: RemoteShell, remote_dir: str, iterations: int | None, warmup: int | None) -> dict:
    """Run the device runner and read back report/results.json."""
    argv = ["python3", "run.py", "--where", "device"]  # run.py isolates itself (no -I: user-site numpy stays usable)
    if iterations is not None:
        argv += ["--iterations", str(int(iterations))]
    if warmup is not None:
        argv += ["--warmup", str(int(warmup))]
    quoted_dir = shlex.quote(remote_dir)
    completed = shell.run(f"cd -- {quoted_dir} && {shlex.join(argv)}", check=False)
    if completed.returncode != 0:
        raise UserError(f"{shell.target.name}: run.py failed on the device: {last_line(completed.stderr)}")
    fetched = shell.run(f"cat -- {quoted_dir}/report/results.json", check=False)
    if fetched.returncode != 0:
        raise UserError(f"{shell.target.name}: run.py finished but {remote_dir}/report/results.json "
                        f"is missing; check the runner's output")
    where = f"{shell.target.name}: {remote_dir}/report/results.json"
    if len(fetched.stdout) > JSON_MAX_BYTES:
        raise UserError(f"{where} is larger than {JSON_MAX_BYTES} bytes; not a results.json run.py wrote")
    try:
        results = parse_json(fetched.stdout, where)
    except ValueError:
        raise UserError(f"{where} is not valid JSON") from None
    if not isinstance(results, dict) or "latency_ms" not in results:
        raise UserError(f"{shell.target.name}: results.json from the device lacks latency_ms; "
                        f"the bundle's run.py is too old, rebuild it")
    from edgepipe.delivery.regress import check_results

    return check_results(results, Path(where), "device")  # a device is as untrusted as any file


def render_report_if_available(results_path: Path, bundle: Path) -> str:
    """Render via edgepipe.delivery.report when present. The results are already saved, so a rendering
    problem becomes a note, never a failed deploy."""
    try:
        from edgepipe.delivery.report import render_report
    except ImportError:
        return "report not rendered: edgepipe.delivery.report is not available"
    try:
        html_path = render_report(results_path, results_path.parent, bundle_dir=bundle)
    except Exception as error:  # noqa: BLE001 - optional step; the deploy itself succeeded
        return f"report not rendered: {type(error).__name__}: {' '.join(str(error).split())}"
    return f"report: {html_path}"


def deploy_bundle(bundle: str | Path, target: SshTarget, remote_dir: str | None = None, run: bool = False,
                  iterations: int | None = None, warmup: int | None = None, out_dir: str | Path | None = None,
                  transfer: str = "auto") -> DeployResult:
    """Upload, verify, install and (with run=True) execute the bundle on one device."""
    if transfer not in ("auto", "rsync", "scp"):
        raise UserError(f"transfer method {transfer!r} is not one of auto, rsync, scp")
    bundle = check_local_bundle(Path(bundle))
    shell = RemoteShell(target)
    facts = probe(shell)
    if "sha256sum" not in facts.tools:
        raise UserError(f"{target.name}: sha256sum is not installed on the device; install coreutils")
    if run and "python3" not in facts.tools:
        raise UserError(f"{target.name}: python3 is not installed on the device; install it "
                        f"(plus requirements.txt) or deploy without --run")
    final_dir = resolve_remote_dir(remote_dir, bundle, facts.home)
    method = choose_transfer(transfer, facts)
    parent = final_dir.rsplit("/", 1)[0] or "/"
    staging_template = shlex.quote(f"{parent.rstrip('/')}/{UPLOAD_PREFIX}XXXXXX")
    made = shell.run(f"mkdir -p -- {shlex.quote(parent)} && mktemp -d {staging_template}")
    staging = made.stdout.decode(errors="replace").strip()
    if not staging.startswith(f"{parent.rstrip('/')}/{UPLOAD_PREFIX}") or _has_control_characters(staging):
        raise UserError(f"{target.name}: mktemp on the device returned {staging!r}; need GNU/busybox mktemp")
    try:
        upload(target, bundle, staging, method)
        verify_remote(shell, staging, expected_upload(bundle))
        install(shell, staging, final_dir)
    except BaseException:
        discard(shell, staging)
        raise
    result = DeployResult(host=target.name, remote_dir=final_dir, transfer=method)
    if run:
        result.results = run_remote(shell, final_dir, iterations, warmup)
        host_dir = Path(out_dir if out_dir is not None else bundle / "report") / target.name
        result.results_path = write_text_replacing(host_dir / "results.json",
                                                   json.dumps(result.results, indent=2, sort_keys=True) + "\n",
                                                   bundle if host_dir.is_relative_to(bundle) else None)
        result.notes.append(render_report_if_available(result.results_path, bundle))
    return result


def render_playbook(staging_dir: str | Path) -> list[Path]:
    """Bundle hook: write deploy/playbook.yml and deploy/inventory.example.ini into the bundle."""
    deploy_dir = Path(staging_dir) / "deploy"
    deploy_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for template, name in (("ansible/playbook.yml.j2", "playbook.yml"),
                           ("ansible/inventory.example.ini.j2", "inventory.example.ini")):
        path = deploy_dir / name
        path.write_text(render(template))
        written.append(path)
    return written
