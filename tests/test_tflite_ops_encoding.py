"""Conformance of Cast (float -> int32) and OneHot: a token classifier's input (Magika's bytes)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.tflite_harness import check_conformance, make_model

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("depth", [9, 257])
def test_cast_one_hot_dense_is_an_embedding(depth, tmp_path):
    """float token ids -> Cast(int32) -> OneHot(depth, [0, 1]) -> Reshape -> MatMul: CAST runs as a
    float island, ONE_HOT writes int8 on its [0, 1] grid (exact), then the int8 FULLY_CONNECTED."""
    nodes = [helper.make_node("Cast", ["x"], ["ids"], name="cast", to=TensorProto.INT32),
             helper.make_node("OneHot", ["ids", "depth", "values"], ["hot"], name="one_hot", axis=-1),
             helper.make_node("Reshape", ["hot", "rows"], ["flat"], name="rows"),
             helper.make_node("MatMul", ["flat", "w"], ["y"], name="dense")]
    constants = {"depth": np.array([depth], np.int32), "values": np.array([0.0, 1.0], np.float32),
                 "rows": np.array([12, depth], np.int64), "w": RNG.normal(size=(depth, 5)).astype(np.float32)}
    model = make_model(nodes, {"x": [1, 12]}, ["y"], constants, opset=13)
    feeds = [{"x": RNG.integers(0, depth, (1, 12)).astype(np.float32)} for _ in range(8)]
    report = check_conformance(model, tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert histogram["CAST"] == 1 and histogram["ONE_HOT"] == 1
    assert "cast" in report.result["float_nodes"] and "one_hot" not in report.result["float_nodes"]
