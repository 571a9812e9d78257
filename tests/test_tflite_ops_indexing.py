"""Conformance of Gather (constant indices), Slice (clamped/negative bounds, steps), Split (equal/unequal),
and the SLICE forms XNNPACK delegates where GATHER / SPLIT_V would stay outside."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, delegate_partitions, make_model

RNG = np.random.default_rng(29)
CONV_W = RNG.normal(size=(6, 3, 1, 1)).astype(np.float32) * 0.5


def _after(source_shape, node, inits, after_conv, opset=17, outputs=("y",)):
    """The op on a graph input, or on a conv output (NHWC inside TFLite)."""
    nodes = [node]
    if after_conv:
        nodes.insert(0, helper.make_node("Conv", ["x", "w"], ["c"], name="conv"))
        inits = {**inits, "w": CONV_W[:, : source_shape[1]]}
    return make_model(nodes, {"x": source_shape}, list(outputs), inits, opset=opset)


@pytest.mark.parametrize("after_conv", [False, True], ids=["input", "after_conv"])
@pytest.mark.parametrize("axis,indices,opcode", [(1, [4, 0, -1], "GATHER"), (2, 1, "SLICE"), (1, [2, 3, 4], "SLICE"),
                                                (3, [[0, 2], [1, 1]], "GATHER"), (-1, [3, 0], "GATHER")])
def test_gather_on_4d(axis, indices, opcode, after_conv, tmp_path):
    """A contiguous run of indices (a scalar one included) is a SLICE, which XNNPACK delegates."""
    node = helper.make_node("Gather", ["c" if after_conv else "x", "i"], ["y"], name="gather", axis=axis)
    model = _after([1, 3, 4, 5] if after_conv else [1, 6, 4, 5], node, {"i": np.array(indices, np.int64)}, after_conv)
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram[opcode] == 1 and not report.result["float_nodes"], histogram
    if opcode == "SLICE":
        for file in ("model.tflite", "model.fp32.tflite"):
            assert len(delegate_partitions(report.out_dir / file)) == 1, file


def test_class_token_gather_is_one_slice(tmp_path):
    """ViT's x[:, 0] on [N, tokens, dim]: Gather(axis=1, index 0) drops the axis after a SLICE."""
    node = helper.make_node("Gather", ["x", "i"], ["y"], name="gather", axis=1)
    report = check_conformance(make_model([node], {"x": [1, 5, 8]}, ["y"], {"i": np.array(0, np.int64)}), tmp_path)
    assert report.result["op_histogram"] == {"QUANTIZE": 1, "SLICE": 1, "RESHAPE": 1, "DEQUANTIZE": 1}
    assert report.result["io"]["outputs"][0]["shape"] == [1, 8]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_gather_plain_2d(tmp_path):
    node = helper.make_node("Gather", ["x", "i"], ["y"], name="gather", axis=0)
    report = check_conformance(make_model([node], {"x": [5, 3]}, ["y"], {"i": np.array([4, 4, 1], np.int64)}),
                               tmp_path)
    assert report.result["io"]["outputs"][0]["shape"] == [3, 3]


SLICES = [  # starts, ends, axes, steps
    ([1], [-1], [1], None),
    ([0, 1], [2**63 - 1, 100], [2, 3], None),
    ([-3, 0], [-1, 5], [-1, 1], [1, 2]),
    ([-1], [-2**63], [3], [-2]),
    ([3, 4], [0, 1], [2, 3], [-1, -2]),
]


@pytest.mark.parametrize("after_conv", [False, True], ids=["input", "after_conv"])
@pytest.mark.parametrize("case", SLICES, ids=[str(i) for i in range(len(SLICES))])
def test_slice_on_4d(case, after_conv, tmp_path):
    starts, ends, axes, steps = case
    inits = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64), "a": np.array(axes, np.int64)}
    if steps:
        inits["t"] = np.array(steps, np.int64)
    node = helper.make_node("Slice", ["c" if after_conv else "x", "s", "e", "a", *(["t"] if steps else [])], ["y"],
                            name="slice")
    report = check_conformance(_after([1, 3, 5, 6] if after_conv else [1, 6, 5, 6], node, inits, after_conv),
                               tmp_path)
    histogram = report.result["op_histogram"]
    backwards = bool(steps) and any(s < 0 for s in steps)  # positive steps: RESHAPE + SLICE (test_tflite_ops_strided_slice)
    assert histogram.get("STRIDED_SLICE" if backwards else "SLICE", 0) >= 1 and "TRANSPOSE" not in histogram
    assert backwards or "STRIDED_SLICE" not in histogram


def test_slice_3d_default_axes(tmp_path):
    node = helper.make_node("Slice", ["x", "s", "e"], ["y"], name="slice")
    model = make_model([node], {"x": [2, 4, 6]}, ["y"], {"s": np.array([0, 1, -4], np.int64),
                                                         "e": np.array([1, 3, 1000], np.int64)})
    report = check_conformance(model, tmp_path)
    assert report.result["io"]["outputs"][0]["shape"] == [1, 2, 4]


@pytest.mark.parametrize("after_conv", [False, True], ids=["input", "after_conv"])
@pytest.mark.parametrize("axis,split,opset", [(1, None, 17), (1, [2, 4], 17), (3, [1, 2, 2], 11), (-2, None, 18)])
def test_split(axis, split, opset, after_conv, tmp_path):
    parts = len(split) if split else 2
    outputs = [f"y{i}" for i in range(parts)]
    inputs, attrs, inits = ["c" if after_conv else "x"], {"axis": axis}, {}
    if split and opset >= 13:
        inputs.append("split")
        inits["split"] = np.array(split, np.int64)
    elif split:
        attrs["split"] = split
    if opset >= 18:
        attrs["num_outputs"] = parts
    node = helper.make_node("Split", inputs, outputs, name="split", **attrs)
    model = _after([1, 3, 4, 5] if after_conv else [1, 6, 4, 5], node, inits, after_conv, opset, outputs)
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    unequal = split and len(set(split)) > 1
    assert "TRANSPOSE" not in histogram and "SPLIT_V" not in histogram, histogram
    assert histogram.get("SLICE") == parts if unequal else histogram.get("SPLIT") == 1, histogram
    for file in ("model.tflite", "model.fp32.tflite"):  # SPLIT_V would stay outside XNNPACK
        assert len(delegate_partitions(report.out_dir / file)) == 1, file
