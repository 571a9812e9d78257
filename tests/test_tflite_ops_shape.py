"""Conformance of Reshape/Flatten/Squeeze/Unsqueeze/Transpose/Concat/Identity, incl. layout handling."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, make_model

RNG = np.random.default_rng(5)


def test_flatten_of_nhwc_feature_map_then_gemm(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
    model = make_model(nodes, {"x": [1, 3, 4, 5]}, ["y"], {"w": RNG.normal(size=(6, 60)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"].get("TRANSPOSE", 0) <= 1


def test_flatten_after_global_pool_needs_no_transpose(tmp_path):
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flatten")]
    report = check_conformance(make_model(nodes, {"x": [1, 8, 5, 5]}, ["y"]), tmp_path)
    assert "TRANSPOSE" not in report.result["op_histogram"]


@pytest.mark.parametrize("op_type,extra,shape_input", [
    ("Reshape", {}, np.array([1, -1, 6], np.int64)),
    ("Squeeze", {}, np.array([0], np.int64)),
    ("Unsqueeze", {}, np.array([1], np.int64)),
])
def test_reshape_like(op_type, extra, shape_input, tmp_path):
    node = helper.make_node(op_type, ["x", "s"], ["y"], name="reshape", **extra)
    report = check_conformance(make_model([node], {"x": [1, 4, 6]}, ["y"], {"s": shape_input}), tmp_path)
    # Unsqueeze's [1, 1, 4, 6] output leaves in NHWC: only a dim of 1 moves, a second RESHAPE
    assert report.result["op_histogram"]["RESHAPE"] == (2 if op_type == "Unsqueeze" else 1)
    assert "TRANSPOSE" not in report.result["op_histogram"]


def test_transpose_to_nhwc_is_free(tmp_path):
    """ONNX Transpose NCHW->NHWC on a tensor TFLite already holds as NHWC moves no data."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "s"], ["y"], name="reshape")]
    model = make_model(nodes, {"x": [1, 3, 4, 5]}, ["y"], {"s": np.array([1, 20, 3], np.int64)})
    report = check_conformance(model, tmp_path)
    assert "TRANSPOSE" not in report.result["op_histogram"]


def test_transpose_3d_and_identity(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="swap", perm=[0, 2, 1]),
             helper.make_node("Identity", ["t"], ["i"], name="same"),
             helper.make_node("Relu", ["i"], ["y"], name="relu")]
    report = check_conformance(make_model(nodes, {"x": [1, 4, 6]}, ["y"]), tmp_path)
    assert report.result["io"]["outputs"][0]["shape"] == [1, 6, 4]


@pytest.mark.parametrize("axis", [1, -1, 2])
def test_concat_of_differently_scaled_inputs(axis, tmp_path):
    nodes = [helper.make_node("Mul", ["a", "k"], ["a2"], name="scale"),
             helper.make_node("Concat", ["a2", "b", "c"], ["y"], name="concat", axis=axis)]
    model = make_model(nodes, {"a": [1, 3, 4, 4], "b": [1, 3, 4, 4]}, ["y"],
                       {"k": np.array(4.0, np.float32), "c": RNG.normal(size=(1, 3, 4, 4)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["CONCATENATION"] == 1
