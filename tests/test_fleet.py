"""Fleet deploys: inventory parsing, retry isolation, merged results, and a 3-host loopback fleet."""

from __future__ import annotations

import json
import re

import pytest

from edgepipe.delivery.deploy import DeployResult
from edgepipe.errors import UserError
from edgepipe.delivery.fleet import InventoryHost, deploy_with_retry, load_inventory, merge_results
from tests.helpers import run_cli
from tests.ssh_server import closed_port, make_bundle

INI = """\
# comment
[arm]
pi-01 ansible_host=10.0.0.1 ansible_user=pi
pi-02 ansible_host=10.0.0.2 ansible_port=2222 ansible_user=pi

[jetson]
nano ansible_host=10.0.0.9 ansible_ssh_private_key_file="/keys/a key"

[arm:vars]
edgepipe_remote_dir=/opt/edgepipe/m
ansible_port=2200
"""

YAML = """\
all:
  children:
    arm:
      vars: {edgepipe_remote_dir: /opt/edgepipe/m, ansible_port: 2200}
      hosts:
        pi-01: {ansible_host: 10.0.0.1, ansible_user: pi}
        pi-02: {ansible_host: 10.0.0.2, ansible_port: 2222, ansible_user: pi}
    jetson:
      hosts:
        nano: {ansible_host: 10.0.0.9, ansible_ssh_private_key_file: /keys/a key}
"""


def test_ini_and_yaml_inventories_agree(tmp_path):
    (tmp_path / "hosts.ini").write_text(INI)
    (tmp_path / "hosts.yml").write_text(YAML)
    from_ini = {host.name: host.variables for host in load_inventory(tmp_path / "hosts.ini")}
    from_yaml = {host.name: host.variables for host in load_inventory(tmp_path / "hosts.yml")}
    assert from_ini == from_yaml
    assert from_ini["pi-02"]["ansible_port"] == "2222"  # host variable beats group variable
    assert from_ini["pi-01"]["ansible_port"] == "2200"
    assert from_ini["nano"]["ansible_ssh_private_key_file"] == "/keys/a key"
    pi01 = InventoryHost("pi-01", from_ini["pi-01"]).target(port=22)
    assert (pi01.host, pi01.user, pi01.port, pi01.name) == ("10.0.0.1", "pi", 2200, "pi-01")


@pytest.mark.parametrize("text, message", [
    ("[all:children]\narm\n", "groups of groups"),
    ("[arm]\npi ansible_port\n", "expected key=value"),
    ("[arm]\n-oProxyCommand=x ansible_host=1.2.3.4\n", "refusing host alias"),
    ("# nothing\n", "lists no hosts"),
])
def test_bad_inventories_are_user_errors(tmp_path, text, message):
    path = tmp_path / "hosts.ini"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_inventory(path)


def test_a_failure_is_retried_once_and_a_second_failure_is_recorded():
    calls = []

    def flaky(host):
        calls.append(host.name)
        if len(calls) == 1:
            raise UserError("transient")
        return DeployResult(host=host.name, remote_dir="/x", transfer="rsync")

    recovered = deploy_with_retry(InventoryHost("a"), flaky, retries=1)
    assert recovered.ok and recovered.attempts == 2

    def broken(host):
        calls.append(host.name)
        raise UserError(f"{host.name} is down")

    failed = deploy_with_retry(InventoryHost("b"), broken, retries=1)
    assert not failed.ok and failed.attempts == 2 and failed.error == "b is down"
    assert calls == ["a", "a", "b", "b"]


def test_merge_results_spreads_p50_and_p99_across_devices():
    devices = [{"host": name, "latency_ms": {"p50": p50, "p99": p99}, "accuracy": {"top1": top1}}
               for name, p50, p99, top1 in [("a", 3.0, 9.0, 0.9), ("b", 1.0, 4.0, 0.8), ("c", 2.0, 5.0, 0.7)]]
    merged = merge_results(devices + [{"host": "no-latency"}])
    assert merged["count"] == 4
    assert [device["host"] for device in merged["devices"]] == ["a", "b", "c", "no-latency"]
    assert "host" not in merged["devices"][0]["results"]
    assert merged["latency_spread"]["p50"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert merged["latency_spread"]["p99"] == {"min": 4.0, "median": 5.0, "max": 9.0}
    assert merged["top1_spread"]["median"] == pytest.approx(0.8)
    assert merge_results([])["latency_spread"] == {"p50": None, "p99": None}


@pytest.mark.ssh
def test_fleet_with_one_broken_host_exits_1_and_the_others_report(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    inventory = tmp_path / "hosts.ini"
    common = (f"ansible_host=127.0.0.1 ansible_user={ssh_server.user} "
              f"ansible_ssh_private_key_file={ssh_server.client_key}")
    inventory.write_text(
        "[boards]\n"
        f"dev-a {common} ansible_port={ssh_server.port} edgepipe_remote_dir={tmp_path}/dev-a/b\n"
        f"dev-b {common} ansible_port={ssh_server.port} edgepipe_remote_dir={tmp_path}/dev-b/b\n"
        f"dev-broken {common} ansible_port={closed_port()} edgepipe_remote_dir={tmp_path}/dev-c/b\n")
    out = tmp_path / "out"
    completed = run_cli("deploy", str(bundle), "--inventory", str(inventory), "--parallel", "3", "--run",
                        "--iterations", "3", "--known-hosts", str(ssh_server.known_hosts), "--timeout", "5",
                        "--out", str(out))
    assert completed.returncode == 1, completed.stderr
    assert "1 of 3 hosts failed: dev-broken" in completed.stderr
    rows = {line.split()[0]: line.split() for line in completed.stdout.splitlines() if line.startswith("dev-")}
    assert rows["dev-a"][1:3] == ["ok", "1"] and rows["dev-b"][1:3] == ["ok", "1"]
    assert rows["dev-broken"][1:3] == ["FAILED", "2"]
    assert re.search(r"cannot reach 127\.0\.0\.1:\d+ within 5 s", completed.stdout)

    fleet = json.loads((out / "fleet.json").read_text())
    assert sorted(device["host"] for device in fleet["devices"]) == ["dev-a", "dev-b"]
    assert [failure["host"] for failure in fleet["failed"]] == ["dev-broken"]
    p50s = [device["results"]["latency_ms"]["p50"] for device in fleet["devices"]]
    assert fleet["latency_spread"]["p50"]["min"] == min(p50s)
    for name in ("dev-a", "dev-b"):
        results = json.loads((out / name / "results.json").read_text())
        assert results["cwd"] == f"{tmp_path}/{name}/b" and results["where"] == "device"
    assert not (out / "dev-broken").exists()
    assert not (tmp_path / "dev-c").exists()
