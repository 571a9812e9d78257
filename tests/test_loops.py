"""Loops with a constant trip count are unrolled for a target without Loop (edgepipe/loops.py):
tf2onnx's while-loop RNN (vital-model-chars2vec's Keras LSTMs) with the step count read from
Shape, a counter and a per-step scan output. Checked against ONNX Runtime on the Loop as written;
TensorRT targets keep the Loop."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, loops
from edgepipe.backends.tflite import build_tflite
from edgepipe.errors import UnsupportedOpError
from edgepipe.stages.export import run_export
from edgepipe.targets import load_target

RNG = np.random.default_rng(5)
FEATURES, HIDDEN = 3, 4


def while_loop_rnn(stop_on_data: bool = False) -> onnx.ModelProto:
    """x [1, T, F] (T symbolic) -> Loop over T: h = tanh(x_t W + h R); outputs the last h and
    every step's h, as tf2onnx writes a Keras RNN: the step count is Slice(Shape) squeezed and
    cast, the loop condition `counter + 1 < steps` (or, `stop_on_data`, a test on h)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    body_nodes = [
        helper.make_node("Gather", ["x_steps", "iteration"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
        helper.make_node("MatMul", ["h_in", "R"], ["hr"]),
        helper.make_node("Add", ["xw", "hr"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("Add", ["counter_in", "one"], ["counter_out"]),
    ]
    if stop_on_data:
        body_nodes += [helper.make_node("ReduceSum", ["h_out"], ["total"], keepdims=0),
                       helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    else:
        body_nodes.append(helper.make_node("Less", ["counter_out", "steps"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("iteration", i64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", f, [1, HIDDEN]), helper.make_tensor_value_info("counter_in", i64, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", f, [1, HIDDEN]),
         helper.make_tensor_value_info("counter_out", i64, []), helper.make_tensor_value_info("h_out", f, [1, HIDDEN])],
        [one])
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_steps"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["x_steps"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero_1d", "one_1d"], ["steps_1d"]),
        helper.make_node("Squeeze", ["steps_1d", "zero_1d"], ["steps"]),
        helper.make_node("Less", ["counter0", "steps"], ["cond0"]),
        helper.make_node("Loop", ["steps", "cond0", "h0", "counter0"], ["h_last", "counter_last", "h_all"],
                         name="rnn/while_loop", body=body),
    ]
    weights = np.random.default_rng(0)  # the same weights on every call: the reference is a second build
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "zero_1d": np.array([0], np.int64), "one_1d": np.array([1], np.int64), "counter0": np.array(0, np.int64),
        "h0": np.zeros((1, HIDDEN), np.float32), "limit": np.array(1e9 if stop_on_data else 0, np.float32),
        "W": weights.normal(0, 0.5, (FEATURES, HIDDEN)).astype(np.float32),
        "R": weights.normal(0, 0.5, (HIDDEN, HIDDEN)).astype(np.float32)}.items()]
    model = helper.make_model(helper.make_graph(
        nodes, "while_rnn", [helper.make_tensor_value_info("x", f, [1, "steps", FEATURES])],
        [helper.make_tensor_value_info("h_last", f, [1, HIDDEN]),
         helper.make_tensor_value_info("h_all", f, ["steps", 1, HIDDEN])], inits),
        opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_a_constant_trip_count_loop_is_unrolled_and_computes_the_same(tmp_path):
    path = tmp_path / "while_rnn.onnx"
    onnx.save(while_loop_rnn(), str(path))
    exported = run_export(str(path), None, {"x": [1, 5, FEATURES]})
    assert [n.op_type for n in loops.unroll_for(exported, load_target("jetson")).graph.node].count("Loop") == 1
    model = loops.unroll_for(exported, load_target("arm-cpu"))
    assert not any(n.op_type == "Loop" for n in model.graph.node)
    x = RNG.normal(size=(1, 5, FEATURES)).astype(np.float32)
    expected = graph.make_session(while_loop_rnn()).run(None, {"x": x})
    got = graph.make_session(model).run(None, {"x": x})
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)


def test_a_loop_that_may_stop_on_data_is_left_for_the_targets_check(tmp_path):
    path = tmp_path / "data_stop.onnx"
    onnx.save(while_loop_rnn(stop_on_data=True), str(path))
    model = loops.unroll_for(run_export(str(path), None, {"x": [1, 5, FEATURES]}), load_target("arm-cpu"))
    assert [n.name for n in model.graph.node if n.op_type == "Loop"] == ["rnn/while_loop"]
    try:
        build_tflite(model, None, tmp_path / "tflite")
    except UnsupportedOpError as error:
        assert "rnn/while_loop" in str(error) and "Loop" in str(error)
    else:
        raise AssertionError("a Loop that may stop early was lowered")


def test_inspect_checks_the_unrolled_graph_per_target(tmp_path):
    """`inspect --input-shape` sees what build lowers: arm-cpu all supported (the Loop unrolled,
    its step-count Shape arithmetic folded), jetson the Loop as written."""
    import json

    from click.testing import CliRunner

    from edgepipe.cli.main import cli

    path = tmp_path / "while_rnn.onnx"
    onnx.save(while_loop_rnn(), str(path))
    result = CliRunner().invoke(cli, ["inspect", str(path), "--input-shape", f"x:1x5x{FEATURES}", "--target", "arm-cpu",
                                      "--target", "jetson", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["unsupported"] == {"arm-cpu": [], "jetson": []}
