"""Conformance of comparisons and selection (ops/compare.py): tf2onnx's div_no_nan (Equal + Where,
Basic Pitch's normalization), every comparison with broadcasting, and Not."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, make_model, structured_inputs

ZERO = {"zero": np.array(0.0, np.float32)}


def test_div_no_nan_pattern(tmp_path):
    """(x - min) / (max - min), 0 where the range is 0: a per-sample [1, 1, 1] denominator
    broadcast over [1, 6, 8]; one of the feeds is constant so its range is 0 and Where picks 0."""
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["lo"], name="lo", axes=[1, 2], keepdims=1),
        helper.make_node("Sub", ["x", "lo"], ["centred"], name="centre"),
        helper.make_node("ReduceMax", ["centred"], ["range"], name="range", axes=[1, 2], keepdims=1),
        helper.make_node("Div", ["centred", "range"], ["ratio"], name="divide"),
        helper.make_node("Equal", ["range", "zero"], ["empty"], name="empty"),
        helper.make_node("Where", ["empty", "zero", "ratio"], ["y"], name="select"),
    ]
    model = make_model(nodes, {"x": [1, 6, 8]}, ["y"], ZERO, opset=17)
    feeds = structured_inputs(model)
    feeds.insert(1, {"x": np.full((1, 6, 8), 2.5, np.float32)})
    report = check_conformance(model, tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert histogram["EQUAL"] == 1 and histogram["SELECT_V2"] == 1
    assert {"empty", "select"} <= set(report.result["float_nodes"])


@pytest.mark.parametrize("op_type", ["Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"])
def test_comparison_selects_between_tensors(op_type, tmp_path):
    """A comparison of an NCHW conv output with a per-channel constant picks between the conv
    output and its negation: the bool and both values share the conv's layout."""
    weights = np.random.default_rng(5).normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.4
    threshold = np.array([0.0, 0.1, -0.1, 0.2], np.float32).reshape(4, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["c", "t"], ["cond"], name="compare"),
             helper.make_node("Neg", ["c"], ["n"], name="neg"),
             helper.make_node("Where", ["cond", "c", "n"], ["y"], name="select")]
    model = make_model(nodes, {"x": [1, 3, 6, 7]}, ["y"], {"w": weights, "t": threshold}, opset=17)
    check_conformance(model, tmp_path)


def test_not_inverts_a_comparison(tmp_path):
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"], name="compare"),
             helper.make_node("Not", ["positive"], ["negative"], name="invert"),
             helper.make_node("Where", ["negative", "zero", "x"], ["y"], name="select")]
    report = check_conformance(make_model(nodes, {"x": [1, 4, 5]}, ["y"], ZERO, opset=17), tmp_path)
    assert report.result["op_histogram"]["LOGICAL_NOT"] == 1
