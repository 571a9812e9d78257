"""Conformance of Cast (float -> int32) and OneHot: a token classifier's input (Magika's bytes)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepipe.backends.tflite import delegation
from tests.tflite_harness import check_conformance, make_model

RNG = np.random.default_rng(11)


def _embedding_model(depth: int, values=(0.0, 1.0), reshape=True, second_reader=False):
    """float token ids -> Cast(int32) -> OneHot(depth, values) -> [Reshape] -> MatMul (Magika's
    first dense layer); `second_reader` adds a ReduceSum of the one-hot tensor as a 2nd output."""
    nodes = [helper.make_node("Cast", ["x"], ["ids"], name="cast", to=TensorProto.INT32),
             helper.make_node("OneHot", ["ids", "depth", "values"], ["hot"], name="one_hot", axis=-1)]
    constants = {"depth": np.array([depth], np.int32), "values": np.array(values, np.float32),
                 "w": RNG.normal(size=(depth, 5)).astype(np.float32)}
    if reshape:
        nodes.append(helper.make_node("Reshape", ["hot", "rows"], ["flat"], name="rows"))
        constants["rows"] = np.array([12, depth], np.int64)
    nodes.append(helper.make_node("MatMul", ["flat" if reshape else "hot", "w"], ["y"], name="dense"))
    outputs = ["y"]
    if second_reader:
        nodes.append(helper.make_node("ReduceSum", ["hot", "last"], ["count"], name="count", keepdims=0))
        constants["last"] = np.array([-1], np.int64)
        outputs.append("count")
    return make_model(nodes, {"x": [1, 12]}, outputs, constants, opset=13)


@pytest.mark.parametrize("depth", [9, 257])
def test_one_hot_dense_is_a_table_lookup(depth, tmp_path):
    """OneHot -> Reshape -> MatMul becomes a GATHER of table rows (int8: rows on the product's grid):
    no ONE_HOT, no FULLY_CONNECTED; CAST stays a float island. Same numbers as ONNX Runtime."""
    feeds = [{"x": RNG.integers(0, depth, (1, 12)).astype(np.float32)} for _ in range(8)]
    report = check_conformance(_embedding_model(depth), tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert histogram["CAST"] == 1 and histogram["GATHER"] == 1
    assert "ONE_HOT" not in histogram and "FULLY_CONNECTED" not in histogram
    assert "cast" in report.result["float_nodes"] and "dense" not in report.result["float_nodes"]
    # the ids' int32 clamp and the GATHER stay on builtin kernels, as predicted before any build
    measured = delegation.measure(report.out_dir / "model.tflite")
    predicted = delegation.predicted_outside(report.result["kernels"])["outside"]
    assert measured["partitions"] == 1 and predicted == {"ADD": 1, "GATHER": 1, "MAXIMUM": 1, "MINIMUM": 1}
    assert measured["outside"] == {**predicted, "CAST": 1}


@pytest.mark.parametrize("values, reshape", [((-1.0, 2.0), True), ((0.0, 1.0), False)])
def test_table_lookup_follows_onnx_out_of_range_indices(values, reshape, tmp_path):
    """Computed indices below -depth, in [-depth, 0) (ONNX counts them from the end), and >= depth
    (all off) against ONNX Runtime, with on / off values other than 1 / 0 and without a Reshape."""
    depth = 9
    ids = np.array([[-12, -9, -1, 0, 3, 8, 9, 40, -4, 5, 2, 7]], np.float32)
    feeds = [{"x": ids}, {"x": ids[:, ::-1].copy()}] + \
        [{"x": RNG.integers(-depth, depth, (1, 12)).astype(np.float32)} for _ in range(6)]
    report = check_conformance(_embedding_model(depth, values, reshape), tmp_path, feeds)
    assert report.result["op_histogram"]["GATHER"] == 1 and "ONE_HOT" not in report.result["op_histogram"]


def test_one_hot_with_another_reader_stays_one_hot(tmp_path):
    """A one-hot tensor something else reads too is not a lookup: ONE_HOT writes int8 on its
    [0, 1] grid (exact), then the int8 FULLY_CONNECTED."""
    depth = 9
    feeds = [{"x": RNG.integers(0, depth, (1, 12)).astype(np.float32)} for _ in range(8)]
    report = check_conformance(_embedding_model(depth, second_reader=True), tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert histogram["CAST"] == 1 and histogram["ONE_HOT"] == 1 and "GATHER" not in histogram
    assert "one_hot" not in report.result["float_nodes"]


def test_float_request_naming_the_one_hot_keeps_the_lookup_float(tmp_path):
    """`float_nodes` naming a node the rewrite absorbed (the OneHot) applies to the lookup: the
    table is float32 inside the int8 model, and the numbers still follow ONNX Runtime."""
    depth = 9
    feeds = [{"x": RNG.integers(-depth, depth, (1, 12)).astype(np.float32)} for _ in range(8)]
    report = check_conformance(_embedding_model(depth), tmp_path, feeds, float_nodes=["one_hot"])
    assert "dense" in report.result["float_nodes"]
    assert report.result["kernels"]["float32"].get("GATHER") == 1, report.result["kernels"]
