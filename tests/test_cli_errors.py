"""The CLI error contract: one line on stderr, exit code 2, no traceback, nothing written."""

import onnx
import pytest

from tests.helpers import run_cli, tiny_conv_model


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def calib_npz(tmp_path):
    import numpy as np

    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    return path


def test_missing_model_file(tmp_path, calib_npz):
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(tmp_path / "missing.onnx"), "--target", "arm-cpu",
                     "--calib", str(calib_npz), "--out", str(out), cwd=tmp_path)
    assert_clean_error(result, "missing.onnx", "no such file")
    assert not out.exists()


def test_truncated_onnx(tmp_path, calib_npz):
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(tiny_conv_model().SerializeToString()[:57])
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(model_path), "--target", "jetson", "--calib", str(calib_npz),
                     "--out", str(out), cwd=tmp_path)
    assert_clean_error(result, "model.onnx", "not a readable ONNX model")
    assert not out.exists()


def test_external_data_missing(tmp_path, calib_npz):
    model = tiny_conv_model()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    result = run_cli("build", "--model", str(tmp_path / "ext.onnx"), "--target", "jetson", "--calib", str(calib_npz),
                     "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_clean_error(result, "ext.onnx.data", "missing")


def test_bad_yaml(tmp_path):
    (tmp_path / "edgepipe.yaml").write_text("target: [arm-cpu\n")
    assert_clean_error(run_cli("build", cwd=tmp_path), "edgepipe.yaml", "not valid YAML")


def test_unknown_config_key(tmp_path):
    (tmp_path / "edgepipe.yaml").write_text("target: arm-cpu\ncalibraton:\n  method: entropy\n")
    assert_clean_error(run_cli("build", cwd=tmp_path), "unknown key 'calibraton'", "calibration")


def test_unknown_target(tmp_path, calib_npz):
    model_path = tmp_path / "model.onnx"
    onnx.save(tiny_conv_model(), str(model_path))
    result = run_cli("build", "--model", str(model_path), "--target", "pdp11", "--calib", str(calib_npz), cwd=tmp_path)
    assert_clean_error(result, "unknown target 'pdp11'", "arm-cpu")


def test_no_target(tmp_path):
    assert_clean_error(run_cli("build", cwd=tmp_path), "no target given")


def test_debug_shows_traceback(tmp_path, calib_npz):
    result = run_cli("build", "--model", str(tmp_path / "missing.onnx"), "--target", "arm-cpu",
                     "--calib", str(calib_npz), "--debug", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_inspect_reports_io_and_ops(tmp_path):
    model_path = tmp_path / "model.onnx"
    onnx.save(tiny_conv_model(), str(model_path))
    result = run_cli("inspect", str(model_path), "--target", "jetson", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "input  x" in result.stdout and "Conv x1" in result.stdout and "jetson: all ops supported" in result.stdout


def test_inspect_corrupt_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    assert_clean_error(run_cli("inspect", str(bad), cwd=tmp_path), "bad.onnx")


def test_targets_lists_builtins_and_profiles(tmp_path):
    result = run_cli("targets", cwd=tmp_path)
    assert result.returncode == 0
    for name in ("jetson", "desktop-gpu", "arm-cpu", "rpi5"):
        assert name in result.stdout


def test_report_and_regress_output_paths_of_the_wrong_kind(tmp_path):
    """`report -o FILE` and `regress --junit FOLDER` were an OSError line without the option to fix
    ("error: File exists (notes.txt)"); the junit one came after the whole comparison table."""
    import json

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"accuracy": {"top1": 0.9}, "latency_ms": {"p50": 1.0}}))
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("report", str(results), "-o", str(tmp_path / "notes.txt"), cwd=tmp_path)
    assert_clean_error(result, "notes.txt: exists and is not a folder; pass a folder for --out")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    result = run_cli("regress", "--baseline", str(results), "--candidate", str(results), "--junit", str(tmp_path),
                     cwd=tmp_path)
    assert_clean_error(result, "is a folder; pass a file path for --junit")
    assert result.stdout == ""
