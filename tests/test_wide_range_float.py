"""The full-integer rule for wide-range tensors (backends/tflite/wide_range.py): a tensor whose
int8 grid rounds most of its non-zero calibration values to 0 stays float with its writer and
readers. Calibration is the real `calibrate()`; ONNX Runtime on the float model is the reference;
the built .tflite runs in LiteRT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite
from edgepipe.backends.tflite.runtime import run_tflite
from edgepipe.calibrate import calibrate
from edgepipe.calibrate.histogram import TensorHistogram
from tests.helpers import ArrayDataset, sqnr_db
from tests.tflite_harness import make_model, run_onnx

RNG = np.random.default_rng(3)
BINS, HIDDEN = 64, 16


def _power_frames(count: int) -> np.ndarray:
    """Mel-power-like frames: per-frame loudness over six decades times a spectral shape over
    one more (a quiet frame's bins are far below the loudest frame's peak)."""
    loudness = 10.0 ** RNG.uniform(-6, 0, size=(count, 1, 1))
    shape = 10.0 ** RNG.uniform(-1, 0, size=(count, 1, BINS))
    return (loudness * shape).astype(np.float32)


def _model():
    """x [1, 1, BINS] -> MatMul -> Add -> Tanh (an LSTM input projection and gate)."""
    weights = RNG.normal(scale=30.0, size=(BINS, HIDDEN)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["proj"], name="proj"),
             helper.make_node("Add", ["proj", "b"], ["pre"], name="bias"),
             helper.make_node("Tanh", ["pre"], ["y"], name="gate")]
    return make_model(nodes, {"x": [1, 1, BINS]}, ["y"], {"w": weights, "b": np.zeros(HIDDEN, np.float32)})


def test_zeroed_share_counts_tiny_values_not_exact_zeros():
    tiny = TensorHistogram("tiny")
    tiny.update(np.concatenate([np.full(900, 1e-4, np.float32), np.full(100, 1.0, np.float32)]))
    assert tiny.zeroed_share(0.0, 1.0) == pytest.approx(0.9)
    relu = TensorHistogram("relu")  # ReLU output: exact zeros are exact on any int8 grid
    relu.update(np.concatenate([np.zeros(900, np.float32), RNG.uniform(0.1, 1.0, 100).astype(np.float32)]))
    assert relu.count == 1000 and relu.zeros == 900
    assert relu.zeroed_share(0.0, 1.0) == 0.0
    normal = TensorHistogram("normal")
    normal.update(RNG.normal(size=10000).astype(np.float32))
    assert normal.zeroed_share(-4.0, 4.0) < 0.02


def test_wide_range_input_stays_float_and_matches_onnx_runtime(tmp_path):
    model = _model()
    calib, evals = _power_frames(64), _power_frames(16)
    calibration = calibrate(model, ArrayDataset(calib), {"method": "minmax"})
    assert calibration.tensors["x"].zeroed > 0.5  # most quiet bins are below half a step
    built = build_tflite(model, calibration, tmp_path / "on", {"target": "arm-cpu"})
    assert set(built["wide_range"]) == {"x", "proj", "pre"}  # linear in x: as wide as their input
    assert {"proj", "bias"} <= set(built["float_nodes"])
    off = build_tflite(model, calibration, tmp_path / "off", {"target": "arm-cpu", "wide_range_float": False})
    assert off["wide_range"] == {} and "proj" not in off["float_nodes"]
    reference = np.concatenate([run_onnx(model, {"x": x[None]})["y"] for x in evals])

    def sqnr(folder):
        got = np.concatenate([run_tflite(folder / "model.tflite", built["io"], {"x": x[None]})["y"] for x in evals])
        return sqnr_db(reference, got)

    kept, quantized = sqnr(tmp_path / "on"), sqnr(tmp_path / "off")
    assert kept > 30.0 and kept > quantized + 10.0, (kept, quantized)


def test_ordinary_tensor_does_not_trigger(tmp_path):
    model = _model()
    calib = RNG.normal(scale=0.05, size=(64, 1, 1, BINS)).astype(np.float32)
    calibration = calibrate(model, ArrayDataset(calib[:, 0]), {"method": "minmax"})
    assert max(t.zeroed for t in calibration.tensors.values()) < 0.1
    built = build_tflite(model, calibration, tmp_path / "tflite", {"target": "arm-cpu"})
    assert built["wide_range"] == {} and "proj" not in built["float_nodes"]


def test_report_lists_the_wide_range_tensors_escaped(tmp_path):
    from edgepipe.delivery.host_report import wide_range_float
    from edgepipe.delivery.report import render_report
    from tests.test_report import EVIL, results

    (tmp_path / "manifest.json").write_text(json.dumps(
        {"precision": {"wide_range_float": {EVIL: 0.93, "mels": 0.71, "bad": "x"},
                       "long_recurrences_float": {"/lstm/LSTM": 160}}}))
    kept = wide_range_float(tmp_path)
    assert kept == {EVIL: 0.93, "mels": 0.71}
    assert wide_range_float(tmp_path, "long_recurrences_float") == {"/lstm/LSTM": 160}
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "results.json").write_text(json.dumps({**results(), "wide_range_float": kept,
                                                        "long_recurrences_float": {"/lstm/LSTM": 160}}))
    html = render_report(report_dir / "results.json").read_text()
    assert "Kept float: what int8 cannot carry" in html and EVIL not in html and "93%" in html
    markdown = (report_dir / "report.md").read_text()
    assert "`mels` | 71% of non-zero values" in markdown and markdown.index("93%") < markdown.index("71%")
    assert "`/lstm/LSTM` | recurrence over 160 steps" in markdown


def _lstm(steps: int):
    """x [1, steps, 4] (batch first) -> Transpose -> LSTM (hidden 8) -> y_h."""
    hidden, size = 8, 4
    init = {"w": RNG.normal(scale=0.5, size=(1, 4 * hidden, size)).astype(np.float32),
            "r": RNG.normal(scale=0.5, size=(1, 4 * hidden, hidden)).astype(np.float32),
            "b": RNG.normal(scale=0.1, size=(1, 8 * hidden)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["x_seq"], name="seq_major", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x_seq", "w", "r", "b"], ["", "y_h"], name="lstm", hidden_size=hidden)]
    return make_model(nodes, {"x": [1, steps, size]}, ["y_h"], init)


@pytest.mark.parametrize(("steps", "kept"), [(80, True), (8, True), (1, False)])
def test_long_recurrence_stays_float(tmp_path, steps, kept):
    model = _lstm(steps)
    x = RNG.normal(size=(24, steps, 4)).astype(np.float32)
    calibration = calibrate(model, ArrayDataset(x[:16]), {"method": "minmax"})
    built = build_tflite(model, calibration, tmp_path, {"target": "arm-cpu"})
    assert built["long_recurrences"] == ({"lstm": steps} if kept else {})
    step_nodes = [name for name in built["float_nodes"] if "/unrolled/d0t" in name]
    assert bool(step_nodes) == kept
    if kept:  # float cells: LiteRT agrees with ONNX Runtime far beyond int8 noise
        reference = np.concatenate([run_onnx(model, {"x": s[None]})["y_h"] for s in x[16:]])
        got = np.concatenate([run_tflite(tmp_path / "model.tflite", built["io"], {"x": s[None]})["y_h"] for s in x[16:]])
        assert sqnr_db(reference, got) > 35.0



def test_clamp_after_a_float_reader_runs_float(tmp_path):
    """A Relu6 after the float reader of a wide-range tensor would, on int8, read the reader's grid
    and write its own (a requantizing RELU6 that XNNPACK leaves on the builtin kernels); float, it
    fuses into the reader and the model stays one XNNPACK partition."""
    from tests.tflite_harness import delegate_partitions, op_names

    weights = RNG.normal(scale=30.0, size=(BINS, HIDDEN)).astype(np.float32)
    head = RNG.normal(scale=0.3, size=(HIDDEN, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["proj"], name="proj"),
             helper.make_node("Add", ["proj", "b"], ["pre"], name="bias"),  # offset: no longer wide range
             helper.make_node("Clip", ["pre", "lo", "hi"], ["clamped"], name="relu6"),
             helper.make_node("MatMul", ["clamped", "head"], ["y"], name="head")]
    model = make_model(nodes, {"x": [1, 1, BINS]}, ["y"], {"w": weights, "b": np.full(HIDDEN, 3.0, np.float32),
                                                           "lo": np.float32(0.0), "hi": np.float32(6.0),
                                                           "head": head})
    calib, evals = _power_frames(64), _power_frames(16)
    calibration = calibrate(model, ArrayDataset(calib), {"method": "minmax"})
    built = build_tflite(model, calibration, tmp_path, {"target": "arm-cpu"})
    assert "pre" not in built["wide_range"] and "proj" in built["wide_range"]
    path = tmp_path / "model.tflite"
    assert "RELU6" not in op_names(path) and len(delegate_partitions(path)) == 1
    reference = np.concatenate([run_onnx(model, {"x": x[None]})["y"] for x in evals])
    got = np.concatenate([run_tflite(path, built["io"], {"x": x[None]})["y"] for x in evals])
    assert sqnr_db(reference, got) > 25.0


@pytest.mark.parametrize("wide_range_float", [True, False])
def test_compare_emulates_the_placement_the_bundle_ships(tmp_path, wide_range_float):
    """`edgepipe compare` reads the backend settings the bundle was built with: its per-tensor
    "alone" variants quantize exactly the nodes the bundle's .tflite runs int8 (with the rule off,
    the wide-range projection is int8 in the bundle and must be int8 in the emulation too)."""
    import onnx

    from tests.helpers import run_cli

    onnx.save(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_power_frames(64))
    np.savez(tmp_path / "eval.npz", x=_power_frames(16))
    (tmp_path / "edgepipe.yaml").write_text(f"backend:\n  wide_range_float: {str(wide_range_float).lower()}\n")
    out = tmp_path / "bundle"
    built = run_cli("build", "--model", "m.onnx", "--target", "arm-cpu", "--calib", "calib.npz", "--eval", "eval.npz",
                    "--no-host-report", "--out", str(out), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend_settings"]["wide_range_float"] is wide_range_float
    shipped_float = set(manifest["precision"]["float_nodes"])
    assert ("proj" in shipped_float) is wide_range_float  # the rule decided the bundle
    compared = run_cli("compare", str(out), "--max-samples", "8", "--alone-samples", "8", "--json", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    emulated_int8 = {node for row in json.loads(compared.stdout)["tensors"] for node in row["alone_nodes"]}
    assert not emulated_int8 & shipped_float
    assert ("proj" in emulated_int8) is not wide_range_float
