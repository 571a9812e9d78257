"""Relative paths in an edgepipe.yaml are read from the config file's folder, so a config used
from another directory (`--config projects/cam/edgepipe.yaml`) builds what it builds in its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepipe.settings import resolve_settings


def write_project(root: Path, yaml_text: str) -> Path:
    project = root / "projects" / "cam"
    (project / "data").mkdir(parents=True)
    for name in ("model.onnx", "net.pt", "data/calib.npz", "data/eval.npz", "ranges.json", "board.yaml"):
        (project / name).write_bytes(b"x")
    config = project / "edgepipe.yaml"
    config.write_text(yaml_text)
    return config


PROJECT_YAML = """\
model: model.onnx
weights: net.pt
target: board.yaml
calib: data/calib.npz
eval: data/eval.npz
out: bundles/cam
cache_dir: .cache
calibration: {ranges: ranges.json, method: minmax}
"""


def test_every_path_in_a_config_elsewhere_is_read_from_its_folder(tmp_path, monkeypatch):
    config = write_project(tmp_path, PROJECT_YAML)
    monkeypatch.chdir(tmp_path)
    settings, _ = resolve_settings({}, "projects/cam/edgepipe.yaml")
    folder = Path("projects/cam")
    assert Path(settings["model"]) == folder / "model.onnx"
    assert Path(settings["weights"]) == folder / "net.pt"
    assert Path(settings["target"]) == folder / "board.yaml"
    assert Path(settings["calib"]) == folder / "data/calib.npz"
    assert Path(settings["eval"]) == folder / "data/eval.npz"
    assert Path(settings["out"]) == folder / "bundles/cam"
    assert Path(settings["cache_dir"]) == folder / ".cache"
    assert Path(settings["calibration"]["ranges"]) == folder / "ranges.json"
    assert settings["calibration"]["method"] == "minmax"
    assert config.exists()


def test_a_config_in_the_current_directory_reads_as_before(tmp_path, monkeypatch):
    write_project(tmp_path, PROJECT_YAML)
    monkeypatch.chdir(tmp_path / "projects" / "cam")
    settings, _ = resolve_settings({}, "edgepipe.yaml")
    assert settings["model"] == "model.onnx" and settings["out"] == "bundles/cam"
    assert settings["calibration"]["ranges"] == "ranges.json"


def test_options_on_the_command_line_stay_relative_to_the_current_directory(tmp_path, monkeypatch):
    write_project(tmp_path, PROJECT_YAML)
    monkeypatch.chdir(tmp_path)
    settings, _ = resolve_settings({"calib": "mine.npz", "out": "here"}, "projects/cam/edgepipe.yaml")
    assert settings["calib"] == "mine.npz" and settings["out"] == "here"


@pytest.mark.parametrize(("line", "key", "expected"), [
    ("model: mypkg.models:build_net", "model", "mypkg.models:build_net"),
    ("target: arm-cpu", "target", "arm-cpu"),
])
def test_names_that_are_not_files_are_left_alone(tmp_path, monkeypatch, line, key, expected):
    write_project(tmp_path, f"{line}\n" + ("target: jetson\n" if key == "model" else ""))
    monkeypatch.chdir(tmp_path)
    settings, _ = resolve_settings({}, "projects/cam/edgepipe.yaml")
    assert settings[key] == expected


def test_an_absolute_path_is_kept(tmp_path, monkeypatch):
    data = tmp_path / "shared" / "calib.npz"
    write_project(tmp_path, f"model: model.onnx\ntarget: jetson\ncalib: {data}\n")
    monkeypatch.chdir(tmp_path)
    settings, _ = resolve_settings({}, "projects/cam/edgepipe.yaml")
    assert settings["calib"] == str(data)


def test_an_input_found_only_from_the_current_directory_is_still_found(tmp_path, monkeypatch):
    """Configs written when paths were read from the current directory keep working."""
    write_project(tmp_path, "model: model.onnx\ntarget: jetson\ncalib: shared/calib.npz\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "calib.npz").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    settings, _ = resolve_settings({}, "projects/cam/edgepipe.yaml")
    assert settings["calib"] == "shared/calib.npz"
    assert Path(settings["model"]) == Path("projects/cam/model.onnx")
