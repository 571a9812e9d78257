"""Pooling: MaxPool, AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool -> MEAN.

int8 pooling kernels move integers without requantizing, so their output keeps the input's
quantization. An int8 VALID AveragePool becomes a depthwise conv with 1/(kh*kw) weights, which
XNNPACK delegates (it does not delegate int8 AVERAGE_POOL_2D). GlobalAveragePool uses MEAN over H, W instead, which requantizes to the calibrated
output range (finer steps for the usually narrower averaged values).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.spatial import (SAME, VALID, choose_padding, output_size, pad_nhwc,
                                                  same_pads, spatial_attrs)

POOLS = {"MaxPool": "MAX_POOL_2D", "AveragePool": "AVERAGE_POOL_2D"}


def _plan(ctx: Lowering, node) -> tuple[int, list[int] | None]:
    """(padding mode, explicit pads) for a pooling node."""
    in_hw, kernel, strides, dilations = spatial_attrs(ctx, node)
    padding, pads = choose_padding(node, in_hw, kernel, strides, dilations)
    count_pads = node.op_type == "AveragePool" and node_attrs(node).get("count_include_pad", 0)
    if count_pads and padding == SAME:  # TFLite SAME excludes pads from the average
        return VALID, _onnx_same(in_hw, kernel, strides)
    return padding, pads


def _onnx_same(in_hw, kernel, strides) -> list[int]:
    pairs = [same_pads(in_hw[i], kernel[i], strides[i], 1) for i in range(2)]
    return [pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1]]


def check_pool(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.input[0]) != 4:
        return "only 2-D pooling (4-D NCHW input) is supported"
    if len(node.output) > 1 and node.output[1]:
        return "MaxPool indices output is not supported"
    in_hw, kernel, strides, dilations = spatial_attrs(ctx, node)
    if any(d != 1 for d in dilations):
        return "dilated pooling is not supported"
    padding, pads = _plan(ctx, node)
    if pads and node.op_type == "AveragePool" and not node_attrs(node).get("count_include_pad", 0):
        return "explicit pads that are not SAME with count_include_pad=0 have no TFLite equivalent"
    padded = [in_hw[i] + (pads[i] + pads[i + 2] if pads else 0) for i in range(2)]
    expected = [output_size(padded[i], kernel[i], strides[i], 1, padding) for i in range(2)]
    if expected != ctx.shape(node.output[0])[2:]:
        return f"output size {ctx.shape(node.output[0])[2:]} != TFLite's {expected} (ceil_mode?); use ceil_mode=0"
    return None


@register("MaxPool", "AveragePool", check=check_pool)
def lower_pool(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    _, kernel, strides, _ = spatial_attrs(ctx, node)
    padding, pads = _plan(ctx, node)
    x = ctx.get(node.input[0], dtype, NHWC)
    if pads:
        x = pad_nhwc(ctx, node, x, pads, fill=-np.inf if node.op_type == "MaxPool" else None)
    if node.op_type == "AveragePool" and dtype == "int8" and padding == VALID:
        _average_as_depthwise(ctx, node, x, kernel, strides)
        return
    out = ctx.new_value(node.output[0], dtype, NHWC, ctx.tensor(x).quantization)
    ctx.emit(POOLS[node.op_type], [x], [out], node, "Pool2DOptions", Padding=padding, StrideW=strides[1],
             StrideH=strides[0], FilterWidth=kernel[1], FilterHeight=kernel[0], FusedActivationFunction=0)


def _average_as_depthwise(ctx: Lowering, node, x: int, kernel, strides) -> None:
    """int8 VALID average pooling as a depthwise conv with weights 1/(kh*kw): XNNPACK delegates
    int8 DEPTHWISE_CONV_2D but not int8 AVERAGE_POOL_2D, and the weight is exact in int8."""
    channels = ctx.tensor(x).shape[3]
    weights = np.full((1, kernel[0], kernel[1], channels), 1.0 / (kernel[0] * kernel[1]), np.float32)
    out = ctx.new_value(node.output[0], "int8", NHWC)
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 3, np.zeros(channels, np.float32), x, "int8")
    ctx.emit("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], [out], node, "DepthwiseConv2DOptions",
             Padding=VALID, StrideH=strides[0], StrideW=strides[1], DilationHFactor=1, DilationWFactor=1,
             DepthMultiplier=1, FusedActivationFunction=0)


def check_global(ctx: Lowering, node) -> str | None:
    return None if ctx.rank(node.input[0]) == 4 else "only 4-D NCHW input is supported"


@register("GlobalAveragePool", check=check_global)
def lower_global_average(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    x = ctx.get(node.input[0], dtype, NHWC)
    out = ctx.new_value(node.output[0], dtype, NHWC)
    axes = ctx.int32_constant(f"{node.name};axes", [1, 2])
    ctx.emit("MEAN", [x, axes], [out], node, "ReducerOptions", KeepDims=True)
