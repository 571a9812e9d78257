"""Conformance of Gemm / MatMul lowerings (FULLY_CONNECTED, BATCH_MATMUL)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, delegate_partitions, make_model, structured_inputs

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [(1, 1.0, 1.0, [5]), (0, 0.5, 2.0, [1, 5]), (1, 1.0, 1.0, None)])
def test_gemm_matches_onnxruntime(trans_b, alpha, beta, bias_shape, tmp_path):
    weights = RNG.normal(size=(5, 12) if trans_b else (12, 5)).astype(np.float32)
    inits = {"w": weights}
    inputs = ["x", "w"]
    if bias_shape:
        inits["b"] = RNG.normal(size=bias_shape).astype(np.float32)
        inputs.append("b")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    report = check_conformance(make_model([node], {"x": [2, 12]}, ["y"], inits), tmp_path)
    assert report.result["op_histogram"]["FULLY_CONNECTED"] == 1


def test_matmul_constant_3d_keeps_dims(tmp_path):
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    model = make_model([node], {"x": [1, 6, 10]}, ["y"], {"w": RNG.normal(size=(10, 4)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["FULLY_CONNECTED"] == 1
    assert report.result["io"]["outputs"][0]["shape"] == [1, 6, 4]


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
