"""The stage cache loads only entries this user's edgepipe wrote: a repository that ships
`build/.cache`, a tampered entry or a cache folder that others control cannot choose the build's result."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepipe.cache_trust import KEY_NAME
from edgepipe.pipeline import Pipeline
from tests.helpers import run_cli, tiny_conv_model


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "user-cache"
    monkeypatch.setenv("EDGEPIPE_CACHE", str(root))
    return root


def _project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_conv_model(), str(root / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.savez(root / "calib.npz", x=x)
    return root


def _build(project: Path, out: str) -> tuple[dict, list]:
    result = run_cli("build", "--model", "model.onnx", "--calib", "calib.npz", "--target", "arm-cpu",
                     "--out", out, "--no-host-report", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    cache_warnings = [w for w in report["warnings"] if "stage cache" in w]
    return {stage["name"]: stage["cached"] for stage in report["stages"]}, cache_warnings


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stage(cache: Path, stage: str) -> Path:
    (entry,) = [p for p in cache.iterdir() if p.name.startswith(f"{stage}-")]
    return entry


def test_legit_hits_work_and_the_key_is_private(user_cache, tmp_path):
    project = _project(tmp_path / "project")
    first, warnings = _build(project, "first")
    assert not any(first.values()) and warnings == []
    key = user_cache / KEY_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    again, warnings = _build(project, "again")
    assert again["simplify"] and again["fold"] and again["calibrate"] and warnings == []
    assert _files(project / "again") == _files(project / "first")


def test_shipped_or_tampered_entries_are_recomputed_not_loaded(user_cache, tmp_path, monkeypatch):
    project = _project(tmp_path / "project")
    _build(project, "honest")
    cache = project / "build" / ".cache"
    # the attacker swaps the folded model for one with other weights and rewrites the calibration
    fold = _stage(cache, "fold")
    model = onnx.load(str(fold / "model.onnx"))
    for init in model.graph.initializer:
        init.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(init).shape, 0.5, np.float32),
                                                   init.name))
    onnx.save(model, str(fold / "model.onnx"))
    calibration = _stage(cache, "calibrate") / "calibration.json"
    calibration.write_text(calibration.read_text().replace("e", "E"))
    stages, warnings = _build(project, "after-tamper")
    assert not stages["fold"] and not stages["calibrate"]
    assert any("is not used: its files changed" in w and "fold is recomputed" in w for w in warnings), warnings
    assert _files(project / "after-tamper") == _files(project / "honest")

    # a repository that ships its cache: sealed with another user's key, so every entry misses once
    monkeypatch.setenv("EDGEPIPE_CACHE", str(tmp_path / "other-user"))
    stages, warnings = _build(project, "shipped")
    assert not any(stages.values())
    assert sum("not written by this user's edgepipe" in w for w in warnings) == 3, warnings
    assert _files(project / "shipped") == _files(project / "honest")
    stages, warnings = _build(project, "rewritten")  # the entries were rewritten under this user's key
    assert stages["simplify"] and stages["fold"] and stages["calibrate"] and warnings == []


def _fold_stage(pipeline: Pipeline, calls: list) -> onnx.ModelProto:
    def compute():
        calls.append(1)
        return tiny_conv_model(), {"note": ""}

    return pipeline.model_stage("fold", "ab" * 32, compute)[0]


def test_unsealed_entry_with_the_old_marker_is_not_trusted(user_cache, tmp_path):
    cache = tmp_path / "cache"
    entry = cache / f"fold-{'ab' * 12}"
    entry.mkdir(parents=True)
    onnx.save(tiny_conv_model(seed=7), str(entry / "model.onnx"))  # what a pre-seal entry looked like
    (entry / "report.json").write_text("{}")
    (entry / "COMPLETE").write_text("")
    calls: list = []
    pipeline = Pipeline(cache)
    model = _fold_stage(pipeline, calls)
    assert calls == [1] and model.graph.initializer[0] == tiny_conv_model().graph.initializer[0]
    assert "no seal" in pipeline.warnings[0]
    again = Pipeline(cache)
    _fold_stage(again, calls)
    assert calls == [1] and again.records[0].cached and again.warnings == []


@pytest.mark.parametrize("layout", ["link", "link-above", "shared"])
def test_cache_folder_others_control_is_not_used(user_cache, tmp_path, monkeypatch, layout):
    shared = tmp_path / "shared"
    shared.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    if layout == "link":
        (project / "build").mkdir()
        (project / "build" / ".cache").symlink_to(shared)
        cache_dir = "build/.cache"
    elif layout == "link-above":
        (project / "build").symlink_to(shared)
        cache_dir = "build/.cache"
    else:
        shared.chmod(0o777)
        cache_dir = str(shared)
    calls: list = []
    pipeline = Pipeline(cache_dir)
    _fold_stage(pipeline, calls)
    assert pipeline.cache_dir is None and "building without the stage cache" in pipeline.warnings[0]
    assert ("symbolic link" if layout != "shared" else "writable by other users") in pipeline.warnings[0]
    assert calls == [1] and not [p for p in shared.rglob("*") if p.name.startswith("fold")]


def test_a_key_others_can_read_disables_the_cache(user_cache, tmp_path):
    Pipeline(tmp_path / "cache")  # makes the key
    (user_cache / KEY_NAME).chmod(0o644)
    pipeline = Pipeline(tmp_path / "cache")
    assert pipeline.cache_dir is None and "readable or writable by other users" in pipeline.warnings[0]
    (user_cache / KEY_NAME).unlink()
    os.symlink(tmp_path / "elsewhere", user_cache / KEY_NAME)
    assert Pipeline(tmp_path / "cache").cache_dir is None
    shutil.rmtree(user_cache)
    assert Pipeline(tmp_path / "cache").cache_dir is not None  # a fresh key is made
