"""Depthwise-conv cases for benchmarks/xnnpack_op_speed.py: what of a depthwise conv's form changes
XNNPACK's int8 speed against fp32 (and the 1x1 depthwise conv against a float chain XNNPACK
tabulates, for one scale and one shift).

Why its own module: issue 15's int8 <= 0.5x fp32 goal is held back on depthwise-heavy models
(MobileNetV3 / PP-LCNet / ConvNeXt), and the question is which knobs a lowering controls move the
int8 kernel: weight scales, fused activation, input zero point, stride, dilation, channel count,
kernel size, and DEPTHWISE_CONV_2D against the grouped CONV_2D the lowering writes for kernels
beyond XNNPACK's 25-tap depthwise kernels (edgepipe.backends.tflite.ops.conv); for a per-tensor
affine (ops/affine.py), the 1x1 depthwise conv against DEQUANTIZE, MUL, ADD, QUANTIZE. Each builder takes
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


def scalar_affine(shape, form):
    """y = 0.7 x + 0.2 with one scale and shift: fp32 MUL, ADD; int8 `depthwise` (a 1x1
    DEPTHWISE_CONV_2D, the same weight and bias per channel) or `float chain` (DEQUANTIZE, MUL, ADD,
    QUANTIZE, which XNNPACK turns into one lookup table)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        if dtype == "int8" and form == "depthwise":
            weight = Quantization.per_channel(np.full(shape[3], 0.7 / 127), 3)
            filter_index = g.spec.add_constant("w", np.full((1, 1, 1, shape[3]), 127, np.int8), weight)
            bias_scale = 0.7 / 127 * float(UNIT.scale[0])
            bias_index = g.spec.add_constant("b", np.full(shape[3], round(0.2 / bias_scale), np.int32),
                                             Quantization.per_channel(np.full(shape[3], bias_scale), 0))
            return finish(g, g.op("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], shape, "DepthwiseConv2DOptions",
                                  **{**CONV_OPTIONS, "Padding": SAME, "DepthMultiplier": 1}))
        if dtype == "int8":
            g.dtype = "float32"
            x = g.op("DEQUANTIZE", [x], shape, quant=None)
        y = g.op("MUL", [x, g.spec.add_constant("scale", np.float32([0.7]))], shape, "MulOptions", quant=None,
                 FusedActivationFunction=0)
        y = g.op("ADD", [y, g.spec.add_constant("shift", np.float32([0.2]))], shape, "AddOptions", quant=None,
                 FusedActivationFunction=0)
        if dtype == "int8":
            g.dtype = "int8"
            y = g.op("QUANTIZE", [y], shape)
        return finish(g, y)
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
    **{f"scalar affine {shape} ({where})": {"1x1 DEPTHWISE_CONV_2D": scalar_affine(shape, "depthwise"),
                                             "float chain (the lowering)": scalar_affine(shape, "float chain")}
       for shape, where in (([1, 12, 80, 240], "PP-OCRv4 rec"), ([1, 128, 128, 32], "PP-OCRv4 det"))},
}
