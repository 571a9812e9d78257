"""Models that branch: an If on a pinned-able input (a sample rate), an If on a shape, an If on data."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _branch(name: str, nodes, output: str, shape) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)])


def sample_rate_model(width: int = 8, opset: int = 17) -> onnx.ModelProto:
    """y = If(sr == 16000): conv-free 16 kHz path Relu(x @ w16) else 8 kHz path Tanh(x @ w8) (outer-scope
    weights and x), like Silero VAD's whole network under `If(sr == 16000)`; x [1, ?] dynamic."""
    rng = np.random.default_rng(5)
    then_branch = _branch("rate16k", [helper.make_node("MatMul", ["x", "w16"], ["m16"], name="proj16"),
                                      helper.make_node("Relu", ["m16"], ["y16"], name="relu16")], "y16", [1, 4])
    else_branch = _branch("rate8k", [helper.make_node("MatMul", ["x", "w8"], ["m8"], name="proj8"),
                                     helper.make_node("Tanh", ["m8"], ["y8"], name="tanh8")], "y8", [1, 4])
    nodes = [helper.make_node("Equal", ["sr", "sixteen_k"], ["is16k"], name="rate_check"),
             helper.make_node("If", ["is16k"], ["y"], name="rate_switch", then_branch=then_branch,
                              else_branch=else_branch)]
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "sixteen_k"),
             numpy_helper.from_array(rng.normal(size=(width, 4)).astype(np.float32), "w16"),
             numpy_helper.from_array(rng.normal(size=(width, 4)).astype(np.float32), "w8")]
    graph = helper.make_graph(nodes, "rate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width]),
                                              helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def shape_if_model() -> onnx.ModelProto:
    """y = If(x.shape[0] == 1): Squeeze(x, 0) else Identity-like ReduceMean: PyTorch's `if x.shape[0] == 1`
    with a nested If inside the then-branch on the same shape (x [?, 6] dynamic)."""
    inner = helper.make_node("If", ["is_one"], ["squeezed"], name="inner_switch",
                             then_branch=_branch("inner_then", [helper.make_node("Squeeze", ["x", "axis0"], ["s"],
                                                                                   name="squeeze")], "s", [6]),
                             else_branch=_branch("inner_else", [helper.make_node("ReduceMean", ["x", "axis0"], ["r"],
                                                                                   name="mean", keepdims=0)], "r", [6]))
    then_branch = _branch("outer_then", [inner, helper.make_node("Relu", ["squeezed"], ["t"], name="relu")], "t", [6])
    else_branch = _branch("outer_else", [helper.make_node("ReduceMax", ["x", "axis0"], ["e"], name="max",
                                                          keepdims=0)], "e", [6])
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["rows"], name="rows"),
             helper.make_node("Equal", ["rows", "one"], ["is_one"], name="is_one"),
             helper.make_node("If", ["is_one"], ["y"], name="outer_switch", then_branch=then_branch,
                              else_branch=else_branch)]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    graph = helper.make_graph(nodes, "shape_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def data_if_model() -> onnx.ModelProto:
    """y = If(sum(x) > 0 and sr == 16000): a condition on the data itself, which no pinning makes constant."""
    model = sample_rate_model()
    graph = model.graph
    switch = graph.node[-1]
    graph.node.remove(switch)
    graph.node.extend([helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
                       helper.make_node("Greater", ["total", "zero_f"], ["positive"], name="positive"),
                       helper.make_node("And", ["positive", "is16k"], ["gate_on"], name="both")])
    switch.input[0] = "gate_on"
    graph.node.append(switch)
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"))
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_loop_model(steps: int = 3) -> onnx.ModelProto:
    """Conv -> BatchNorm -> Relu -> Loop -> Conv, plus a skip Conv on the Relu. The loop body smooths
    its carried state toward the Relu's output `feat` and stacks each step plus the conv's pre-BN
    output `pre` (a scan output); it reads both from the main graph by name (outer scope): `feat`
    also feeds a quantized Conv (Q/DQ rewiring), `pre` is what a BatchNorm fold would rename away.
    x [1, 3, 12, 12] -> y [1, 4, 12, 12], trace [steps, 1, 6, 12, 12]."""
    rng = np.random.default_rng(11)
    body = helper.make_graph(
        [helper.make_node("Mul", ["state_in", "half"], ["decayed"], name="decay"),
         helper.make_node("Add", ["decayed", "feat"], ["mixed"], name="mix"),
         helper.make_node("Tanh", ["mixed"], ["state_out"], name="squash"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Add", ["state_out", "pre"], ["step_out"], name="record")],
        "smooth",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1, 6, 12, 12])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 6, 12, 12]),
         helper.make_tensor_value_info("step_out", TensorProto.FLOAT, [1, 6, 12, 12])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    nodes = [helper.make_node("Conv", ["x", "w_in", "b_in"], ["pre"], name="conv_in", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["pre", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["normed"],
                              name="bn_in"),
             helper.make_node("Relu", ["normed"], ["feat"], name="relu_in"),
             helper.make_node("Loop", ["steps", "", "feat"], ["smoothed", "trace"], name="smooth_loop", body=body),
             helper.make_node("Conv", ["smoothed", "w_out", "b_out"], ["head"], name="conv_out", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["feat", "w_skip"], ["skip"], name="conv_skip"),
             helper.make_node("Add", ["head", "skip"], ["y"], name="join")]
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w_in"),
             numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b_in"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "bn_scale"),
             numpy_helper.from_array(rng.normal(0, 0.2, 6).astype(np.float32), "bn_bias"),
             numpy_helper.from_array(rng.normal(0, 0.2, 6).astype(np.float32), "bn_mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2.0, 6).astype(np.float32), "bn_var"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32), "w_out"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b_out"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 6, 1, 1)).astype(np.float32), "w_skip"),
             numpy_helper.from_array(np.array(steps, np.int64), "steps")]
    graph = helper.make_graph(nodes, "conv_loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12]),
                               helper.make_tensor_value_info("trace", TensorProto.FLOAT, [steps, 1, 6, 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def loop_without_trip_count_model() -> onnx.ModelProto:
    """`conv_loop_model` as a while loop (no trip count M; the body's condition is `i < 2`) that
    stacks a scan output: TensorRT sizes scan outputs by the trip count, so its parser rejects it."""
    model = conv_loop_model()
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    loop.input[0], loop.input[1] = "", "go"
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "go"))
    steps = next(t for t in model.graph.initializer if t.name == "steps")
    model.graph.initializer.remove(steps)
    body = loop.attribute[0].g
    keep_going = next(n for n in body.node if n.name == "keep_going")
    keep_going.CopyFrom(helper.make_node("Less", ["i", "last_step"], ["cond_out"], name="keep_going"))
    body.initializer.append(numpy_helper.from_array(np.array(2, np.int64), "last_step"))
    onnx.checker.check_model(model, full_check=True)
    return model
