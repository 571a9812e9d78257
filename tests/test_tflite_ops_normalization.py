"""Conformance of the normalizations: LayerNormalization (decomposed float island: last axis,
multi-axis, NHWC input, no bias, its statistics outputs), InstanceNormalization and GroupNormalization
(native and as torch exports it). Unfolded BatchNormalization: test_tflite_ops_unary.py."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.tflite import build_tflite
from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import check_conformance, make_model, onnx_node_case

RNG = np.random.default_rng(23)


@pytest.mark.parametrize("shape,axis,bias", [([2, 5, 16], -1, True), ([3, 12], 1, False), ([1, 4, 3, 5], 1, True),
                                             ([1, 6, 4, 4], -1, True)])
def test_layer_norm(shape, axis, bias, tmp_path):
    normalized = shape[axis % len(shape):]
    inits = {"g": RNG.uniform(0.5, 1.5, size=normalized).astype(np.float32)}
    if bias:
        inits["b"] = RNG.normal(size=normalized).astype(np.float32) * 0.3
    node = helper.make_node("LayerNormalization", ["x", "g", *(["b"] if bias else [])], ["y"], name="ln",
                            axis=axis, epsilon=1e-5)
    model = make_model([node], {"x": shape}, ["y"], inits)
    report = check_conformance(model, tmp_path, fp32_rtol=1e-5)
    histogram = report.result["op_histogram"]
    assert report.result["float_nodes"] == ["ln"]
    assert histogram["MEAN"] == 2 and histogram["RSQRT"] == 1 and "TRANSPOSE" not in histogram, histogram
    assert histogram.get("ADD", 0) == 1 + bias


def test_layer_norm_between_int8_ops(tmp_path):
    """Gemm -> LayerNorm -> Gemm: only the norm is float; its input/output are (de)quantized once."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="ln"),
             helper.make_node("Gemm", ["n", "w2"], ["y"], name="fc2", transB=1)]
    inits = {"w1": RNG.normal(size=(16, 8)).astype(np.float32), "w2": RNG.normal(size=(4, 16)).astype(np.float32),
             "g": np.ones(16, np.float32), "b": np.zeros(16, np.float32)}
    report = check_conformance(make_model(nodes, {"x": [3, 8]}, ["y"], inits), tmp_path, int8_io=True)
    assert report.result["float_nodes"] == ["ln"]
    assert report.result["op_histogram"]["FULLY_CONNECTED"] == 2


def test_unused_mean_and_inv_std_dev_outputs_are_dropped(tmp_path):
    """Exporters name LayerNormalization's training outputs even when nothing reads them."""
    inits = {"g": RNG.uniform(0.5, 1.5, size=16).astype(np.float32), "b": np.zeros(16, np.float32)}
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv_std"], name="ln")
    report = check_conformance(make_model([node], {"x": [2, 5, 16]}, ["y"], inits), tmp_path)
    assert report.result["float_nodes"] == ["ln"]


def test_used_mean_and_inv_std_dev_outputs(tmp_path):
    """Both statistics read by later nodes and as a graph output (ONNX's own cases keep them)."""
    inits = {"g": RNG.uniform(0.5, 1.5, size=16).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g"], ["n", "mean", "inv_std"], name="ln", axis=-1),
             helper.make_node("Add", ["n", "mean"], ["y"], name="use_mean")]
    model = make_model(nodes, {"x": [2, 5, 16]}, ["y", "inv_std"], inits)
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["ln"]


@pytest.mark.parametrize("name", ["test_layer_normalization_4d_axis1", "test_layer_normalization_3d_axis_negative_2_epsilon",
                                  "test_layer_normalization_default_axis"])
def test_onnx_cases_match_expected_outputs(name, tmp_path):
    model, feed, expected = onnx_node_case(name)
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [[1, 5, 6, 7], [2, 4, 9]])
def test_instance_norm(shape, tmp_path):
    channels = shape[1]
    inits = {"s": RNG.uniform(0.5, 1.5, size=channels).astype(np.float32),
             "b": RNG.normal(size=channels).astype(np.float32) * 0.3}
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="inorm", epsilon=1e-4)
    report = check_conformance(make_model([node], {"x": shape}, ["y"], inits), tmp_path)
    assert report.result["float_nodes"] == ["inorm"]
    assert report.result["op_histogram"]["MEAN"] == 2


@pytest.mark.parametrize("name", ["test_instancenorm_example", "test_instancenorm_epsilon"])
def test_onnx_instance_norm_cases(name, tmp_path):
    model, feed, expected = onnx_node_case(name)
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)


def test_group_norm_as_torch_exports_it(tmp_path):
    """torch.nn.GroupNorm before opset 18: Reshape [N, G, -1] -> InstanceNormalization -> Reshape
    -> per-channel Mul / Add (FCOS heads, diffusion UNets)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "grouped"], ["r"], name="to_groups"),
             helper.make_node("InstanceNormalization", ["r", "ones", "zeros"], ["n"], name="group_stats"),
             helper.make_node("Reshape", ["n", "image"], ["back"], name="to_image"),
             helper.make_node("Mul", ["back", "gamma"], ["scaled"], name="gamma_mul"),
             helper.make_node("Add", ["scaled", "beta"], ["y"], name="beta_add")]
    inits = {"w": RNG.normal(size=(8, 3, 3, 3)).astype(np.float32), "grouped": np.array([1, 4, -1], np.int64),
             "ones": np.ones(4, np.float32), "zeros": np.zeros(4, np.float32),
             "image": np.array([1, 8, 5, 5], np.int64), "gamma": RNG.uniform(0.5, 1.5, (8, 1, 1)).astype(np.float32),
             "beta": RNG.normal(size=(8, 1, 1)).astype(np.float32)}
    report = check_conformance(make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits), tmp_path)
    assert report.result["float_nodes"] == ["group_stats"]


@pytest.mark.parametrize("opset", [18, 21])  # scale/bias per group (18) or per channel (21)
def test_group_normalization(opset, tmp_path):
    channels, groups = 6, 3
    size = groups if opset == 18 else channels
    inits = {"s": RNG.uniform(0.5, 1.5, size=size).astype(np.float32), "b": RNG.normal(size=size).astype(np.float32)}
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["n"], name="gn", num_groups=groups, epsilon=1e-4),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    shape = [1, channels, 5, 4]
    graph_proto = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                                    [numpy_helper.from_array(v, k) for k, v in inits.items()])
    # ONNX shape inference leaves GroupNormalization's output unknown; the build's refresh_shapes fills it
    model = graph.refresh_shapes(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)]))
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["gn"]


@pytest.mark.parametrize("name", ["test_group_normalization_example", "test_group_normalization_epsilon"])
def test_onnx_group_norm_cases(name, tmp_path):
    model, feed, expected = onnx_node_case(name)
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5)


def test_batch_norm_with_computed_statistics(tmp_path):
    """tf2onnx's Keras LayerNormalization: a BatchNormalization fed the tensor's own mean and
    variance (ReduceMean, ReduceSumSquare / count): a float island on NHWC, [C] operands broadcast."""
    count = np.array(1 * 5 * 4, np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["m4"], name="mean4", axes=[0, 2, 3], keepdims=1),
             helper.make_node("Sub", ["x", "m4"], ["d"], name="centre"),
             helper.make_node("ReduceSumSquare", ["d"], ["ss"], name="sumsq", axes=[0, 2, 3], keepdims=0),
             helper.make_node("Div", ["ss", "count"], ["var"], name="var"),
             helper.make_node("Squeeze", ["m4", "squeeze_axes"], ["mean"], name="squeeze"),
             helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["y"], name="bn",
                              epsilon=1e-3)]
    rng = np.random.default_rng(2)
    constants = {"count": count, "squeeze_axes": np.array([0, 2, 3], np.int64),
                 "gamma": rng.uniform(0.5, 1.5, 3).astype(np.float32), "beta": rng.normal(size=3).astype(np.float32)}
    model = make_model(nodes, {"x": [1, 3, 5, 4]}, ["y"], constants, opset=13)
    report = check_conformance(model, tmp_path)
    assert "RSQRT" in report.result["op_histogram"]
    # the statistics feeding the float island are float too (float_statistics.py): no int8 x - mean
    assert set(report.result["float_nodes"]) == {"mean4", "centre", "sumsq", "var", "squeeze", "bn"}


def test_decomposed_layer_norm_is_fused(tmp_path):
    """tf2onnx's Keras LayerNormalization over axis 1 of [N, C, L]: mean, squared difference,
    variance, 1 / sqrt(var + eps), then x * s + (beta - mean * s) with s = gamma / std. One fused
    float node (the LayerNormalization decomposition), not int8 products that cancel."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[1], keepdims=1),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="diff"),
             helper.make_node("Mul", ["d", "d"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[1], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["std"], name="std"),
             helper.make_node("Reciprocal", ["std"], ["r"], name="inverse"),
             helper.make_node("Mul", ["r", "gamma"], ["s"], name="scale"),
             helper.make_node("Mul", ["x", "s"], ["xs"], name="mul_x"),
             helper.make_node("Mul", ["mean", "s"], ["ms"], name="mul_mean"),
             helper.make_node("Sub", ["beta", "ms"], ["shift"], name="shift"),
             helper.make_node("Add", ["xs", "shift"], ["y"], name="out")]
    constants = {"eps": np.array(1e-3, np.float32), "gamma": rng.uniform(0.5, 1.5, (1, 6, 1)).astype(np.float32),
                 "beta": rng.normal(size=(1, 6, 1)).astype(np.float32)}
    model = make_model(nodes, {"x": [1, 6, 10]}, ["y"], constants, opset=13)
    feeds = [{"x": (rng.normal(size=(1, 6, 10)) * 3 + 40).astype(np.float32)} for _ in range(4)]
    report = check_conformance(model, tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert report.result["float_nodes"] == ["out"] and histogram["RSQRT"] == 1 and "SQRT" not in histogram


def test_decomposed_layer_norm_with_global_average_pool_means_is_fused(tmp_path):
    """tf2onnx writes a Keras BERT's LayerNormalization over the last axis of [N, L, C] with
    GlobalAveragePool as both means (it averages every axis after 1: here C alone); g2p-id's
    pronunciation BERT (PyPI) has eight. Fused like the ReduceMean form: arm-cpu int8 16.1 -> 18.1 dB there."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"], name="mean"),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="diff"),
             helper.make_node("Mul", ["d", "d"], ["sq"], name="square"),
             helper.make_node("GlobalAveragePool", ["sq"], ["var"], name="variance"),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["std"], name="std"),
             helper.make_node("Reciprocal", ["std"], ["r"], name="inverse"),
             helper.make_node("Mul", ["r", "gamma"], ["s"], name="scale"),
             helper.make_node("Mul", ["mean", "s"], ["ms"], name="mul_mean"),
             helper.make_node("Sub", ["beta", "ms"], ["shift"], name="shift"),
             helper.make_node("Mul", ["x", "s"], ["xs"], name="mul_x"),
             helper.make_node("Add", ["xs", "shift"], ["y"], name="out")]
    constants = {"eps": np.array(1e-3, np.float32), "gamma": rng.uniform(0.5, 1.5, 12).astype(np.float32),
                 "beta": rng.normal(size=12).astype(np.float32)}
    model = make_model(nodes, {"x": [1, 8, 12]}, ["y"], constants, opset=13)
    feeds = [{"x": (rng.normal(size=(1, 8, 12)) * 3 + 40).astype(np.float32)} for _ in range(4)]
    report = check_conformance(model, tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert report.result["float_nodes"] == ["out"] and histogram["RSQRT"] == 1 and "SQRT" not in histogram
