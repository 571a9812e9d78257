"""pack_bundle is reproducible; safe_extract refuses every member that could escape."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from edgepipe.delivery.archive import bundle_root, pack_bundle, safe_extract
from edgepipe.delivery.bundle import VerificationError, verify_bundle, write_bundle
from edgepipe.errors import UserError


def make_bundle(out: Path) -> Path:
    write_bundle(out, target={"name": "t", "backend": "tflite", "description": "", "precision": "int8",
                              "layout": "NHWC", "runtime_requirements": [], "device_readme": ""},
                 files={"model.tflite": b"m" * 100, "sub/dir/data.bin": b"\x00\x01"},
                 template_context={"runner_template": "runner_tflite.py.j2", "model_file": "model.tflite"},
                 io={"inputs": [], "outputs": []}, stages=[], source={}, extra_manifest={}, eval_data=None)
    return out


def test_pack_is_byte_identical_and_normalized(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "report").mkdir()
    (bundle / "report" / "results.json").write_text("{}")
    first = pack_bundle(bundle, tmp_path / "a.tar.gz").read_bytes()
    (bundle / "model.tflite").touch()  # a new mtime must not change the archive
    second = pack_bundle(bundle, tmp_path / "b.tar.gz").read_bytes()
    assert first == second
    assert first[:2] == b"\x1f\x8b" and first[3] & 0x08 == 0  # no FNAME in the gzip header
    assert int.from_bytes(first[4:8], "little") == 0  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and all(n.split("/")[0] == "bundle" for n in names)
    assert not any("report" in n for n in names)
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.mode in (0o644, 0o755)
    assert next(m for m in members if m.name == "bundle/run.py").mode == 0o755


def test_pack_refuses_a_bundle_that_fails_verification(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "model.tflite").write_bytes(b"tampered")
    with pytest.raises(VerificationError, match="model.tflite"):
        pack_bundle(bundle, tmp_path / "out.tar.gz")
    assert not (tmp_path / "out.tar.gz").exists()


def test_packed_bundle_extracts_and_verifies(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz")
    root = bundle_root(safe_extract(archive, tmp_path / "x"))
    assert root.name == "bundle" and verify_bundle(root) == []
    assert (root / "sub" / "dir" / "data.bin").read_bytes() == b"\x00\x01"


def evil_archive(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("bundle/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind=tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


@pytest.mark.parametrize("member", [
    _member("../../escaped.txt", size=1),
    _member("bundle/../../escaped.txt", size=1),
    _member("/tmp/absolute.txt", size=1),
    _member("bundle/link", tarfile.SYMTYPE, "../../etc/passwd"),
    _member("bundle/abs-link", tarfile.SYMTYPE, "/etc/passwd"),
    _member("bundle/hard", tarfile.LNKTYPE, "../outside"),
    _member("bundle/null", tarfile.CHRTYPE),
    _member("bundle/fifo", tarfile.FIFOTYPE),
], ids=["dotdot", "inner-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out", "chardev", "fifo"])
def test_safe_extract_refuses_escaping_members(tmp_path, member):
    archive = evil_archive(tmp_path / "evil.tar.gz", member, b"x" * member.size)
    with pytest.raises(UserError, match=f"refusing member '{member.name}'"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()  # nothing written before the check
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_safe_extract_refuses_links_even_inside(tmp_path, kind):
    """pack never writes links; a hard link to a missing member or a symlink to a folder outside
    could read or overwrite files, so every link is refused before anything is extracted."""
    archive = evil_archive(tmp_path / "links.tar.gz", _member("bundle/alias.txt", kind, "missing.txt"))
    with pytest.raises(UserError, match="alias.txt.*link"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest" / "bundle").exists()


def test_damaged_archive_is_a_user_error(tmp_path):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="broken.tar.gz"):
        safe_extract(path, tmp_path / "dest")
