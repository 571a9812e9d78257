"""Conformance of MaxPool / AveragePool / GlobalAveragePool lowerings."""

from __future__ import annotations

import pytest
from onnx import helper

from edgepipe.backends.tflite import unsupported_nodes
from tests.tflite_harness import check_conformance, make_model

# (op, kernel, stride, padding attrs)
POOL_CASES = [
    ("MaxPool", 2, 2, {}),
    ("MaxPool", 3, 2, {"pads": [1, 1, 1, 1]}),
    ("MaxPool", 3, 1, {"auto_pad": "SAME_UPPER"}),
    ("MaxPool", 3, 2, {"pads": [0, 1, 2, 0]}),  # explicit: PADV2 with -inf then VALID
    ("AveragePool", 2, 2, {}),
    ("AveragePool", 3, 1, {"auto_pad": "SAME_UPPER"}),
    ("AveragePool", 3, 2, {"pads": [1, 1, 1, 1], "count_include_pad": 1}),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(POOL_CASES)])
def test_pool_matches_onnxruntime(case, tmp_path):
    op_type, kernel, stride, padding = case
    node = helper.make_node(op_type, ["x"], ["y"], name="pool", kernel_shape=[kernel, kernel],
                            strides=[stride, stride], **padding)
    model = make_model([node], {"x": [1, 5, 9, 10]}, ["y"])
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram.get("MAX_POOL_2D" if op_type == "MaxPool" else "AVERAGE_POOL_2D", 0) + histogram.get(
        "DEPTHWISE_CONV_2D", 0) == 1


def test_global_average_pool_is_mean(tmp_path):
    model = make_model([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], {"x": [1, 6, 5, 7]}, ["y"])
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["MEAN"] == 1


def test_ceil_mode_and_exclusive_explicit_pads_are_reported():
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], name="ceil_pool", kernel_shape=[2, 2], strides=[2, 2],
                              ceil_mode=1),
             helper.make_node("AveragePool", ["m"], ["y"], name="odd_avg", kernel_shape=[3, 3], pads=[0, 0, 1, 1])]
    model = make_model(nodes, {"x": [1, 2, 9, 9]}, ["y"])
    problems = {name: reason for name, _, reason in unsupported_nodes(model)}
    assert set(problems) == {"ceil_pool", "odd_avg"}
    assert "ceil_mode" in problems["ceil_pool"] and "count_include_pad" in problems["odd_avg"]
