"""Conformance of Softmax / LogSoftmax: last-axis mapping through NHWC, transposes, opset < 13 flattening."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import (check_conformance, delegate_partitions, make_interpreter, make_model,
                                  structured_inputs)

RNG = np.random.default_rng(13)
CONV_W = RNG.normal(size=(6, 3, 1, 1)).astype(np.float32)
FIXED = {"Softmax": ("SOFTMAX", 1.0 / 256, -128), "LogSoftmax": ("LOG_SOFTMAX", 16.0 / 256, 127)}


def _logit_feeds(model, gain=3.0):
    return [{k: gain * v for k, v in feed.items()} for feed in structured_inputs(model)]


def _fixed_output_params(report, op_type):
    """(scale, zero point) of the int8 tensor the softmax kernel writes."""
    opcode, _, _ = FIXED[op_type]
    interpreter = make_interpreter(report.out_dir / "model.tflite", "no_delegates")
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    op = next(op for op in interpreter._get_ops_details() if op["op_name"] == opcode)
    scale, zero_point = details[op["outputs"][0]]["quantization"]
    return scale, zero_point


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis,transposes", [([3, 10], -1, 0), ([2, 5, 7], 1, 1), ([2, 5, 7], 2, 0)])
def test_softmax_plain_tensors(op_type, shape, axis, transposes, tmp_path):
    model = make_model([helper.make_node(op_type, ["x"], ["y"], name="sm", axis=axis)], {"x": shape}, ["y"])
    report = check_conformance(model, tmp_path, _logit_feeds(model))
    histogram = report.result["op_histogram"]
    assert histogram[FIXED[op_type][0]] == 1 and histogram.get("TRANSPOSE", 0) == transposes * 2, histogram
    if op_type == "Softmax":  # int8 SOFTMAX is not delegated: float inside the XNNPACK partition
        assert report.result["float_nodes"] == ["sm"]
        assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
    else:
        assert not report.result["float_nodes"]
        _, scale, zero_point = FIXED[op_type]
        assert _fixed_output_params(report, op_type) == pytest.approx((scale, zero_point))


def test_attention_softmax_keeps_one_partition(tmp_path):
    """MatMul -> Softmax -> MatMul, the attention pattern: nothing on the builtin kernels."""
    nodes = [helper.make_node("MatMul", ["q", "k"], ["a"], name="qk"),
             helper.make_node("Softmax", ["a"], ["p"], name="sm", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    model = make_model(nodes, {"q": [2, 6, 8], "k": [2, 8, 6], "v": [2, 6, 8]}, ["y"])
    report = check_conformance(model, tmp_path, _logit_feeds(model, gain=0.7), int8_steps=3.0)
    assert report.result["op_histogram"]["BATCH_MATMUL"] == 2
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
    assert len(delegate_partitions(report.out_dir / "model.fp32.tflite")) == 1


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis,transposes", [(1, 0), (-1, 1), (2, 1)])
def test_softmax_on_nhwc_tensor(op_type, axis, transposes, tmp_path):
    """A 4-D input is NHWC inside TFLite: a channel softmax needs no transpose (C is last), an H or
    W softmax one in and one back (the output is NHWC at the graph boundary)."""
    model = make_model([helper.make_node(op_type, ["x"], ["y"], name="sm", axis=axis)], {"x": [1, 6, 5, 4]}, ["y"])
    report = check_conformance(model, tmp_path, _logit_feeds(model))
    assert report.result["op_histogram"].get("TRANSPOSE", 0) == 2 * transposes, report.result["op_histogram"]


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_channel_softmax_after_conv(op_type, tmp_path):
    """Moderate logits: one conv output step more or less moves a steep softmax by several steps."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node(op_type, ["c"], ["y"], name="sm", axis=1)]
    model = make_model(nodes, {"x": [1, 3, 5, 6]}, ["y"], {"w": CONV_W})
    report = check_conformance(model, tmp_path, _logit_feeds(model, gain=0.5))
    assert set(report.result["op_histogram"]) == {"QUANTIZE", "CONV_2D", FIXED[op_type][0], "DEQUANTIZE"}


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_opset11_flattens_trailing_axes(op_type, tmp_path):
    model = make_model([helper.make_node(op_type, ["x"], ["y"], name="sm", axis=1)], {"x": [2, 3, 4]}, ["y"],
                       opset=11)
    report = check_conformance(model, tmp_path, _logit_feeds(model))
    assert report.result["op_histogram"]["RESHAPE"] == 2
    assert report.result["io"]["outputs"][0]["shape"] == [2, 3, 4]


def test_softmax_has_beta_one_and_large_logits_saturate_cleanly(tmp_path):
    """beta must be written (an unset beta gives a uniform output); log-softmax clips at -15.94."""
    model = make_model([helper.make_node("Softmax", ["x"], ["s"], name="sm"),
                        helper.make_node("LogSoftmax", ["x"], ["y"], name="lsm")], {"x": [4, 6]}, ["s", "y"])
    feeds = _logit_feeds(model, gain=1.5)
    report = check_conformance(model, tmp_path, feeds)
    from tflite.Model import Model
    from tflite.SoftmaxOptions import SoftmaxOptions

    tfl = Model.GetRootAsModel((report.out_dir / "model.tflite").read_bytes(), 0)
    options = [tfl.Subgraphs(0).Operators(i).BuiltinOptions() for i in range(tfl.Subgraphs(0).OperatorsLength())
               if tfl.Subgraphs(0).Operators(i).BuiltinOptionsType() == 9]  # SoftmaxOptions
    softmax = SoftmaxOptions()
    softmax.Init(options[0].Bytes, options[0].Pos)
    assert softmax.Beta() == 1.0


@pytest.mark.parametrize("gain,lowering", [(0.15, "logistic"), (12.0, "logistic"), (0.8, "float")],
                         ids=["narrow-logits", "wide-logits-exact", "medium-logits"])
def test_two_way_channel_softmax_is_a_logistic_of_the_difference(gain, lowering, tmp_path):
    """softmax over 2 channels = logistic(x0 - x1): int8 1x1 CONV_2D [[1, -1], [-1, 1]] + LOGISTIC
    (delegated, no float island) where the difference grid loses at most half an output step: narrow
    logits (grid of [-(hi - lo), hi - lo]) and logits wide enough that the input's own grid reaches
    the logistic's saturation (exact). In between the float island stays."""
    weights = np.random.default_rng(13).normal(size=(2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Softmax", ["c"], ["y"], name="sm", axis=1)]
    model = make_model(nodes, {"x": [1, 3, 6, 7]}, ["y"], {"w": weights})
    report = check_conformance(model, tmp_path, _logit_feeds(model, gain=gain), int8_steps=1.0)
    histogram = report.result["op_histogram"]
    if lowering == "logistic":
        assert "SOFTMAX" not in histogram and histogram["LOGISTIC"] == 1 and histogram["CONV_2D"] == 2, histogram
        assert not report.result["float_nodes"]
    else:
        assert histogram["SOFTMAX"] == 1 and report.result["float_nodes"] == ["sm"], histogram
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("gain", [0.15, 12.0], ids=["narrow-logits", "wide-logits"])
def test_two_way_softmax_reads_the_grid_its_producer_writes(gain, tmp_path):
    """After a MaxPool the int8 input keeps the conv's grid, not the pooled tensor's calibrated
    one: the difference grid follows the tensor the kernel reads."""
    weights = np.random.default_rng(13).normal(size=(2, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Softmax", ["p"], ["y"], name="sm", axis=1)]
    model = make_model(nodes, {"x": [1, 3, 8, 10]}, ["y"], {"w": weights})
    report = check_conformance(model, tmp_path, _logit_feeds(model, gain=gain), int8_steps=1.0)
    assert report.result["op_histogram"]["LOGISTIC"] == 1 and not report.result["float_nodes"]
