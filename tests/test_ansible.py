"""The bundle's Ansible playbook: builtin modules only, and a real ansible-playbook run on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci import missing_tool
import yaml

from edgepipe.delivery.bundle import verify_bundle
from edgepipe.delivery.deploy import render_playbook
from edgepipe.delivery.fleet import load_inventory
from tests.ssh_server import make_bundle, write_checksums

ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook")


def bundle_with_playbook(root: Path) -> Path:
    """Like write_bundle(hooks=[render_playbook]): the hook runs before the checksums are taken."""
    bundle = make_bundle(root)
    render_playbook(bundle)
    write_checksums(bundle)
    return bundle


def test_playbook_uses_only_builtin_modules_and_the_example_inventory_parses(tmp_path):
    bundle = bundle_with_playbook(tmp_path / "bundle")
    plays = yaml.safe_load((bundle / "deploy" / "playbook.yml").read_text())
    tasks = [task for entry in plays[0]["tasks"] for task in entry.get("block", [entry]) + entry.get("always", [])]
    modules = [next(key for key in task if key.startswith("ansible.")) for task in tasks]
    assert all(module.startswith("ansible.builtin.") for module in modules)
    assert {"ansible.builtin.unarchive", "ansible.builtin.command", "ansible.builtin.pip",
            "ansible.builtin.fetch"} <= set(modules)
    pip_task = next(task for task in tasks if "ansible.builtin.pip" in task)
    assert "requirements" in pip_task["tags"] and "edgepipe_install_requirements" in pip_task["when"]
    hosts = load_inventory(bundle / "deploy" / "inventory.example.ini")
    assert hosts and all("ansible_host" in host.variables for host in hosts)
    sums = (bundle / "SHA256SUMS").read_text()
    assert "deploy/playbook.yml" in sums


def write_inventory(path: Path, server, remote_dir: Path) -> None:
    path.write_text(
        "[devices]\n"
        f"loopback-1 ansible_host=127.0.0.1 ansible_port={server.port} ansible_user={server.user} "
        f"ansible_ssh_private_key_file={server.client_key} ansible_python_interpreter={sys.executable} "
        f"edgepipe_remote_dir={remote_dir}\n"
        "[devices:vars]\n"
        f"ansible_ssh_common_args='-o UserKnownHostsFile={server.known_hosts} -o StrictHostKeyChecking=yes'\n")


def run_playbook(bundle: Path, inventory: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_HOME": str(workdir / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
           "ANSIBLE_REMOTE_TMP": str(workdir / "ansible-remote"), "ANSIBLE_RETRY_FILES_ENABLED": "0",
           # fewer round trips, and the shared ssh connection goes away soon after the test
           "ANSIBLE_PIPELINING": "1", "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=5s"}
    env.pop("ANSIBLE_CONFIG", None)
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), str(bundle / "deploy" / "playbook.yml"), *extra],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.ssh
def test_playbook_round_trip_fetches_results(ssh_server, tmp_path):
    if ANSIBLE_PLAYBOOK is None:
        missing_tool("ansible-playbook not installed (pip install ansible-core)")
    bundle = bundle_with_playbook(tmp_path / "bundle")
    remote = tmp_path / "device" / "bundle"
    inventory = tmp_path / "hosts.ini"
    write_inventory(inventory, ssh_server, remote)

    completed = run_playbook(bundle, inventory, tmp_path, "-e", "edgepipe_iterations=4")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    results = json.loads((bundle / "report" / "loopback-1" / "results.json").read_text())
    assert results["where"] == "device" and results["cwd"] == str(remote)
    assert results["latency_ms"]["iterations"] == 4
    assert (remote / "payload.bin").read_bytes() == (bundle / "payload.bin").read_bytes()
    assert "Install the runtime requirements" in completed.stdout and "skipping: [loopback-1]" in completed.stdout
    assert verify_bundle(bundle) == []  # fetched results live in report/, outside the manifest

    (bundle / "payload.bin").write_bytes(b"tampered\n")
    tampered = run_playbook(bundle, inventory, tmp_path)
    assert tampered.returncode != 0
    assert "payload.bin: FAILED" in tampered.stdout
    assert not (remote / "report" / "loopback-1").exists()  # fetched results are not shipped back
