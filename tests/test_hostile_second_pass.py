"""Second hostile-input pass: paths a user hands over that are not what the code assumed
(a target profile given by absolute path, calibration file names that are not UTF-8)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.helpers import run_cli, tiny_conv_model


def _model_and_calib(tmp: Path) -> tuple[Path, Path]:
    onnx.save(tiny_conv_model(), str(tmp / "model.onnx"))
    np.savez(tmp / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    return tmp / "model.onnx", tmp / "calib.npz"


def test_profile_by_absolute_path_builds_under_build_not_into_the_profile(tmp_path):
    """`--target /boards/board.yaml` without --out: the default out was build/ joined with the
    absolute path, i.e. the profile file itself (refused as 'not a bundle folder')."""
    model, calib = _model_and_calib(tmp_path)
    boards = tmp_path / "boards"
    boards.mkdir()
    profile = boards / "board.yaml"
    profile.write_text("name: board\nbase: jetson\n")
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("build", "--model", str(model), "--calib", str(calib), "--target", str(profile),
                     "--no-host-report", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "build" / "board" / "manifest.json").is_file()
    assert profile.read_text() == "name: board\nbase: jetson\n"
    assert sorted(p.name for p in boards.iterdir()) == ["board.yaml"]


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes non-UTF-8 names")
def test_image_named_with_non_utf8_bytes_is_calibrated(tmp_path):
    """A file name that is not UTF-8 (a Latin-1 camera folder) crashed the calibration cache key
    (UnicodeEncodeError, internal error exit 3) before any image was read."""
    from PIL import Image

    model, _ = _model_and_calib(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        name = f"caf\xe9{index}.png".encode("latin-1")
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(os.fsdecode(os.path.join(os.fsencode(images), name)))
    result = run_cli("build", "--model", str(model), "--calib", str(images), "--target", "jetson",
                     "--no-host-report", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_report_of_results_without_model_or_samples(tmp_path):
    """check_results lets `model`, `target`, `where`, `samples` be absent; the templates read them
    and a results.json without `model` (hand-written, or an older run.py) was an internal error."""
    import json

    minimal = {"schema": 1, "latency_ms": {"p50": 1.0}, "accuracy": {"top1": 0.5}}
    (tmp_path / "results.json").write_text(json.dumps(minimal))
    (tmp_path / "baseline.json").write_text(json.dumps(minimal))
    result = run_cli("report", str(tmp_path / "results.json"), "--baseline", str(tmp_path / "baseline.json"),
                     "--out", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr
    assert "model <code>?</code>" in (tmp_path / "rep" / "report.html").read_text()
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# edgepipe report: ? (?)")


def test_profile_base_is_found_beside_the_profile(tmp_path):
    """`base: common.yaml` in boards/board.yaml names boards/common.yaml; it was looked up in the
    folder the build ran in ('common.yaml: target profile not found')."""
    model, calib = _model_and_calib(tmp_path)
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "common.yaml").write_text("base: arm-cpu\noptions: {threads: 3}\n")
    (boards / "board.yaml").write_text("name: board\nbase: common.yaml\n")
    result = run_cli("build", "--model", str(model), "--calib", str(calib), "--target", str(boards / "board.yaml"),
                     "--no-host-report", "--json", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    assert '"threads": 3' in manifest


_BROKEN_PLUGINS = '''
import sys
from edgepipe.targets import Target
class CtorRaises(Target):
    name = "ctor-raises"
    def __init__(self, options=None, profile=None):
        raise RuntimeError("boom in ctor")
class Exits(Target):
    name = "exits"
    def __init__(self, options=None, profile=None):
        sys.exit(0)
class NoRequirements(Target):
    name = "no-requirements"
    backend = "tflite"
    runtime_requirements = None
'''


def _edgepipe_with_plugins(site: Path, *args: str, cwd: Path):
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "edgepipe", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_broken_third_party_plugins_are_named_not_fatal(tmp_path):
    """An installed plugin that does not import, raises in its constructor or calls sys.exit():
    `edgepipe targets` failed outright (hiding arm-cpu), `build --target` was an internal error
    (exit 3) or ended with exit 0 and no bundle (sys.exit in the plugin)."""
    site = tmp_path / "site"
    info = site / "badplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgepipe.targets]\nbroken-import = badplug:Missing\n"
                                           "ctor-raises = badplug:CtorRaises\nexits = badplug:Exits\n"
                                           "no-requirements = badplug:NoRequirements\n")
    (site / "badplug.py").write_text(_BROKEN_PLUGINS)
    listed = _edgepipe_with_plugins(site, "targets", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "arm-cpu" in listed.stdout and "no-requirements" in listed.stdout
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: target plugin '") for w in warnings), listed.stderr
    model, calib = _model_and_calib(tmp_path)
    for name, fragment in (("ctor-raises", "failed to start: RuntimeError: boom in ctor"),
                           ("exits", "failed to start: SystemExit"), ("broken-import", "failed to import")):
        built = _edgepipe_with_plugins(site, "build", "--model", str(model), "--calib", str(calib), "--target", name,
                                       "--no-host-report", "--out", str(tmp_path / name), cwd=tmp_path)
        assert built.returncode == 2, built.stderr
        lines = built.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: target plugin '{name}'") and fragment in lines[0]
        assert not (tmp_path / name).exists()


def _reseal(bundle: Path) -> None:
    """What someone editing a bundle does after changing a file: SHA256SUMS recomputed to match."""
    import hashlib

    lines = []
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        _, name = line.split("  ", 1)
        lines.append(f"{hashlib.sha256((bundle / name).read_bytes()).hexdigest()}  {name}")
    (bundle / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def arm_bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("arm_bundle")
    model, calib = _model_and_calib(tmp)
    result = run_cli("build", "--model", str(model), "--calib", str(calib), "--target", "arm-cpu", "--no-host-report",
                     "--out", str(tmp / "bundle"), cwd=tmp)
    assert result.returncode == 0, result.stderr
    return tmp / "bundle"


@pytest.mark.parametrize("edit, fragment", [
    ({"model": "/etc/hostname"}, "'model' is '/etc/hostname', not a file inside the bundle"),
    ({"compare_model": "../../model.tflite"}, "'compare_model' is '../../model.tflite', not a file inside"),
    ({"eval": {"file": "/dev/zero"}}, "'eval.file' is '/dev/zero', not a file inside the bundle"),
    ({"eval": "eval/eval.npz"}, "'eval' is not a mapping"),
    ({"io": {"inputs": "x"}}, "'io.inputs' is not a list of mappings"),
    (None, "is not a TFLite model the runtime can load"),
], ids=["model-absolute", "compare-model-dotdot", "eval-file-device", "eval-not-mapping", "io-not-list", "model-not-flatbuffer"])
def test_run_py_on_a_resealed_hostile_bundle(arm_bundle, tmp_path, edit, fragment):
    """run.py followed manifest file names wherever they pointed (an absolute `model` was loaded, an
    `eval.file` outside the bundle silently skipped evaluation) and met a section of the wrong type or
    a model that is not a flatbuffer with a traceback; now one `error:` line each."""
    import json
    import shutil
    import subprocess

    bundle = tmp_path / "bundle"
    shutil.copytree(arm_bundle, bundle)
    if edit is None:
        (bundle / "model.tflite").write_bytes(b"not a flatbuffer" * 16)
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest.update(edit)
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    _reseal(bundle)
    result = subprocess.run([sys.executable, str(bundle / "run.py"), "--iterations", "2", "--warmup", "0", "--out",
                             str(tmp_path / "results.json")], capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert not (tmp_path / "results.json").exists()
