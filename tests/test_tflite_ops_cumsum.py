"""Conformance of CumSum (FULLY_CONNECTED with a triangular 0/1 matrix along the innermost axis,
zero PAD + depthwise window of ones along an outer axis): one XNNPACK partition, fp32 and int8."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepipe.backends.tflite import unsupported_nodes
from tests.tflite_harness import check_conformance, delegate_partitions, make_model, op_names

RNG = np.random.default_rng(41)
CONV_W = RNG.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.4


def _cumsum_model(shape, axis, exclusive=0, reverse=0, after_conv=False):
    nodes = [helper.make_node("CumSum", ["c" if after_conv else "x", "axis"], ["y"], name="cumsum",
                              exclusive=exclusive, reverse=reverse)]
    inits = {"axis": np.array(axis, np.int64)}
    if after_conv:
        nodes.insert(0, helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]))
        inits["w"] = CONV_W[:, : shape[1]]
    return make_model(nodes, {"x": shape}, ["y"], inits)


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)],
                         ids=["inclusive", "exclusive", "reverse", "reverse_exclusive"])
@pytest.mark.parametrize("axis", [3, 2, 1], ids=["W", "H", "C"])
def test_cumsum_of_image_after_conv(axis, exclusive, reverse, tmp_path):
    """NHWC layout: ONNX W and H are outer TFLite axes (depthwise window), C the innermost (FC)."""
    model = _cumsum_model([1, 3, 5, 7], axis, exclusive, reverse, after_conv=True)
    report = check_conformance(model, tmp_path)
    names = op_names(report.out_dir / "model.tflite", "no_delegates")
    assert "CUMSUM" not in names
    assert ("FULLY_CONNECTED" if axis == 1 else "DEPTHWISE_CONV_2D") in names
    for path in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / path)) == 1, path


@pytest.mark.parametrize("shape,axis", [([2, 9], 1), ([2, 9], 0), ([2, 6, 4], -1), ([2, 6, 4], 1), ([12], 0)],
                         ids=["tokens", "batch_axis", "last_of_3d", "middle_of_3d", "vector"])
def test_cumsum_sequences(shape, axis, tmp_path):
    report = check_conformance(_cumsum_model(shape, axis), tmp_path)
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_cumsum_with_runtime_axis_is_refused():
    graph_proto = helper.make_graph(
        [helper.make_node("CumSum", ["x", "a"], ["y"], name="cumsum")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]),
         helper.make_tensor_value_info("a", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)])
    problems = unsupported_nodes(model)
    assert problems and "axis must be a constant scalar" in str(problems)


def test_integer_cumsum_counts_token_positions(tmp_path):
    """RoBERTa / XLM-R position ids: cumsum(ids != pad) * (ids != pad) + pad, int64 in ONNX, int32
    CUMSUM in TFLite; the ids then index a position embedding added to the token embedding, so a
    wrong position is a wrong embedding row in the output."""
    from onnx import numpy_helper

    from edgepipe import graph

    node = helper.make_node
    nodes = [node("Equal", ["ids", "pad"], ["is_pad"], name="is_pad"), node("Not", ["is_pad"], ["keep"], name="keep"),
             node("Cast", ["keep"], ["keep_int"], name="keep_int", to=TensorProto.INT64),
             node("CumSum", ["keep_int", "axis"], ["count"], name="cumsum"),
             node("Mul", ["count", "keep_int"], ["counted"], name="counted"),
             node("Add", ["counted", "pad"], ["positions"], name="positions"),
             node("Gather", ["position_table", "positions"], ["position_emb"], name="position_emb"),
             node("Gather", ["token_table", "ids"], ["token_emb"], name="token_emb"),
             node("Add", ["token_emb", "position_emb"], ["y"], name="y")]
    constants = {"pad": np.array(1, np.int64), "axis": np.array(1, np.int64),
                 "position_table": RNG.normal(size=(12, 4)).astype(np.float32),
                 "token_table": RNG.normal(size=(20, 4)).astype(np.float32)}
    proto = helper.make_graph(nodes, "positions", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = graph.infer_shapes(helper.make_model(proto, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = []
    for count in (9, 6, 3, 7, 5, 8):
        ids = RNG.integers(2, 20, (1, 9))
        ids[0, count:] = 1
        feeds.append({"ids": ids})
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"]["CUMSUM"] == 1
