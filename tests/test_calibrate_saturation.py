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


def softmax_head(classes: int = 12000, extra_reader: bool = False, internal: bool = False):
    """x [1, 16, 8] -> MatMul -> + bias (class 0 far ahead: a CTC blank) -> Reshape -> Softmax over
    `classes` writing the output: one winner per row, far fewer than a percentile or MSE threshold
    keeps. `internal`: the Softmax's rows are mixed again (attention-like) before the output."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "b"], ["logits"], name="bias"),
             helper.make_node("Reshape", ["logits", "shape"], ["rows"], name="reshape"),
             helper.make_node("Softmax", ["rows"], ["p" if internal else "y"], name="softmax", axis=-1)]
    if internal:
        nodes.append(helper.make_node("MatMul", ["p", "mix"], ["y"], name="mix"))
    outputs = ["y"]
    if extra_reader:  # another reader of the Reshape's input: it keeps its own range
        nodes.append(helper.make_node("Relu", ["logits"], ["r"], name="relu"))
        outputs.append("r")
    bias = RNG.normal(0, 1.0, classes)
    bias[0] = 14.0
    inits = {"w": RNG.normal(0, 0.6, (8, classes)).astype(np.float32), "b": bias.astype(np.float32),
             "shape": np.array([16, classes], np.int64),
             **({"mix": RNG.normal(0, 1.0, (classes, 4)).astype(np.float32)} if internal else {})}
    return make_model(nodes, {"x": [1, 16, 8]}, outputs, inits)


def test_output_softmax_inputs_and_what_only_moves_values_into_them_keep_their_observed_maximum():
    from edgepipe.calibrate import calibrate
    from edgepipe.calibrate.saturation import keep_softmax_tops, softmax_inputs
    from tests.helpers import ArrayDataset

    assert softmax_inputs(softmax_head(64)) == {"rows", "logits"}
    assert softmax_inputs(softmax_head(64, extra_reader=True)) == {"rows"}
    assert softmax_inputs(softmax_head(64, internal=True)) == set()  # attention-like: its method's range
    model = softmax_head()
    result = calibrate(model, ArrayDataset(np.random.default_rng(1).normal(size=(8, 16, 8))), {"method": "percentile"})
    before = {name: copy.deepcopy(result.tensors[name]) for name in ("rows", "logits", "mm")}
    assert before["rows"].hi < before["rows"].max  # the percentile cut the winners
    assert sorted(keep_softmax_tops(model, result)) == ["logits", "rows"]
    for name in ("rows", "logits"):
        after = result.tensors[name]
        assert (after.lo, after.hi, after.amax) == (before[name].lo, before[name].max, before[name].amax)
        assert "Softmax input" in after.reason
    assert result.tensors["mm"].hi == before["mm"].hi  # not a value-moving op: untouched
    assert keep_softmax_tops(model, result) == []


def test_int8_tflite_softmax_with_the_kept_top_tracks_onnxruntime_closer(tmp_path):
    from edgepipe.calibrate import calibrate
    from edgepipe.calibrate.saturation import keep_softmax_tops
    from tests.helpers import ArrayDataset

    model = softmax_head()
    x = np.random.default_rng(2).normal(size=(12, 16, 8)).astype(np.float32)
    clipped = calibrate(model, ArrayDataset(x[:8]), {"method": "percentile"})
    kept = copy.deepcopy(clipped)
    keep_softmax_tops(model, kept)
    feeds = [{"x": sample[None]} for sample in x[8:]]  # held out
    errors = {}
    for tag, calibration in (("clipped", clipped), ("kept", kept)):
        result = build_tflite(model, calibration, tmp_path / tag, {})
        errors[tag] = sum(float(np.mean(np.abs(run_tflite(tmp_path / tag / "model.tflite", result["io"], feed)["y"].max(-1)
                                               - run_onnx(model, feed)["y"].max(-1)))) for feed in feeds)
    assert errors["kept"] < 0.5 * errors["clipped"], errors
