"""Conformance of MaxPool / AveragePool / GlobalAveragePool lowerings."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite, unsupported_nodes
from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import check_conformance, delegate_partitions, make_model, onnx_node_case, op_names, run_onnx

# (op, kernel, stride, padding attrs)
POOL_CASES = [
    ("MaxPool", 2, 2, {}),
    ("MaxPool", 3, 2, {"pads": [1, 1, 1, 1]}),
    ("MaxPool", 3, 1, {"auto_pad": "SAME_UPPER"}),
    ("MaxPool", 3, 2, {"pads": [0, 1, 2, 0]}),  # explicit: PADV2 with -inf then VALID
    ("AveragePool", 2, 2, {}),
    ("AveragePool", 3, 1, {"auto_pad": "SAME_UPPER"}),
    ("AveragePool", 3, 2, {"pads": [1, 1, 1, 1], "count_include_pad": 1}),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(POOL_CASES)])
def test_pool_matches_onnxruntime(case, tmp_path):
    op_type, kernel, stride, padding = case
    node = helper.make_node(op_type, ["x"], ["y"], name="pool", kernel_shape=[kernel, kernel],
                            strides=[stride, stride], **padding)
    model = make_model([node], {"x": [1, 5, 9, 10]}, ["y"])
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram.get("MAX_POOL_2D" if op_type == "MaxPool" else "AVERAGE_POOL_2D", 0) + histogram.get(
        "DEPTHWISE_CONV_2D", 0) == 1


def test_global_average_pool_is_mean(tmp_path):
    model = make_model([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], {"x": [1, 6, 5, 7]}, ["y"])
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["MEAN"] == 1


# ceil_mode=1 and explicit pads: extra end padding, and for AveragePool a divisor correction
# wherever ONNX averages over fewer elements than kh*kw (count_include_pad semantics at the border)
CEIL_CASES = [
    ("MaxPool", 3, 2, [0, 0, 0, 0], 0, [9, 10]),
    ("MaxPool", 3, 2, [1, 1, 1, 1], 0, [8, 11]),
    ("MaxPool", 2, 2, [0, 0, 0, 0], 0, [7, 7]),
    ("MaxPool", 3, 3, [1, 1, 1, 1], 0, [2, 2]),  # last window starts in the pad: dropped
    ("AveragePool", 3, 2, [0, 0, 0, 0], 0, [9, 10]),
    ("AveragePool", 3, 2, [0, 0, 0, 0], 1, [9, 10]),  # the ceil overhang is not counted
    ("AveragePool", 3, 2, [1, 1, 1, 1], 0, [8, 11]),
    ("AveragePool", 3, 2, [1, 1, 1, 1], 1, [8, 11]),  # explicit pads counted, overhang not
    ("AveragePool", 3, 2, [0, 1, 1, 0], 0, [7, 7]),
    ("AveragePool", 2, 2, [0, 0, 0, 0], 0, [9, 9]),  # TFLite SAME is exact here
]


@pytest.mark.parametrize("case", CEIL_CASES, ids=[f"{c[0]}-k{c[1]}s{c[2]}p{sum(c[3])}c{c[4]}" for c in CEIL_CASES])
def test_ceil_mode_pool_matches_onnxruntime(case, tmp_path):
    op_type, kernel, stride, pads, count_include_pad, size = case
    attrs = {"count_include_pad": count_include_pad} if op_type == "AveragePool" else {}
    node = helper.make_node(op_type, ["x"], ["y"], name="pool", kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=pads, ceil_mode=1, **attrs)
    model = make_model([node], {"x": [1, 3, *size]}, ["y"], opset=22)
    report = check_conformance(model, tmp_path)
    assert not unsupported_nodes(model)
    if op_type == "AveragePool" and report.result["op_histogram"].get("MUL"):
        assert report.result["float_nodes"] == ["pool"]  # border divisors: exact float island


def test_explicit_exclusive_pads_are_exact(tmp_path):
    """count_include_pad=0 with pads that are not TFLite's SAME (was refused)."""
    node = helper.make_node("AveragePool", ["x"], ["y"], name="avg", kernel_shape=[3, 3], pads=[0, 0, 1, 1])
    check_conformance(make_model([node], {"x": [1, 2, 9, 9]}, ["y"]), tmp_path)


@pytest.mark.parametrize("name", ["test_maxpool_2d_ceil", "test_maxpool_2d_ceil_output_size_reduce_by_one",
                                  "test_averagepool_2d_ceil", "test_averagepool_2d_ceil_last_window_starts_on_pad"])
def test_onnx_ceil_cases_match_expected_outputs(name, tmp_path):
    model, feed, expected = onnx_node_case(name)
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    reference = run_onnx(model, feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-4)  # the case lists 4 decimals
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-5, atol=1e-7)


def test_declared_size_that_onnxruntime_does_not_produce_is_refused():
    """Before opset 22 ONNX shape inference keeps a last window that starts in the padding;
    ONNX Runtime drops it. The lowering refuses instead of picking one."""
    node = helper.make_node("MaxPool", ["x"], ["y"], name="ceil_pool", kernel_shape=[1, 1], strides=[2, 2], ceil_mode=1)
    model = make_model([node], {"x": [1, 2, 2, 2]}, ["y"], opset=19)
    ((name, _, reason),) = unsupported_nodes(model)
    assert name == "ceil_pool" and "ONNX Runtime computes [1, 1]" in reason and "opset >= 22" in reason


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 2, 0]], ids=["symmetric", "explicit"])
def test_padded_max_pool_after_relu_pads_with_zeros_in_the_partition(pads, tmp_path):
    """ResNet's stem (Relu then a padded 3x3 / 2 MaxPool): zero is the lowest value a Relu output
    holds, so PAD replaces PADV2 (-inf fill, which XNNPACK does not take) in fp32 and int8 alike;
    ONNX Runtime's -inf padding is the reference. The PAD works on the [N, H, W * C] view (a
    RESHAPE each side; XNNPACK's 4-D PAD in front of a pool is several times slower)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=pads)]
    weights = np.random.default_rng(3).normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.5
    report = check_conformance(make_model(nodes, {"x": [1, 3, 9, 10]}, ["y"], {"w": weights}), tmp_path)
    assert "PADV2" not in report.result["op_histogram"] and report.result["op_histogram"]["PAD"] == 1
    assert report.result["op_histogram"]["RESHAPE"] == 2
    for file in ("model.tflite", "model.fp32.tflite"):
        assert "PADV2" not in op_names(report.out_dir / file, "no_delegates")
        assert len(delegate_partitions(report.out_dir / file)) == 1, file


@pytest.mark.parametrize("pads,ceil_mode", [([1, 1, 1, 1], 0), ([0, 1, 2, 0], 0), ([1, 1, 1, 1], 1)],
                         ids=["symmetric", "explicit", "ceil_mode"])
def test_padded_max_pool_of_signed_input_repeats_edge_rows(pads, ceil_mode, tmp_path):
    """Without a Relu in front a zero pad would win over negative maxima; the edge rows and
    columns repeated into the pads (SLICE + CONCATENATION) never change a window's maximum, and
    keep the pool in the XNNPACK partition, where PADV2 with the lowest value would split it."""
    node = helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=pads,
                            ceil_mode=ceil_mode)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    weights = np.random.default_rng(5).normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.5
    report = check_conformance(make_model([conv, node], {"x": [1, 3, 9, 10]}, ["y"], {"w": weights}), tmp_path)
    histogram = report.result["op_histogram"]
    assert "PADV2" not in histogram and "PAD" not in histogram and histogram["CONCATENATION"] == 2
    for file in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / file)) == 1, file
