"""Tile: a Keras UpSampling2D exported by tf2onnx as Reshape -> Tile -> Reshape (afis' LEADER
fingerprint network, 22 of them) was refused on arm-cpu ('no TFLite lowering for this op type').
The repeats follow the tensor's layout: after a Conv the tensor is held NHWC."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import unsupported_nodes
from tests.tflite_harness import check_conformance, make_model

RNG = np.random.default_rng(5)


def upsampling_model(opset: int):
    """NCHW [1, 3, 5, 6] -> Conv -> [1, 4, 5, 6, 1, 1] -> Tile [1, 1, 1, 1, 2, 3] -> ... a nearest
    2x3 upsampling as Keras writes it, then a plain 4-D Tile of the conv output ([1, 2, 1, 1])."""
    inits = {"w": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.3,
             "split": np.array([1, 4, 5, 1, 6, 1], np.int64), "reps": np.array([1, 1, 1, 2, 1, 3], np.int64),
             "merged": np.array([1, 4, 10, 18], np.int64), "reps4": np.array([1, 2, 1, 1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "split"], ["c6"], name="split"),
             helper.make_node("Tile", ["c6", "reps"], ["t6"], name="repeat"),
             helper.make_node("Reshape", ["t6", "merged"], ["up"], name="merge"),
             helper.make_node("Tile", ["c", "reps4"], ["t4"], name="tile4"),
             helper.make_node("Relu", ["up"], ["y"], name="relu")]
    return make_model(nodes, {"x": [1, 3, 5, 6]}, ["y", "t4"], inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 17])
def test_tile_matches_onnxruntime(opset, tmp_path):
    model = upsampling_model(opset)
    assert not unsupported_nodes(model)
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["TILE"] == 2
