"""Conformance of Gemm / MatMul lowerings (FULLY_CONNECTED, BATCH_MATMUL)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import (batch_matmul_reads, check_conformance, delegate_partitions, make_model,
                                  structured_inputs)

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape",
                         [(1, 1.0, 1.0, [5]), (0, 0.5, 2.0, [1, 5]), (1, 1.0, 1.0, None), (1, 2.0, -0.5, [])])
def test_gemm_matches_onnxruntime(trans_b, alpha, beta, bias_shape, tmp_path):
    weights = RNG.normal(size=(5, 12) if trans_b else (12, 5)).astype(np.float32)
    inits = {"w": weights}
    inputs = ["x", "w"]
    if bias_shape is not None:
        inits["b"] = RNG.normal(size=bias_shape).astype(np.float32)
        inputs.append("b")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    report = check_conformance(make_model([node], {"x": [2, 12]}, ["y"], inits), tmp_path, int8_io=True)
    assert report.result["op_histogram"]["FULLY_CONNECTED"] == 1 and report.result["float_nodes"] == []


def test_matmul_constant_3d_keeps_dims(tmp_path):
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    model = make_model([node], {"x": [1, 6, 10]}, ["y"], {"w": RNG.normal(size=(10, 4)).astype(np.float32)})
    report = check_conformance(model, tmp_path, int8_io=True)
    assert report.result["op_histogram"]["FULLY_CONNECTED"] == 1 and report.result["float_nodes"] == []
    assert report.result["io"]["outputs"][0]["shape"] == [1, 6, 4]


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_fully_connected_writing_a_float_graph_output_stays_float(op, tmp_path):
    """An int8 FULLY_CONNECTED could only write the calibrated grid: logits beyond the calibration
    range would be clipped. With float model outputs the head is float; with --int8-io it is int8."""
    node = helper.make_node(op, ["x", "w"], ["y"], name="head")
    model = make_model([node], {"x": [1, 12]}, ["y"], {"w": RNG.normal(size=(12, 4)).astype(np.float32)})
    assert check_conformance(model, tmp_path / "float_io").result["float_nodes"] == ["head"]
    assert check_conformance(model, tmp_path / "int8_io", int8_io=True).result["float_nodes"] == []


def test_matmul_of_two_activations_is_batch_matmul(tmp_path):
    """B gets zero point 0 (requantized if calibration gave another): XNNPACK's condition for int8."""
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="attention_scores")
    model = make_model([node], {"a": [2, 5, 8], "b": [2, 8, 3]}, ["y"])
    feeds = [{"a": f["a"], "b": f["b"] + 0.7} for f in structured_inputs(model)]  # asymmetric B range
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"]["BATCH_MATMUL"] == 1
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_transposed_key_uses_adj_y_not_a_transpose(tmp_path):
    """q @ k^T: the Transpose is a layout (no data moves), which BATCH_MATMUL reads with AdjY."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["y"], name="scores")]
    model = make_model(nodes, {"q": [2, 5, 8], "k": [2, 6, 8]}, ["y"])  # 3-D: no NHWC boundary
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram["BATCH_MATMUL"] == 1 and "TRANSPOSE" not in histogram, histogram
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
    assert len(delegate_partitions(report.out_dir / "model.fp32.tflite")) == 1


def test_gemm_relu_is_fused(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [1, 9]}, ["y"], {"w": RNG.normal(size=(7, 9)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert "RELU" not in report.result["op_histogram"]


@pytest.mark.parametrize("c_shape", [[5], [1, 5], [3, 5], [3, 1], []], ids=["N", "1xN", "MxN", "Mx1", "scalar"])
def test_gemm_computed_c_is_fully_connected_plus_add(c_shape, tmp_path):
    """C computed by another branch (what onnxsim writes when it fuses MatMul + Add): FULLY_CONNECTED
    without bias, then ADD; a float island in the int8 model (the product has no calibrated range)."""
    branch = (helper.make_node("Relu", ["z"], ["c"], name="c_branch") if c_shape else
              helper.make_node("ReduceMax", ["z"], ["c"], name="c_branch", keepdims=0))
    nodes = [branch, helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", alpha=0.5, transB=1)]
    model = make_model(nodes, {"x": [3, 12], "z": c_shape or [4]}, ["y"],
                       {"w": RNG.normal(size=(5, 12)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["FULLY_CONNECTED"] == 1 and report.result["op_histogram"]["ADD"] == 1
    assert report.result["float_nodes"] == ["fc"]


@pytest.mark.parametrize("c_shape", [[3, 5], [3, 1]], ids=["MxN", "Mx1"])
def test_gemm_constant_c_that_is_not_a_bias(c_shape, tmp_path):
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", beta=-1.5)
    inits = {"w": RNG.normal(size=(12, 5)).astype(np.float32), "c": RNG.normal(size=c_shape).astype(np.float32)}
    report = check_conformance(make_model([node], {"x": [3, 12]}, ["y"], inits), tmp_path)
    assert report.result["op_histogram"]["ADD"] == 1


def test_gemm_beta_on_computed_c_is_refused_in_one_line():
    from edgepipe.backends.tflite import unsupported_nodes

    nodes = [helper.make_node("Relu", ["z"], ["c"], name="c_branch"),
             helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", beta=2.0)]
    model = make_model(nodes, {"x": [3, 12], "z": [5]}, ["y"], {"w": RNG.normal(size=(12, 5)).astype(np.float32)})
    problems = unsupported_nodes(model, "arm-cpu")
    assert [(name, op) for name, op, _ in problems] == [("fc", "Gemm")]
    assert "beta=2.0 with a computed C" in problems[0][2] and "\n" not in problems[0][2]


@pytest.mark.parametrize("computed_c", [False, True], ids=["bias", "computed-c"])
def test_gemm_trans_a_is_a_transpose(computed_c, tmp_path):
    inits = {"w": RNG.normal(size=(12, 5)).astype(np.float32)}
    nodes, inputs = [], {"x": [12, 3]}
    if computed_c:
        nodes.append(helper.make_node("Relu", ["z"], ["c"], name="c_branch"))
        inputs["z"] = [3, 5]
    else:
        inits["c"] = RNG.normal(size=[5]).astype(np.float32)
    nodes.append(helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transA=1, alpha=0.75))
    report = check_conformance(make_model(nodes, inputs, ["y"], inits), tmp_path)
    assert report.result["op_histogram"]["TRANSPOSE"] == 1


def test_matmul_constant_with_batch_dims_is_batch_matmul(tmp_path):
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="batched")
    model = make_model([node], {"x": [1, 3, 4, 6]}, ["y"], {"w": RNG.normal(size=(3, 6, 2)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["BATCH_MATMUL"] == 1 and report.result["float_nodes"] == ["batched"]


def test_int8_value_behind_a_head_transpose_is_read_transposed(tmp_path):
    """p @ v with v = Transpose(heads) of a projection: v must be transposed either way, so the int8
    model's one TRANSPOSE writes v^T and BATCH_MATMUL reads it with AdjY (XNNPACK's vectorised int8
    packing of an activation B); the fp32 model keeps v in ONNX order. Both one partition, fp32
    against ONNX Runtime and int8 against the Q/DQ simulation on every resolver."""
    nodes = [helper.make_node("Transpose", ["v_flat"], ["v"], name="heads", perm=[1, 0, 2]),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="values")]
    model = make_model(nodes, {"p": [2, 5, 5], "v_flat": [5, 2, 3]}, ["y"])  # 3-D: no NHWC boundary
    feeds = [{"p": f["p"], "v_flat": f["v_flat"] + 0.5} for f in structured_inputs(model)]  # asymmetric v range
    report = check_conformance(model, tmp_path, feeds)
    assert batch_matmul_reads(report.out_dir / "model.tflite") == [(True, [2, 3, 5])]
    assert batch_matmul_reads(report.out_dir / "model.fp32.tflite") == [(False, [2, 5, 3])]
    assert report.result["op_histogram"]["TRANSPOSE"] == 1
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / name)) == 1, name


def test_int8_value_in_onnx_order_is_not_transposed(tmp_path):
    """A v already in ONNX order in memory costs nothing as it is: no TRANSPOSE is added for AdjY."""
    node = helper.make_node("MatMul", ["p", "v"], ["y"], name="values")
    model = make_model([node], {"p": [2, 5, 5], "v": [2, 5, 3]}, ["y"])
    report = check_conformance(model, tmp_path)
    assert batch_matmul_reads(report.out_dir / "model.tflite") == [(False, [2, 5, 3])]
    assert "TRANSPOSE" not in report.result["op_histogram"]
