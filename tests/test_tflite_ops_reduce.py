"""Conformance of ReduceMean/Max/Min/Sum: axes as attribute or input, keepdims, NHWC axis mapping."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite.runtime import run_tflite
from tests.helpers import sqnr_db
from tests.tflite_harness import check_conformance, delegate_partitions, make_model, run_onnx, structured_inputs

RNG = np.random.default_rng(19)
CONV_W = RNG.normal(size=(5, 3, 1, 1)).astype(np.float32) * 0.5
OPS = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"]
OPCODES = {"ReduceMean": "MEAN", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN", "ReduceSum": "SUM"}


def _reduce_node(op_type, source, axes, keepdims, opset):
    """Axes as an attribute before opset 18 (13 for ReduceSum), else as an input."""
    as_input = opset >= (13 if op_type == "ReduceSum" else 18)
    inputs = [source, "axes"] if as_input and axes is not None else [source]
    attrs = {"keepdims": keepdims}
    if axes is not None and not as_input:
        attrs["axes"] = axes
    inits = {"axes": np.asarray(axes, np.int64)} if as_input and axes is not None else {}
    return helper.make_node(op_type, inputs, ["y"], name="reduce", **attrs), inits


@pytest.mark.parametrize("op_type", OPS)
@pytest.mark.parametrize("axes,keepdims,opset", [([1], 1, 17), ([2, 3], 0, 18), ([-1], 0, 13), (None, 1, 18)])
def test_reduce_on_nhwc_feature_map(op_type, axes, keepdims, opset, tmp_path):
    node, inits = _reduce_node(op_type, "c", axes, keepdims, opset)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), node]
    model = make_model(nodes, {"x": [1, 3, 4, 6]}, ["y"], {"w": CONV_W, **inits}, opset=opset)
    report = check_conformance(model, tmp_path, int8_steps=2.0)
    histogram = report.result["op_histogram"]
    assert histogram["MEAN" if op_type == "ReduceSum" else OPCODES[op_type]] == 1 and not report.result["float_nodes"]
    # NHWC axes are mapped, not transposed in; only a rank-4 result with a non-NHWC layout is moved out
    assert histogram.get("TRANSPOSE", 0) <= 1


@pytest.mark.parametrize("op_type", OPS)
@pytest.mark.parametrize("shape,axes,keepdims", [([3, 8], [1], 0), ([2, 5, 6], [0, 2], 1), ([2, 5, 6], [1], 0)])
def test_reduce_plain_tensors(op_type, shape, axes, keepdims, tmp_path):
    node, inits = _reduce_node(op_type, "x", axes, keepdims, 18)
    report = check_conformance(make_model([node], {"x": shape}, ["y"], inits, opset=18), tmp_path)
    expected = [1 if a in axes else d for a, d in enumerate(shape)] if keepdims else \
        [d for a, d in enumerate(shape) if a not in axes]
    assert report.result["io"]["outputs"][0]["shape"] == expected


def test_noop_with_empty_axes(tmp_path):
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="noop", noop_with_empty_axes=1)
    model = make_model([node], {"x": [2, 3]}, ["y"], {"axes": np.zeros(0, np.int64)}, opset=18)
    report = check_conformance(model, tmp_path)
    assert "MEAN" not in report.result["op_histogram"]


def test_int8_sum_is_mean_times_count(tmp_path):
    node, inits = _reduce_node("ReduceSum", "x", [1, 2], 1, 18)
    report = check_conformance(make_model([node], {"x": [2, 5, 6]}, ["y"], inits, opset=18), tmp_path)
    assert report.result["op_histogram"]["MEAN"] == 1 and report.result["op_histogram"]["MUL"] == 1
    assert "SUM" not in report.result["op_histogram"] and not report.result["float_nodes"]


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum_square_is_a_float_square_and_sum(keepdims, tmp_path):
    """tf2onnx's layer-norm variance: ReduceSumSquare of a centred tensor (MUL, SUM in float)."""
    nodes = [helper.make_node("ReduceSumSquare", ["x"], ["y"], name="sumsq", axes=[0, 2], keepdims=keepdims)]
    model = make_model(nodes, {"x": [1, 4, 6]}, ["y"], opset=13)
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["SUM"] == 1 and report.result["float_nodes"] == ["sumsq"]


@pytest.mark.parametrize("op_type", ["ReduceL2", "ReduceL1"])
@pytest.mark.parametrize("axes,keepdims,opset", [([1], 1, 13), ([2, 3], 0, 18), ([1], 0, 18)])
def test_norms_are_float_islands(op_type, axes, keepdims, opset, tmp_path):
    node, inits = _reduce_node(op_type, "c", axes, keepdims, opset)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), node]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 4, 6]}, ["y"], {"w": CONV_W, **inits}, opset=opset),
                               tmp_path)
    assert report.result["float_nodes"] == ["reduce"] and report.result["op_histogram"]["SUM"] == 1


def test_normalize_embeddings_in_one_partition(tmp_path):
    """F.normalize as a feature head exports it: x / max(ReduceL2(x), eps), fully delegated."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("ReduceL2", ["c"], ["norm"], name="norm", axes=[1], keepdims=1),
             helper.make_node("Clip", ["norm", "eps"], ["safe"], name="clamp"),
             helper.make_node("Div", ["c", "safe"], ["y"], name="normalize")]
    model = make_model(nodes, {"x": [1, 3, 4, 6]}, ["y"], {"w": CONV_W, "eps": np.array(1e-12, np.float32)},
                       opset=13)
    # norm, clamp and division run as one float island between the conv's int8 output and the
    # int8 result; the Q/DQ simulation rounds at each of them instead, so the two differ by a few
    # output steps: the accuracy itself is checked against ONNX Runtime's FP32 below
    report = check_conformance(model, tmp_path, int8_steps=3.5)
    assert report.result["float_nodes"] == ["norm", "clamp", "normalize"]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
    for feed in structured_inputs(model)[:3]:
        got = run_tflite(report.out_dir / "model.tflite", report.result["io"], feed)["y"]
        assert sqnr_db(run_onnx(model, feed)["y"], got) > 30


@pytest.mark.parametrize("op_type,keepdims", [("ReduceSum", 0), ("ReduceMax", 1)])
def test_five_d_input_with_unit_dims_reduces_its_squeezed_view(op_type, keepdims, tmp_path):
    """trueocr's attention pooling: features [1, heads, dim, H, W] times weights [1, heads, 1, H, W],
    summed over H (5-D; refused as 'more than 4 dimensions' before): the 4-D view without the batch
    dim is reduced between two RESHAPEs."""
    node, inits = _reduce_node(op_type, "weighted", [3], keepdims, 18)
    nodes = [helper.make_node("Mul", ["x", "w"], ["weighted"], name="weigh"), node]
    weights = RNG.uniform(0, 1, (1, 2, 1, 5, 4)).astype(np.float32)
    model = make_model(nodes, {"x": [1, 2, 3, 5, 4]}, ["y"], {"w": weights, **inits}, opset=18)
    report = check_conformance(model, tmp_path)
    assert report.result["io"]["outputs"][0]["onnx_shape"] == ([1, 2, 3, 1, 4] if keepdims else [1, 2, 3, 4])
    assert report.result["op_histogram"]["RESHAPE"] >= 2
