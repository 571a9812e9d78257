"""Keras Conv1D as tf2onnx writes it (Unsqueeze -> Conv [1, k] -> Squeeze -> Add(bias [C, 1]) -> Relu):
the bias folds into the Conv and the Relu moves before the Squeeze (ops/squeezed_conv.py), so
CONV_2D fuses the activation instead of writing its pre-bias range on the int8 grid. Found on
slovorez's morpheme segmenter (PyPI), whose five such layers lost 10 dB on arm-cpu."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import check_conformance, make_model, run_onnx, structured_inputs

RNG = np.random.default_rng(81)


def _keras_conv1d_stack(opset: int):
    """Two tf2onnx Conv1D layers: the first with a ReLU and one channel whose wide pre-activation
    range its bias puts below zero (the pre-bias tensor's int8 grid is then much coarser than the
    ReLU output's), the second a 1x1 logits layer with its bias after the Squeeze and no activation."""
    def axes(name):
        return ([name], {}) if opset >= 13 else ([], {"axes": [2]})

    axis_in, axis_attr = axes("axis2")
    nodes = [helper.make_node("Unsqueeze", ["x", *axis_in], ["x4"], name="expand1", **axis_attr),
             helper.make_node("Conv", ["x4", "w1"], ["c1"], name="conv1", kernel_shape=[1, 5], pads=[0, 2, 0, 2]),
             helper.make_node("Squeeze", ["c1", *axis_in], ["s1"], name="squeeze1", **axis_attr),
             helper.make_node("Add", ["s1", "b1"], ["a1"], name="bias1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("Unsqueeze", ["r1", *axis_in], ["r4"], name="expand2", **axis_attr),
             helper.make_node("Conv", ["r4", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             helper.make_node("Squeeze", ["c2", *axis_in], ["s2"], name="squeeze2", **axis_attr),
             helper.make_node("Add", ["b2", "s2"], ["y"], name="bias2")]
    w1 = RNG.normal(size=(8, 4, 1, 5)).astype(np.float32)
    b1 = RNG.normal(size=(8, 1)).astype(np.float32) - 1.0
    w1[0] *= 10.0  # a channel with a wide pre-activation range that its bias puts below zero
    b1[0] = -60.0
    inits = {"w1": w1, "b1": b1, "w2": RNG.normal(size=(6, 8, 1, 1)).astype(np.float32),
             "b2": RNG.normal(size=(1, 6, 1)).astype(np.float32)}
    if opset >= 13:
        inits["axis2"] = np.array([2], np.int64)
    return make_model(nodes, {"x": [1, 4, 32]}, ["r1", "y"], inits, opset=opset)


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - test) ** 2), 1e-30)))


@pytest.mark.parametrize("opset", [11, 17])
def test_tf2onnx_conv1d_bias_and_relu_fold_into_conv_2d(opset, tmp_path):
    model = _keras_conv1d_stack(opset)
    report = check_conformance(model, tmp_path)  # fp32 as ONNX Runtime, int8 as its Q/DQ simulation
    histogram = report.result["op_histogram"]
    assert histogram.get("CONV_2D") == 2
    assert "ADD" not in histogram and "RELU" not in histogram, histogram  # both inside the CONV_2Ds
    feeds = structured_inputs(model)
    reference = np.concatenate([run_onnx(model, feed)["r1"] for feed in feeds])
    got = np.concatenate([run_tflite(report.out_dir / "model.tflite", report.result["io"], feed)["r1"]
                          for feed in feeds])
    # measured on the ReLU output: 34.1 / 38.0 dB (opset 11 / 17) with the fold, 24.8 / 27.0 dB
    # when CONV_2D wrote the pre-bias range on its own grid
    assert _sqnr_db(reference, got) > 31.0
