"""`edgepipe deploy --host` against a real sshd on 127.0.0.1: round trip, trust, failures, quoting."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from edgepipe.delivery.deploy import SshTarget, deploy_bundle
from edgepipe.errors import UserError
from tests.helpers import run_cli
from tests.ssh_server import closed_port, keygen, make_bundle, write_checksums

pytestmark = pytest.mark.ssh


def target_for(server, **overrides) -> SshTarget:
    options = dict(host=server.host, user=server.user, port=server.port, identity=str(server.client_key),
                   known_hosts=str(server.known_hosts), timeout=5)
    options.update(overrides)
    return SshTarget(**options)


def ssh_args(server, known_hosts=None) -> list[str]:
    return ["--host", f"{server.user}@{server.host}", "--port", str(server.port),
            "--identity", str(server.client_key), "--known-hosts", str(known_hosts or server.known_hosts),
            "--timeout", "5"]


def leftovers(parent: Path) -> list[str]:
    return [path.name for path in parent.glob(".edgepipe-upload.*")] if parent.exists() else []


def test_round_trip_run_fetches_valid_results(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    remote = tmp_path / "device" / "bundle"
    out = tmp_path / "out"
    for _ in range(2):  # the second deploy replaces the first one in place
        completed = run_cli("deploy", str(bundle), *ssh_args(ssh_server), "--remote-dir", str(remote),
                            "--run", "--iterations", "7", "--warmup", "1", "--out", str(out))
        assert completed.returncode == 0, completed.stderr
    results = json.loads((out / ssh_server.host / "results.json").read_text())
    assert results["where"] == "device"
    assert results["cwd"] == str(remote)
    assert results["latency_ms"]["iterations"] == 7
    assert 0 < results["latency_ms"]["p50"] <= results["latency_ms"]["p99"]
    assert (remote / "payload.bin").read_bytes() == (bundle / "payload.bin").read_bytes()
    assert (remote / "eval" / "notes.txt").is_file()
    assert leftovers(remote.parent) == []


def test_tampered_file_is_named_and_nothing_installed(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "eval" / "notes.txt").write_text("changed after SHA256SUMS was written\n")
    remote = tmp_path / "device" / "bundle"
    with pytest.raises(UserError, match=r"fails `edgepipe verify`: eval/notes\.txt: .*modified"):
        deploy_bundle(bundle, target_for(ssh_server), remote_dir=str(remote))
    assert not remote.exists()
    assert leftovers(remote.parent) == []


def test_device_side_check_names_modified_and_unlisted_files(ssh_server, tmp_path):
    """What arrives on the device is checked again there: sha256sum -c, then no unlisted file."""
    import shutil

    from edgepipe.delivery.deploy import RemoteShell, expected_upload, verify_remote

    bundle = make_bundle(tmp_path / "bundle")
    shell = RemoteShell(target_for(ssh_server))
    staged = tmp_path / "device" / ".edgepipe-upload.extra"
    shutil.copytree(bundle, staged)
    (staged / "numpy.py").write_text("open('/tmp/canary', 'w')\n")
    with pytest.raises(UserError, match="'numpy.py', which the manifest does not list"):
        verify_remote(shell, str(staged), expected_upload(bundle))
    assert not staged.exists()  # the bad upload is discarded
    staged = tmp_path / "device" / ".edgepipe-upload.modified"
    shutil.copytree(bundle, staged)
    (staged / "eval" / "notes.txt").write_text("changed in transit\n")
    with pytest.raises(UserError, match=r"sha256 verification failed .* eval/notes\.txt"):
        verify_remote(shell, str(staged), expected_upload(bundle))


def test_unknown_host_key_is_refused_under_strict_checking(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    completed = run_cli("deploy", str(bundle), *ssh_args(ssh_server, empty_known_hosts),
                        "--remote-dir", str(tmp_path / "device"))
    assert completed.returncode == 2
    assert "is not trusted" in completed.stderr and "--accept-new-host-key" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert empty_known_hosts.read_text() == ""
    assert not (tmp_path / "device").exists()


def test_accept_new_records_the_key_but_a_changed_key_is_still_refused(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    result = deploy_bundle(bundle, target_for(ssh_server, known_hosts=str(known_hosts), accept_new_host_key=True),
                           remote_dir=str(tmp_path / "device" / "b"))
    assert Path(result.remote_dir, "manifest.json").is_file()
    host_key = (ssh_server.root / "host_ed25519.pub").read_text().split()[1]
    assert host_key in known_hosts.read_text()

    keygen(tmp_path / "other_key")
    other = (tmp_path / "other_key.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{ssh_server.port} {other[0]} {other[1]}\n")
    with pytest.raises(UserError, match="is not trusted"):
        deploy_bundle(bundle, target_for(ssh_server, known_hosts=str(known_hosts), accept_new_host_key=True),
                      remote_dir=str(tmp_path / "device" / "c"))
    assert not (tmp_path / "device" / "c").exists()


def test_unreachable_port_fails_fast_with_one_line(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    port = closed_port()
    started = time.monotonic()
    completed = run_cli("deploy", str(bundle), "--host", "127.0.0.1", "--port", str(port), "--timeout", "5",
                        "--known-hosts", str(tmp_path / "none"))
    assert time.monotonic() - started < 5
    assert completed.returncode == 2
    assert completed.stderr.strip() == (f"error: cannot reach 127.0.0.1:{port} within 5 s; "
                                        f"check the address, port and network")


def test_wrong_key_is_an_authentication_error(ssh_server, tmp_path):
    keygen(tmp_path / "stranger")
    bundle = make_bundle(tmp_path / "bundle")
    with pytest.raises(UserError, match="authentication to .* failed"):
        deploy_bundle(bundle, target_for(ssh_server, identity=str(tmp_path / "stranger")),
                      remote_dir=str(tmp_path / "device"))


@pytest.mark.parametrize("destination", ["-oProxyCommand=touch {marker}", "-x@127.0.0.1",
                                         "127.0.0.1 -oProxyCommand=touch{marker}", "user@-host", "..", "user@."])
def test_option_like_or_spaced_host_names_are_refused(tmp_path, destination):
    marker = tmp_path / "proxy-ran"
    bundle = make_bundle(tmp_path / "bundle")
    completed = run_cli("deploy", str(bundle), "--host", destination.format(marker=marker))
    assert completed.returncode == 2
    assert "refusing" in completed.stderr
    assert not marker.exists()


def test_hostile_local_and_remote_paths_are_quoted_never_executed(ssh_server, tmp_path):
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    hostile = f"we'ird \"dir\"; $(touch {pwned}) `touch {pwned}` & x"
    bundle = make_bundle(tmp_path / hostile / "bundle")
    remote = tmp_path / "device" / hostile
    out = tmp_path / "out"
    try:
        result = deploy_bundle(bundle, target_for(ssh_server), remote_dir=str(remote), run=True,
                               iterations=2, out_dir=out)
        assert result.results["cwd"] == str(remote)
        assert (remote / "payload.bin").is_file()
        assert json.loads((out / ssh_server.host / "results.json").read_text())["where"] == "device"
        assert not pwned.exists()
    finally:
        pwned.unlink(missing_ok=True)


def test_scp_fallback_copies_plain_paths_and_refuses_hostile_ones(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    result = deploy_bundle(bundle, target_for(ssh_server), remote_dir=str(tmp_path / "device" / "plain"),
                           transfer="scp")
    assert result.transfer == "scp"
    assert (tmp_path / "device" / "plain" / "eval" / "notes.txt").is_file()

    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    remote = tmp_path / "device" / f"x; touch {pwned}"
    with pytest.raises(UserError, match="scp cannot pass safely"):
        deploy_bundle(bundle, target_for(ssh_server), remote_dir=str(remote), transfer="scp")
    assert not pwned.exists()
    assert leftovers(remote.parent) == []


def test_runner_failure_reports_its_last_stderr_line(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "run.py").write_text("import sys\nprint('loading', file=sys.stderr)\nsys.exit('boom: model.tflite missing')\n")
    write_checksums(bundle)
    with pytest.raises(UserError, match="run.py failed on the device: boom: model.tflite missing"):
        deploy_bundle(bundle, target_for(ssh_server), remote_dir=str(tmp_path / "device"), run=True)


def test_existing_non_bundle_folder_is_not_replaced(ssh_server, tmp_path):
    precious = tmp_path / "device" / "precious"
    precious.mkdir(parents=True)
    (precious / "data.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an edgepipe bundle"):
        deploy_bundle(make_bundle(tmp_path / "bundle"), target_for(ssh_server), remote_dir=str(precious))
    assert (precious / "data.txt").read_text() == "keep me"
    assert leftovers(precious.parent) == []


def test_home_and_parent_paths_are_refused_as_remote_dir(ssh_server, tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    for remote_dir in ("~", "/", f"{tmp_path}/../x"):
        with pytest.raises(UserError, match="--remote-dir"):
            deploy_bundle(bundle, target_for(ssh_server), remote_dir=remote_dir)


def test_missing_local_bundle_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="bundle directory not found"):
        deploy_bundle(tmp_path / "nope", SshTarget(host="127.0.0.1"))


@pytest.mark.parametrize("answer", [b"home=/home/pi\x00/x\n", b"home=/home/pi\x1b]0;title\x07\n", b"home=relative\n"])
def test_a_device_answering_a_hostile_home_is_one_line(answer):
    """The device's own answer is untrusted too: a NUL would stop subprocess with a traceback,
    escape sequences would reach the terminal."""
    import subprocess

    from edgepipe.delivery.deploy import RemoteShell, SshTarget, probe

    class AnsweringShell(RemoteShell):
        def run(self, script, check=True, timeout=None, stdin=None):
            return subprocess.CompletedProcess(["ssh"], 0, answer + b"has=sha256sum\n", b"")

    with pytest.raises(UserError, match=r"^pi4: could not determine the remote home directory \(the device answered"):
        probe(AnsweringShell(SshTarget("pi4")))


def test_a_device_that_answers_without_end_is_stopped_at_the_json_bound():
    """`cat` of a results.json a compromised device streams forever: read up to JSON_MAX_BYTES, then stopped."""
    from edgepipe.delivery.deploy import RemoteShell, SshTarget

    class StreamingDevice(SshTarget):
        def ssh_command(self, remote_script):
            return ["sh", "-c", "yes"]

    with pytest.raises(UserError, match=r"^pi4: the device answered more than \d+ bytes to one command"):
        RemoteShell(StreamingDevice("pi4")).run("cat -- report/results.json", timeout=120)
