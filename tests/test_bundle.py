"""write_bundle: layout, determinism, atomic replacement, verification of tampering."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepipe.delivery.bundle import MANIFEST, SHA256SUMS, read_sha256sums, verify_bundle, write_bundle
from edgepipe.delivery.eval_data import write_eval_npz
from edgepipe.errors import UserError

TARGET = {"name": "arm-cpu", "backend": "tflite", "description": "test target", "precision": "int8",
          "layout": "NHWC", "runtime_requirements": ["ai-edge-litert>=2.3"], "device_readme": "Extra device notes."}
IO = {"inputs": [{"name": "x", "shape": [1, 4, 4, 3], "dtype": "float32", "layout": "NHWC", "onnx_layout": "NCHW",
                  "quantization": None}],
      "outputs": [{"name": "y", "shape": [1, 5], "dtype": "int8", "layout": None, "onnx_layout": None,
                   "quantization": {"scale": 0.1, "zero_point": -3}}]}


def eval_data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"inputs": {"x": rng.standard_normal((6, 3, 4, 4)).astype(np.float32)},
            "labels": rng.integers(0, 5, 6), "reference": {"y": rng.standard_normal((6, 5)).astype(np.float32)}}


def build(out: Path, source_file: Path | None = None, **overrides) -> dict:
    files = {"model.tflite": b"model-bytes", "calibration.json": b"{}\n", "nested/extra.bin": bytes(range(256))}
    if source_file is not None:
        files["reference.onnx"] = source_file
    kwargs = dict(target=TARGET, files=files, template_context={"runner_template": "runner_tflite.py.j2", "model_file": "model.tflite"},
                  io=IO, stages=[{"name": "export", "hash": "abc"}], source={"model": "m.onnx", "sha256": "f" * 64},
                  extra_manifest={"precision_report": {"float_nodes": []}}, eval_data=eval_data())
    kwargs.update(overrides)
    return write_bundle(out, **kwargs)


def tree_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_manifest_and_sha256sums(tmp_path):
    onnx_file = tmp_path / "ref.onnx"
    onnx_file.write_bytes(b"onnx")
    manifest = build(tmp_path / "b", onnx_file)
    bundle = tmp_path / "b"
    for name in ("run.py", "README.md", "requirements.txt", MANIFEST, SHA256SUMS, "eval/eval.npz",
                 "reference.onnx"):
        assert (bundle / name).is_file(), name
    listed = {e["path"]: e for e in manifest["files"]}
    assert [e["path"] for e in manifest["files"]] == sorted(listed)
    assert MANIFEST not in listed and SHA256SUMS not in listed
    for rel, entry in listed.items():
        data = (bundle / rel).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((bundle / MANIFEST).read_text()) == manifest
    assert (bundle / MANIFEST).read_text().endswith("}\n")
    assert manifest["target"]["name"] == "arm-cpu" and "device_readme" not in manifest["target"]
    assert manifest["io"] == IO and manifest["model"] == "model.tflite" and manifest["eval"]["samples"] == 6
    assert manifest["precision_report"] == {"float_nodes": []}
    sums = read_sha256sums(bundle / SHA256SUMS)
    assert set(sums) == set(listed) | {MANIFEST}
    assert "ai-edge-litert>=2.3" in (bundle / "requirements.txt").read_text().splitlines()
    readme = (bundle / "README.md").read_text()
    assert "Extra device notes." in readme and "sha256sum -c SHA256SUMS" in readme
    assert (bundle / "run.py").stat().st_mode & 0o111
    assert verify_bundle(bundle) == []


def test_coreutils_sha256sum_accepts_the_bundle(tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.skip("coreutils sha256sum is not installed")
    build(tmp_path / "b")
    completed = subprocess.run(["sha256sum", "--check", "--strict", SHA256SUMS], cwd=tmp_path / "b",
                               capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_eval_npz_is_deterministic_and_loadable(tmp_path):
    data = eval_data(3)
    write_eval_npz(tmp_path / "a.npz", data)
    write_eval_npz(tmp_path / "b.npz", data)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["input:x", "labels", "reference:y"]
        assert np.array_equal(loaded["input:x"], data["inputs"]["x"])
        assert np.array_equal(loaded["labels"], data["labels"]) and loaded["labels"].dtype == np.int64


def test_two_builds_are_byte_identical(tmp_path):
    build(tmp_path / "one")
    build(tmp_path / "two")
    first = tree_bytes(tmp_path / "one")
    assert first == tree_bytes(tmp_path / "two")
    build(tmp_path / "one")  # rebuilding in place gives the same bytes too
    assert tree_bytes(tmp_path / "one") == first


def test_tampered_missing_extra_and_edited_manifest_are_named(tmp_path):
    bundle = tmp_path / "b"
    build(bundle)
    (bundle / "report").mkdir()
    (bundle / "report" / "results.json").write_text("{}")  # results are not part of the bundle
    assert verify_bundle(bundle) == []
    (bundle / "nested" / "extra.bin").write_bytes(bytes(range(255, -1, -1)))  # same size, new content
    (bundle / "calibration.json").unlink()
    (bundle / "stray.txt").write_text("x")
    problems = verify_bundle(bundle)
    assert any(p.startswith("nested/extra.bin:") and "sha256" in p for p in problems)
    assert "calibration.json: missing" in problems
    assert any(p.startswith("stray.txt:") and "extra" in p for p in problems)

    with pytest.raises(UserError, match="stray.txt"):  # a rebuild never deletes a file it did not write
        build(bundle)
    assert (bundle / "stray.txt").read_text() == "x"
    (bundle / "stray.txt").unlink()
    build(bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["target"]["name"] = "evil"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert any(p.startswith(MANIFEST) for p in verify_bundle(bundle))


def test_device_generated_files_are_not_extra(tmp_path):
    bundle = tmp_path / "b"
    build(bundle, extra_manifest={"device_generated": ["model.engine"]})
    (bundle / "model.engine").write_bytes(b"engine built on the device")
    assert verify_bundle(bundle) == []
    (bundle / "other.engine").write_bytes(b"planted")
    assert any(p.startswith("other.engine:") for p in verify_bundle(bundle))
    with pytest.raises(UserError, match="pattern"):
        build(tmp_path / "c", extra_manifest={"device_generated": ["*.engine"]})


def test_unsafe_manifest_paths_are_not_read(tmp_path):
    bundle = tmp_path / "b"
    build(bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"].append({"path": "../outside", "size": 1, "sha256": "0" * 64})
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert any(p.startswith("../outside: unsafe") for p in verify_bundle(bundle))


def test_missing_or_invalid_manifest_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="manifest.json"):
        verify_bundle(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        verify_bundle(tmp_path / "empty")


class Exploding:
    """A file source whose copy fails half-way through the build."""

    def __fspath__(self):
        raise OSError("disk on fire")


def test_failed_build_keeps_the_old_bundle_and_leaves_no_temp_dirs(tmp_path):
    bundle = tmp_path / "b"
    build(bundle)
    before = tree_bytes(bundle)
    with pytest.raises(OSError, match="disk on fire"):
        build(bundle, files={"model.tflite": b"new", "broken.bin": Exploding()})

    def failing_hook(staging: Path) -> None:
        (staging / "deploy").mkdir()
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        build(bundle, hooks=[failing_hook])
    assert tree_bytes(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_hooks_add_files_before_the_manifest(tmp_path):
    def playbook(staging: Path) -> None:
        (staging / "deploy").mkdir()
        (staging / "deploy" / "playbook.yml").write_text("- hosts: all\n")

    manifest = build(tmp_path / "b", hooks=[playbook])
    assert "deploy/playbook.yml" in {e["path"] for e in manifest["files"]}
    assert verify_bundle(tmp_path / "b") == []


def test_refuses_unsafe_paths_and_non_bundle_folders(tmp_path):
    with pytest.raises(UserError, match="inside the bundle"):
        build(tmp_path / "b", files={"../escape.txt": b"x"})
    with pytest.raises(UserError, match="inside the bundle"):
        build(tmp_path / "b", files={"/etc/passwd": b"x"})
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="refusing to replace"):
        build(home)
    assert (home / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / "escape.txt").exists()
