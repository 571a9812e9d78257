"""SiLU inputs' ranges (edgepipe/calibrate/saturation.py): only tensors read by nothing but a
SiLU block are narrowed, only on the negative side, and the int8 .tflite (LiteRT) of a Conv ->
SiLU -> Conv chain with a long negative tail tracks ONNX Runtime float closer with the narrowed
range than with the calibrated one."""

import copy

import numpy as np
from onnx import helper

from edgepipe.backends.tflite.build import build_tflite
from edgepipe.backends.tflite.runtime import run_tflite
from edgepipe.calibrate.saturation import SILU_FLOOR, narrow_saturated_tails, silu_inputs
from tests.tflite_harness import make_model, minmax_calibration, run_onnx, structured_inputs

RNG = np.random.default_rng(3)


def silu_chain(extra_reader: bool = False):
    """conv1 (a bias of -30 on half the channels: a negative tail to -60) -> SiLU -> conv2."""
    bias = np.where(np.arange(8) % 2 == 0, -30.0, 0.5)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["s1"], name="sigmoid"),
             helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2")]
    outputs = ["y"]
    if extra_reader:  # a reader that needs the tail: no narrowing
        nodes.append(helper.make_node("Relu", ["c1"], ["r"], name="relu"))
        outputs.append("r")
    inits = {"w1": RNG.normal(0, 2.0, (8, 3, 3, 3)), "b1": bias, "w2": RNG.normal(0, 0.3, (4, 8, 1, 1)),
             "b2": RNG.normal(0, 0.1, 4)}
    return make_model(nodes, {"x": [1, 3, 8, 8]}, outputs, {k: v.astype(np.float32) for k, v in inits.items()})


def test_only_tensors_read_by_silu_blocks_alone_are_narrowed_on_the_negative_side():
    model = silu_chain()
    assert silu_inputs(model) == {"c1"}
    assert silu_inputs(silu_chain(extra_reader=True)) == set()
    calibration = minmax_calibration(model, structured_inputs(model, count=4))
    before = copy.deepcopy(calibration.tensors["c1"])
    assert before.lo < SILU_FLOOR
    assert narrow_saturated_tails(model, calibration) == ["c1"]
    after = calibration.tensors["c1"]
    assert (after.lo, after.hi, after.amax) == (SILU_FLOOR, before.hi, before.amax)
    assert "SiLU input" in after.reason
    assert narrow_saturated_tails(model, calibration) == []  # already there


def test_int8_tflite_with_the_narrowed_silu_range_tracks_onnxruntime_closer(tmp_path):
    model = silu_chain()
    feeds = structured_inputs(model, count=8)
    calibrated = minmax_calibration(model, feeds)
    narrowed = copy.deepcopy(calibrated)
    narrow_saturated_tails(model, narrowed)
    errors = {}
    for tag, calibration in (("calibrated", calibrated), ("narrowed", narrowed)):
        result = build_tflite(model, calibration, tmp_path / tag, {})
        errors[tag] = sum(float(np.mean((run_tflite(tmp_path / tag / "model.tflite", result["io"], feed)["y"]
                                         - run_onnx(model, feed)["y"]) ** 2)) for feed in feeds)
    assert errors["narrowed"] < 0.7 * errors["calibrated"], errors
