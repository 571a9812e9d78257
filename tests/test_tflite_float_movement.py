"""Data movement between float islands runs float (backends/tflite/float_movement.py): two long
LSTMs (float by the long-recurrence rule) joined by a Squeeze and a Reshape, as Resemblyzer's are.
Calibration is the real `calibrate()`; ONNX Runtime on the float model is the reference; the int8
.tflite runs in LiteRT (XNNPACK)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from edgepipe.backends.tflite import build_tflite
from edgepipe.backends.tflite.runtime import run_tflite
from edgepipe.calibrate import calibrate
from tests.helpers import ArrayDataset
from tests.tflite_harness import delegate_partitions, make_model, op_names, run_onnx

RNG = np.random.default_rng(5)
STEPS, SIZE, HIDDEN = 80, 4, 8  # over wide_range.LONG_RECURRENCE_STEPS: both LSTMs run float


def _lstm_weights(prefix: str, size: int) -> dict:
    return {f"{prefix}_w": RNG.normal(scale=0.5, size=(1, 4 * HIDDEN, size)).astype(np.float32),
            f"{prefix}_r": RNG.normal(scale=0.5, size=(1, 4 * HIDDEN, HIDDEN)).astype(np.float32),
            f"{prefix}_b": RNG.normal(scale=0.1, size=(1, 8 * HIDDEN)).astype(np.float32)}


def _stacked_lstms(head: bool = False):
    """x [1, STEPS, SIZE] -> Transpose -> LSTM -> Squeeze -> Reshape -> LSTM -> y_h [1, 1, HIDDEN]
    (with `head`: and y_h -> Reshape -> MatMul -> Relu -> scores, an int8 reader)."""
    init = {**_lstm_weights("a", SIZE), **_lstm_weights("b", HIDDEN),
            "axis": np.array([1], np.int64), "seq_shape": np.array([STEPS, 1, HIDDEN], np.int64)}
    nodes = [helper.make_node("Transpose", ["x"], ["x_seq"], name="seq_major", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x_seq", "a_w", "a_r", "a_b"], ["a_y"], name="lstm_a", hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["a_y", "axis"], ["a_seq"], name="squeeze"),
             helper.make_node("Reshape", ["a_seq", "seq_shape"], ["b_in"], name="reshape"),
             helper.make_node("LSTM", ["b_in", "b_w", "b_r", "b_b"], ["", "y_h"], name="lstm_b", hidden_size=HIDDEN)]
    outputs = ["y_h"]
    if head:
        init.update({"flat": np.array([1, HIDDEN], np.int64),
                     "head_w": RNG.normal(scale=0.5, size=(HIDDEN, 3)).astype(np.float32)})
        nodes += [helper.make_node("Reshape", ["y_h", "flat"], ["h_flat"], name="flatten_h"),
                  helper.make_node("MatMul", ["h_flat", "head_w"], ["logits"], name="head"),
                  helper.make_node("Relu", ["logits"], ["scores"], name="relu")]
        outputs.append("scores")
    return make_model(nodes, {"x": [1, STEPS, SIZE]}, outputs, init)


def _build(model, tmp_path):
    x = RNG.normal(size=(24, STEPS, SIZE)).astype(np.float32)
    calibration = calibrate(model, ArrayDataset(x[:16]), {"method": "minmax"})
    built = build_tflite(model, calibration, tmp_path, {"target": "arm-cpu"})
    return built, x[16:]


def test_data_movement_between_float_lstms_runs_float(tmp_path):
    """The Transpose of the float input and the Squeeze -> Reshape chain between the two float
    LSTMs are float: the int8 file holds no QUANTIZE / DEQUANTIZE at all and computes what ONNX
    Runtime computes up to float rounding (an int8 round trip of the first LSTM's sequence, as
    before the rule, is ~1e-2 off)."""
    model = _stacked_lstms()
    built, evals = _build(model, tmp_path)
    assert set(built["long_recurrences"]) == {"lstm_a", "lstm_b"}
    assert {"seq_major", "squeeze", "reshape"} <= set(built["float_nodes"])
    path = tmp_path / "model.tflite"
    ops = op_names(path, resolver="no_delegates")
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops, sorted(set(ops))
    assert len(delegate_partitions(path)) == 1
    for sample in evals:
        reference = run_onnx(model, {"x": sample[None]})["y_h"]
        got = run_tflite(path, built["io"], {"x": sample[None]})["y_h"]
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-4 * float(np.abs(reference).max()))


def test_data_movement_read_by_an_int8_node_stays_int8(tmp_path):
    """A Reshape of a float LSTM state read by an int8 MatMul is quantized once either way: it
    stays int8 (one QUANTIZE before it, one DEQUANTIZE for the int8 head's output), while the
    chain between the LSTMs is float."""
    model = _stacked_lstms(head=True)
    built, evals = _build(model, tmp_path)
    assert "flatten_h" not in built["float_nodes"] and "head" not in built["float_nodes"]
    assert {"squeeze", "reshape"} <= set(built["float_nodes"])
    ops = op_names(tmp_path / "model.tflite", resolver="no_delegates")
    assert ops.count("QUANTIZE") == 1 and ops.count("DEQUANTIZE") == 1, sorted(set(ops))
    for sample in evals:
        reference = run_onnx(model, {"x": sample[None]})
        got = run_tflite(tmp_path / "model.tflite", built["io"], {"x": sample[None]})
        np.testing.assert_allclose(got["y_h"], reference["y_h"], rtol=0,
                                   atol=1e-4 * float(np.abs(reference["y_h"]).max()))
