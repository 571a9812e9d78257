"""Depthwise-conv cases for benchmarks/xnnpack_op_speed.py: what of a depthwise conv's form changes
XNNPACK's int8 speed against fp32.

Why its own module: issue 15's int8 <= 0.5x fp32 goal is held back on depthwise-heavy models
(MobileNetV3 / PP-LCNet / ConvNeXt), and the question is which knobs a lowering controls move the
int8 kernel: weight scales, fused activation, input zero point, stride, dilation, channel count,
kernel size, and DEPTHWISE_CONV_2D against the grouped CONV_2D the lowering writes for kernels
beyond XNNPACK's 25-tap depthwise kernels (edgepipe.backends.tflite.ops.conv). Each builder takes
the dtype ("int8" or "float32") and returns the .tflite bytes, as xnnpack_op_speed's cases do.
"""

from __future__ import annotations

import numpy as np

from benchmarks.tiny_tflite import CONV_OPTIONS, SAME, UNIT, Graph, Quantization, finish
from edgepipe import quantmath
from edgepipe.backends.tflite.ops.conv import depthwise_as_grouped, depthwise_group_channels

RELU6 = 3  # tflite.ActivationFunctionType
POSITIVE = Quantization.per_tensor(*quantmath.asymmetric_params(0.0, 6.0))  # zero point -128


def depthwise(shape, kernel, stride=1, dilation=1, activation=0, grid=UNIT, per_tensor=False):
    """One DEPTHWISE_CONV_2D (SAME padding) on an input quantized with `grid`."""
    def build(dtype):
        g = Graph(dtype)
        channels = shape[3]
        x = g.spec.add_tensor("x", shape, dtype, grid if dtype == "int8" else None)
        g.spec.inputs.append(x)
        if per_tensor and dtype == "int8":
            values = np.random.default_rng(0).integers(-127, 128, (1, kernel, kernel, channels)).astype(np.int8)
            filter_index = g.spec.add_constant("w", values, Quantization.per_tensor(0.01, 0))
            bias_index = g.spec.add_constant("b", np.zeros(channels, np.int32),
                                             Quantization.per_tensor(0.01 * float(grid.scale[0]), 0))
        else:
            filter_index, bias_index = g.weights((1, kernel, kernel, channels), 3)
        out = [1, -(-shape[1] // stride), -(-shape[2] // stride), channels]
        return finish(g, g.op("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], out, "DepthwiseConv2DOptions",
                              **{**CONV_OPTIONS, "Padding": SAME, "DepthMultiplier": 1, "StrideH": stride,
                                 "StrideW": stride, "DilationHFactor": dilation, "DilationWFactor": dilation,
                                 "FusedActivationFunction": activation}))
    return build


def grouped(shape, kernel, per_group=None):
    """The depthwise conv as the grouped CONV_2D the lowering writes (filter [C, k, k, group], each
    output channel reading its own input channel), `per_group` channels per group or the
    lowering's choice for the dtype."""
    def build(dtype):
        g = Graph(dtype)
        channels = shape[3]
        group = per_group or depthwise_group_channels(channels, channels, (kernel, kernel), dtype)
        values = np.random.default_rng(0).standard_normal((channels, 1, kernel, kernel)).astype(np.float32) * 0.2
        weights = depthwise_as_grouped(values, group).transpose(0, 2, 3, 1)
        if dtype == "float32":
            filter_index = g.spec.add_constant("w", weights)
            bias_index = g.spec.add_constant("b", np.zeros(channels, np.float32))
        else:
            q, scales = quantmath.per_channel_symmetric(weights, 0)
            filter_index = g.spec.add_constant("w", q, Quantization.per_channel(scales, 0))
            bias_index = g.spec.add_constant("b", np.zeros(channels, np.int32), Quantization.per_channel(
                np.asarray(scales, np.float64) * float(UNIT.scale[0]), 0))
        return finish(g, g.op("CONV_2D", [g.input(shape), filter_index, bias_index], shape, "Conv2DOptions",
                              **{**CONV_OPTIONS, "Padding": SAME}))
    return build


CASES = {
    **{f"depthwise 7x7 {shape} {where}": {"DEPTHWISE_CONV_2D": depthwise(shape, 7),
                                          "grouped CONV_2D (the lowering)": grouped(shape, 7),
                                          "grouped CONV_2D, 16 per group": grouped(shape, 7, 16)}
       for shape, where in (([1, 8, 8, 48], "(corpus ConvNeXt)"), ([1, 14, 14, 384], "(ConvNeXt-T stage 3)"))},
    "depthwise 7x7 [1,16,16,24] (corpus ConvNeXt)": {"DEPTHWISE_CONV_2D": depthwise([1, 16, 16, 24], 7),
                                                     "grouped CONV_2D (the lowering)": grouped([1, 16, 16, 24], 7),
                                                     "grouped CONV_2D, 12 per group": grouped([1, 16, 16, 24], 7, 12)},
    "depthwise 3x3 [1,56,56,64] (PP-LCNet) forms": {
        "plain": depthwise([1, 56, 56, 64], 3), "per-tensor weights": depthwise([1, 56, 56, 64], 3, per_tensor=True),
        "fused RELU6": depthwise([1, 56, 56, 64], 3, activation=RELU6),
        "input zero point -128": depthwise([1, 56, 56, 64], 3, grid=POSITIVE),
        "stride 2": depthwise([1, 56, 56, 64], 3, stride=2), "dilation 2": depthwise([1, 56, 56, 64], 3, dilation=2),
        "60 channels": depthwise([1, 56, 56, 60], 3), "72 channels": depthwise([1, 56, 56, 72], 3),
        "grouped CONV_2D, 16 per group": grouped([1, 56, 56, 64], 3, 16)},
    "depthwise 5x5 [1,2,96,200] (OCR cls) forms": {
        "5x5": depthwise([1, 2, 96, 200], 5), "3x3": depthwise([1, 2, 96, 200], 3),
        "grouped CONV_2D, 8 per group": grouped([1, 2, 96, 200], 5, 8)},
}
