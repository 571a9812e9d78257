"""Conformance of 1-D Conv / MaxPool / AveragePool ([N, C, L]: audio, text, time series), lowered
through their 2-D kernels with a height-1 view (ops/one_d.py), at opsets with Unsqueeze's axes
as an attribute (11) and as an input (17)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite, unsupported_nodes
from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import check_conformance, make_model, onnx_node_case

RNG = np.random.default_rng(37)
INITS = {"w": RNG.normal(size=(6, 4, 3)).astype(np.float32) * 0.4, "bias": RNG.normal(size=6).astype(np.float32) * 0.1,
         "w_dw": RNG.normal(size=(4, 1, 3)).astype(np.float32), "w2": RNG.normal(size=(6, 4, 3)).astype(np.float32) * 0.4}

CASES = {
    "conv-relu": [helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", pads=[1, 1]),
                  helper.make_node("Relu", ["c"], ["y"], name="relu")],
    "conv-strided-dilated": [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2], dilations=[2],
                                              pads=[2, 1])],
    "depthwise-same": [helper.make_node("Conv", ["x", "w_dw"], ["y"], name="conv", group=4, auto_pad="SAME_UPPER")],
    "maxpool-ceil": [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3], strides=[2], ceil_mode=1)],
    "avgpool-exclusive-pads": [helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3], strides=[2],
                                                pads=[1, 1], count_include_pad=0)],
    "one-input-two-readers": [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1]),
                              helper.make_node("MaxPool", ["x"], ["m"], name="pool", kernel_shape=[3], pads=[1, 1]),
                              helper.make_node("Conv", ["m", "w2"], ["b"], name="conv_b", pads=[1, 1]),
                              helper.make_node("Add", ["a", "b"], ["y"], name="add")],
}


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_d_matches_onnxruntime(case, opset, tmp_path):
    nodes = CASES[case]
    used = {name for node in nodes for name in node.input}
    model = make_model(nodes, {"x": [1, 4, 20]}, ["y"], {k: v for k, v in INITS.items() if k in used}, opset=opset)
    assert not unsupported_nodes(model)
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert not {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"}.isdisjoint(histogram)


@pytest.mark.parametrize("name", ["test_maxpool_1d_default", "test_averagepool_1d_default"])
def test_onnx_cases_match_expected_outputs(name, tmp_path):
    model, feed, expected = onnx_node_case(name)
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)
