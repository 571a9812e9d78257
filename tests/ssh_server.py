"""A real OpenSSH server on 127.0.0.1 for deploy tests, plus a tiny hand-made bundle.

Why real sshd: quoting, host-key trust and rsync/scp behaviour are exactly what a mock would get
wrong. Each server gets its own host key, authorized key, sshd_config and a free unprivileged
port in a temp dir; it runs in the foreground (`-D -e`) as the current user and is torn down with
the fixture. Only loopback is used.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ci import missing_tool

SSHD = Path("/usr/sbin/sshd")
SSHD_MISSING_REASON = "OpenSSH server not installed (/usr/sbin/sshd absent); apt-get install openssh-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    return free_port()


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgepipe-test", "-f", str(path)],
                   check=True, capture_output=True)


@dataclass
class SshServer:
    """A running sshd: where it listens and the client-side files that trust/reach it."""

    port: int
    user: str
    client_key: Path
    known_hosts: Path
    root: Path
    process: subprocess.Popen

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def known_hosts_line(self) -> str:
        return self.known_hosts.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile {pid_file}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
Subsystem sftp internal-sftp
LogLevel ERROR
MaxStartups 50:30:100
"""


def wait_for_banner(port: int, process: subprocess.Popen, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited early: {process.stderr.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not accept connections on 127.0.0.1:{port} within {deadline_s} s")


def start_sshd(root: Path) -> SshServer:
    """Start sshd under `root` (a temp dir) and return once it greets with an SSH banner."""
    if not SSHD.exists():
        missing_tool(SSHD_MISSING_REASON)
    root.mkdir(parents=True, exist_ok=True)
    host_key, client_key = root / "host_ed25519", root / "client_ed25519"
    keygen(host_key)
    keygen(client_key)
    authorized_keys = root / "authorized_keys"
    authorized_keys.write_text(Path(f"{client_key}.pub").read_text())
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    user = getpass.getuser()
    last_error = None
    for _attempt in range(3):
        port = free_port()
        config = root / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, host_key=host_key, authorized_keys=authorized_keys,
                                             pid_file=root / "sshd.pid", user=user))
        process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_banner(port, process)
        except RuntimeError as error:
            last_error = error
            process.kill()
            process.wait()
            continue
        public_host_key = Path(f"{host_key}.pub").read_text().split()
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {public_host_key[0]} {public_host_key[1]}\n")
        return SshServer(port=port, user=user, client_key=client_key, known_hosts=known_hosts,
                         root=root, process=process)
    raise RuntimeError(f"could not start sshd: {last_error}")


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """One loopback sshd shared by the deploy/fleet/ansible tests."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


RUNNER = '''\
"""Test runner: measures a tiny loop and writes report/results.json like a real bundle."""
import argparse, json, os, platform, statistics, sys, time

parser = argparse.ArgumentParser()
parser.add_argument("--where", default="host")
parser.add_argument("--iterations", type=int, default=20)
parser.add_argument("--warmup", type=int, default=2)
args = parser.parse_args()
if os.environ.get("EDGEPIPE_TEST_FAIL"):
    sys.exit("runner: forced failure")
times = []
for _ in range(args.warmup + args.iterations):
    start = time.perf_counter()
    sum(range(2000))
    times.append((time.perf_counter() - start) * 1000.0)
times = sorted(times[args.warmup:])
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
results = {"schema": 1, "target": "test", "where": args.where, "model": "payload.bin",
           "device": {"cpu": platform.processor() or "unknown", "gpu": None, "runtime": "python",
                      "threads": 1, "machine": platform.machine()},
           "accuracy": {"top1": 1.0},
           "latency_ms": {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99),
                          "mean": statistics.fmean(times), "std": statistics.pstdev(times),
                          "iterations": args.iterations, "warmup": args.warmup},
           "size_bytes": os.path.getsize("payload.bin"), "peak_rss_mb": 1.0, "samples": 1,
           "cwd": os.getcwd()}
os.makedirs("report", exist_ok=True)
with open(os.path.join("report", "results.json"), "w") as handle:
    json.dump(results, handle)
'''


def write_checksums(bundle: Path) -> None:
    """The bundle contract as edgepipe.delivery.bundle writes it: manifest.json lists every file except
    itself, SHA256SUMS and report/; SHA256SUMS covers those files plus manifest.json."""
    files = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        relative = path.relative_to(bundle).as_posix()
        if relative in ("manifest.json", "SHA256SUMS") or relative.startswith("report/"):
            continue
        files.append({"path": relative, "size": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    manifest = json.dumps({"schema": 1, "target": {"name": "test"}, "files": files}, indent=2) + "\n"
    (bundle / "manifest.json").write_text(manifest)
    sums = [f"{entry['sha256']}  {entry['path']}" for entry in files]
    sums.append(f"{hashlib.sha256(manifest.encode()).hexdigest()}  manifest.json")
    (bundle / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def make_bundle(bundle: Path, payload: bytes = b"edgepipe test payload\n") -> Path:
    """A small but contract-shaped bundle: run.py, a payload, a nested file, manifest, SHA256SUMS."""
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "run.py").write_text(RUNNER)
    (bundle / "payload.bin").write_bytes(payload)
    (bundle / "eval").mkdir(exist_ok=True)
    (bundle / "eval" / "notes.txt").write_text("nested file\n")
    write_checksums(bundle)
    return bundle
