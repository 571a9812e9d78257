"""ArgMax / ArgMin / TopK (ops/selection.py) in the real LiteRT interpreter against ONNX Runtime.

Inputs are permutations of well-separated levels (gaps of many int8 steps), so int8 rounding cannot
make two values equal and the int8 indices must equal ONNX Runtime's exactly; TopK's int8 values
are checked in output steps of the calibrated grid (derived from the calibration, not the file).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepipe import graph
from edgepipe.backends.tflite import build_tflite, delegation
from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite
from edgepipe.errors import UnsupportedOpError
from tests.tflite_harness import minmax_calibration, run_onnx

RNG = np.random.default_rng(5)


def _model(node, shape, outputs):
    graph_proto = helper.make_graph(
        [node], "selection", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in outputs])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model = graph.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def _separated(shape, count=4):
    """Samples whose values are distinct levels 0.5 apart: a level gap is 256 / size int8 steps
    (over 2 steps for the sizes here), so rounding never makes two values equal."""
    size = int(np.prod(shape))
    return [{"x": (RNG.permutation(size).reshape(shape) * 0.5 - size * 0.25).astype(np.float32)} for _ in range(count)]


def _built(model, feeds, tmp_path):
    result = build_tflite(model, minmax_calibration(model, feeds), tmp_path)
    return result["io"]


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("shape,axis,keepdims", [((1, 6, 5, 4), 1, 1), ((1, 6, 5, 4), 3, 0), ((1, 6, 5, 4), 2, 1),
                                                  ((2, 10), -1, 0), ((3, 7), 0, 1)])
def test_arg_indices_equal_onnx_runtime(op, shape, axis, keepdims, tmp_path):
    node = helper.make_node(op, ["x"], ["i"], name="arg", axis=axis, keepdims=keepdims)
    model = _model(node, shape, [("i", TensorProto.INT64)])
    feeds = _separated(shape)
    io = _built(model, feeds, tmp_path)
    assert io["outputs"][0]["dtype"] == "int64" and io["outputs"][0]["quantization"] is None
    fp32_io = {k: [dict(s, dtype="float32" if s["dtype"] == "int8" else s["dtype"], quantization=None)
                   for s in v] for k, v in io.items()}
    for feed in feeds:
        expected = run_onnx(model, feed)["i"]
        for file, file_io in (("model.tflite", io), ("model.fp32.tflite", fp32_io)):
            got = run_tflite(tmp_path / file, file_io, feed)["i"]
            assert got.dtype == np.int64 and got.shape == expected.shape, file
            np.testing.assert_array_equal(got, expected, err_msg=file)


def test_argmax_of_a_computed_tensor_keeps_the_rest_delegated(tmp_path):
    """Conv -> ArgMax over channels (a segmentation class map): the conv stays in XNNPACK."""
    w = RNG.normal(size=(5, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ArgMax", ["c"], ["classes"], name="arg", axis=1, keepdims=0)]
    graph_proto = helper.make_graph(nodes, "segmenter", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        [1, 3, 8, 8])],
                                    [helper.make_tensor_value_info("classes", TensorProto.INT64, None)],
                                    [onnx.numpy_helper.from_array(w, "w")])
    model = graph.infer_shapes(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = [{"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    io = _built(model, feeds, tmp_path)
    fp32_io = {k: [dict(s, dtype="float32" if s["dtype"] == "int8" else s["dtype"], quantization=None)
                   for s in v] for k, v in io.items()}
    agreement = []
    for feed in feeds:
        expected = run_onnx(model, feed)["classes"]
        np.testing.assert_array_equal(run_tflite(tmp_path / "model.fp32.tflite", fp32_io, feed)["classes"], expected)
        agreement.append(np.mean(run_tflite(tmp_path / "model.tflite", io, feed)["classes"] == expected))
    assert np.mean(agreement) > 0.9  # int8 conv outputs: only near-ties may flip
    interpreter = make_interpreter(tmp_path / "model.tflite", "xnnpack")
    interpreter.allocate_tensors()
    measured = delegation.partitions(interpreter._get_ops_details())
    assert measured == {"partitions": 1, "outside": {"ARG_MAX": 1}}  # only the argmax outside XNNPACK


def test_topk_values_and_indices(tmp_path):
    shape = (2, 3, 12)
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="topk", axis=-1)
    graph_proto = helper.make_graph(
        [node], "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("values", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("indices", TensorProto.INT64, None)],
        [onnx.numpy_helper.from_array(np.array([4], np.int64), "k")])
    model = graph.infer_shapes(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = _separated(shape)
    calibration = minmax_calibration(model, feeds)
    io = build_tflite(model, calibration, tmp_path)["io"]
    step = calibration.asymmetric_params("x")[0]
    for feed in feeds:
        expected = run_onnx(model, feed)
        got = run_tflite(tmp_path / "model.tflite", io, feed)
        np.testing.assert_array_equal(got["indices"], expected["indices"])
        assert got["indices"].dtype == np.int64
        assert np.max(np.abs(got["values"] - expected["values"])) <= step * 0.5 + 1e-6  # the input's own rounding


@pytest.mark.parametrize("op,attrs,inputs,reason", [
    ("ArgMax", {"axis": 1, "select_last_index": 1}, ["x"], "select_last_index"),
    ("TopK", {"axis": -1, "largest": 0}, ["x", "k"], "largest=0"),
    ("TopK", {"axis": 1}, ["x", "k"], "last axis"),
])
def test_unsupported_forms_are_refused_by_name(op, attrs, inputs, reason, tmp_path):
    node = helper.make_node(op, inputs, ["y", "i"] if op == "TopK" else ["y"], name="the_node", **attrs)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT if op == "TopK" else TensorProto.INT64, None)]
    if op == "TopK":
        outputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    graph_proto = helper.make_graph([node], "refused", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       [1, 4, 6])], outputs,
                                    [onnx.numpy_helper.from_array(np.array([2], np.int64), "k")])
    model = graph.infer_shapes(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(UnsupportedOpError, match=f"node 'the_node' \\({op}\\).*{reason}"):
        build_tflite(model, None, tmp_path)
    assert not (tmp_path / "model.fp32.tflite").exists()
