"""Conformance of 1-D Conv / ConvTranspose / MaxPool / AveragePool ([N, C, L]: audio, text, time series), lowered
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
         "w_dw": RNG.normal(size=(4, 1, 3)).astype(np.float32), "w2": RNG.normal(size=(6, 4, 3)).astype(np.float32) * 0.4,
         "w_up": RNG.normal(size=(4, 3, 16)).astype(np.float32) * 0.3, "w_up3": RNG.normal(size=(4, 3, 3)).astype(np.float32)}

CASES = {
    "conv-relu": [helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", pads=[1, 1]),
                  helper.make_node("Relu", ["c"], ["y"], name="relu")],
    "conv-strided-dilated": [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2], dilations=[2],
                                              pads=[2, 1])],
    "depthwise-same": [helper.make_node("Conv", ["x", "w_dw"], ["y"], name="conv", group=4, auto_pad="SAME_UPPER")],
    # a vocoder's upsampler (HiFi-GAN: kernel 2 x stride, pads stride / 2), and output_padding
    "conv-transpose-upsampler": [helper.make_node("ConvTranspose", ["x", "w_up"], ["y"], name="up", strides=[8],
                                                  pads=[4, 4])],
    "conv-transpose-output-padding": [helper.make_node("ConvTranspose", ["x", "w_up3"], ["y"], name="up", strides=[2],
                                                       pads=[1, 1], output_padding=[1])],
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
    assert not {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "MAX_POOL_2D", "AVERAGE_POOL_2D"}.isdisjoint(histogram)


@pytest.mark.parametrize("name", ["test_maxpool_1d_default", "test_averagepool_1d_default"])
def test_onnx_cases_match_expected_outputs(name, tmp_path):
    model, feed, expected = onnx_node_case(name)
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 17])
def test_relu_after_a_1d_conv_fuses_and_the_next_conv_reads_the_2d_view(opset, tmp_path):
    """Conv -> Relu -> Conv -> Relu (an audio encoder): each Relu moves into the 2-D view with its
    Conv and fuses into CONV_2D (no int8 grid for the whole pre-activation range, no separate
    requantize), and the second Conv reads the first one's 2-D output: no RESHAPE between them."""
    nodes = [helper.make_node("Conv", ["x", "w", "bias"], ["c1"], name="conv1", pads=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w3"], ["c2"], name="conv2", pads=[1, 1], strides=[2]),
             helper.make_node("Relu", ["c2"], ["y"], name="relu2")]
    inits = {"w": INITS["w"], "bias": INITS["bias"], "w3": RNG.normal(size=(5, 6, 3)).astype(np.float32) * 0.4}
    model = make_model(nodes, {"x": [1, 4, 20]}, ["y"], inits, opset=opset)
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram["CONV_2D"] == 2 and "QUANTIZE" in histogram and histogram["QUANTIZE"] == 1  # the input's
    assert "RELU" not in histogram and histogram.get("RESHAPE", 0) <= 2  # into 2-D, out of 2-D


@pytest.mark.parametrize("opset", [11, 17])
def test_a_1d_conv_whose_weights_are_a_constant_node_is_lifted(opset, tmp_path):
    """The fold stage writes a Constant node where it scales a Conv1d's weights (atspm-detector's
    FuncNet: each GELU's trailing * 0.5 moved into the next Conv1d); the lift read initializers only,
    so that Conv stayed 1-D and arm-cpu refused it as 'only 1-D and 2-D convolutions'."""
    weights = helper.make_tensor("w_folded", 1, [6, 4, 3], (INITS["w"] * 0.5).ravel().tolist())
    nodes = [helper.make_node("Constant", [], ["w_const"], name="folded_weights", value=weights),
             helper.make_node("Conv", ["x", "w_const", "bias"], ["y"], name="conv", pads=[2, 2], dilations=[2])]
    model = make_model(nodes, {"x": [1, 4, 20]}, ["y"], {"bias": INITS["bias"]}, opset=opset)
    assert not unsupported_nodes(model)
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["CONV_2D"] == 1


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("op, kernel", [("GlobalAveragePool", "MEAN"), ("GlobalMaxPool", "REDUCE_MAX")])
def test_global_pool_of_a_3d_tensor(op, kernel, opset, tmp_path):
    """tf2onnx writes a LayerNorm's moments (a mean over channels) as Transpose -> GlobalAveragePool
    on [N, C, L] (g2p-id's Keras BERT, PyPI): lifted like the other 1-D pools; it was refused on arm-cpu
    ("only 4-D NCHW input is supported")."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="to_ncl", perm=[0, 2, 1]),
             helper.make_node(op, ["t"], ["p"], name="pool"),
             helper.make_node("Sub", ["t", "p"], ["y"], name="centre")]
    model = make_model(nodes, {"x": [1, 20, 6]}, ["y"], opset=opset)
    assert not unsupported_nodes(model)
    report = check_conformance(model, tmp_path)
    assert kernel in report.result["op_histogram"]
