"""Pooling: MaxPool, AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool -> MEAN;
GlobalMaxPool -> REDUCE_MAX.

int8 pooling kernels move integers without requantizing, so their output keeps the input's
quantization. An int8 VALID AveragePool becomes a depthwise conv with 1/(kh*kw) weights, which
XNNPACK delegates (it does not delegate int8 AVERAGE_POOL_2D); a SAME one is averaged in float. GlobalAveragePool uses MEAN over
H, W instead, which requantizes to the calibrated output range (finer steps for the usually
narrower averaged values).

ONNX pads and `ceil_mode=1` are both padding: windows that run past the end of the input (ceil
mode) are windows over extra end padding. MaxPool pads with zeros (PAD, which XNNPACK delegates)
where zero is already the lowest value its input holds, else with copies of the edge rows (SLICE +
CONCATENATION, delegated; exact because every pad is shorter than the window), and with the
lowest value (PADV2, not delegated) only where a pad is not. AveragePool
pads with zeros and averages over the full window; where ONNX divides by fewer elements (pads
excluded with count_include_pad=0; with count_include_pad=1 the explicit pads count but the
ceil-mode overhang does not) a MUL by the constant map kh*kw / divisor corrects it. TFLite's own
SAME padding is used instead when it is exactly ONNX's (it excludes pads from the average).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe.backends.tflite.fusion import clip_bounds
from edgepipe.backends.tflite.lower import NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.padding import mirror_by_slices
from edgepipe.backends.tflite.ops.spatial import (SAME, VALID, onnx_pads, output_size, pad_nhwc, same_pads,
                                                spatial_attrs, window_problem)

POOLS = {"MaxPool": "MAX_POOL_2D", "AveragePool": "AVERAGE_POOL_2D"}


@dataclass
class PoolPlan:
    kernel: list[int]
    strides: list[int]
    padding: int  # SAME or VALID
    pads: list[int] | None  # explicit [top, left, bottom, right] (ceil-mode overhang included) or None
    divisors: np.ndarray | None  # AveragePool: [out_h, out_w] element counts where not kh*kw, else None


def _axis_counts(size: int, kernel: int, stride: int, out: int, before: int, after: int,
                 include_pad: bool) -> np.ndarray:
    """Elements ONNX averages over for each window along one axis (ONNX Runtime's rule)."""
    starts = np.arange(out) * stride - before
    ends = starts + kernel
    if include_pad:  # explicit pads count, the ceil-mode overhang past them does not
        return np.minimum(ends, size + after) - np.maximum(starts, -before)
    return np.minimum(ends, size) - np.maximum(starts, 0)


def pool_plan(ctx: Lowering, node) -> PoolPlan:
    in_hw, kernel, strides, dilations = spatial_attrs(ctx, node)
    pads = onnx_pads(node, in_hw, kernel, strides, dilations)
    out_hw = ctx.shape(node.output[0])[2:]
    extra = [max(0, (out_hw[i] - 1) * strides[i] + kernel[i] - (in_hw[i] + pads[i] + pads[i + 2])) for i in range(2)]
    full = [pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]]
    tf_same = [same_pads(in_hw[i], kernel[i], strides[i], 1) for i in range(2)]
    is_tf_same = full == [tf_same[0][0], tf_same[1][0], tf_same[0][1], tf_same[1][1]]
    if node.op_type == "MaxPool" or not any(full):
        if not any(full):
            return PoolPlan(kernel, strides, VALID, None, None)
        if is_tf_same:
            return PoolPlan(kernel, strides, SAME, None, None)
        return PoolPlan(kernel, strides, VALID, full, None)
    include_pad = bool(node_attrs(node).get("count_include_pad", 0))
    if is_tf_same and not include_pad:
        return PoolPlan(kernel, strides, SAME, None, None)
    counts = [_axis_counts(in_hw[i], kernel[i], strides[i], out_hw[i], pads[i], pads[i + 2], include_pad)
              for i in range(2)]
    divisors = np.outer(counts[0], counts[1])
    uniform = bool(np.all(divisors == kernel[0] * kernel[1]))
    return PoolPlan(kernel, strides, VALID, full, None if uniform else divisors)


def onnx_runtime_size(size: int, kernel: int, stride: int, before: int, after: int, ceil_mode: bool) -> int:
    """Output length as ONNX Runtime computes it: with ceil_mode, a last window that would start in
    the end padding is dropped (the rule ONNX shape inference applies from opset 22 only)."""
    span = size + before + after - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def check_pool(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.input[0]) != 4:
        return "only 1-D and 2-D pooling (3-D or 4-D NCHW input) is supported"
    if len(node.output) > 1 and node.output[1]:
        return "MaxPool indices output is not supported"
    if window_problem(node):
        return window_problem(node)
    in_hw, kernel, strides, dilations = spatial_attrs(ctx, node)
    if any(d != 1 for d in dilations):
        return "dilated pooling is not supported"
    pads = onnx_pads(node, in_hw, kernel, strides, dilations)
    ceil_mode = bool(node_attrs(node).get("ceil_mode", 0))
    runtime = [onnx_runtime_size(in_hw[i], kernel[i], strides[i], pads[i], pads[i + 2], ceil_mode) for i in range(2)]
    if runtime != ctx.shape(node.output[0])[2:]:
        return (f"the model declares output size {ctx.shape(node.output[0])[2:]} but ONNX Runtime computes "
                f"{runtime} (ceil_mode window starting in the padding); re-export with opset >= 22")
    plan = pool_plan(ctx, node)
    if plan.divisors is not None and plan.divisors.min() <= 0:
        return "a pooling window lies entirely in the padding"
    padded = [in_hw[i] + (plan.pads[i] + plan.pads[i + 2] if plan.pads else 0) for i in range(2)]
    expected = [output_size(padded[i], kernel[i], strides[i], 1, plan.padding) for i in range(2)]
    if expected != ctx.shape(node.output[0])[2:]:
        return f"output size {ctx.shape(node.output[0])[2:]} != {expected} from the pads and ceil_mode"
    return None


def _int8_average(ctx: Lowering, node) -> bool:
    """An average with border divisors is a float island: in int8 the window mean would be
    rounded before the correction multiplies its error by up to kh*kw. So is a SAME average:
    XNNPACK takes no int8 AVERAGE_POOL_2D but the float one (with the DEQUANTIZE / QUANTIZE around
    it) inside the int8 partition, where the int8 kernel would split the delegated graph."""
    if node.op_type != "AveragePool":
        return True
    plan = pool_plan(ctx, node)
    return plan.divisors is None and plan.padding == VALID


def _int16_pool(ctx: Lowering, node) -> bool:
    """MAX_POOL_2D and AVERAGE_POOL_2D (SAME too: no XNNPACK partition to keep whole) in int16;
    an average with border divisors stays as in int8."""
    return node.op_type == "MaxPool" or pool_plan(ctx, node).divisors is None


@register("MaxPool", "AveragePool", check=check_pool, int8=_int8_average, int16=_int16_pool)
def lower_pool(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    plan = pool_plan(ctx, node)
    x = ctx.get(node.input[0], dtype, NHWC)
    if plan.pads:
        lowest = node.op_type == "MaxPool" and not _zero_is_lowest(ctx, node.input[0], x)
        if lowest and dtype != "int16" and _edge_pad_is_exact(plan):  # int16 has no XNNPACK partition to keep
            x = _edge_padded(ctx, node, x, plan.pads)
        else:
            x = pad_nhwc(ctx, node, x, plan.pads, fill=-np.inf if lowest else None, rows=node.op_type == "MaxPool")
    if plan.divisors is not None:
        _corrected_average(ctx, node, x, plan, dtype)
        return
    if node.op_type == "AveragePool" and dtype == "int8" and plan.padding == VALID:
        out = ctx.new_value(node.output[0], "int8", NHWC)
        _average_as_depthwise(ctx, node, x, out, plan.kernel, plan.strides)
        return
    out = ctx.new_value(node.output[0], dtype, NHWC, ctx.tensor(x).quantization)
    _emit_pool(ctx, node, POOLS[node.op_type], x, out, plan)


def _zero_is_lowest(ctx: Lowering, name: str, x: int) -> bool:
    """Whether zero padding (PAD, which XNNPACK delegates; PADV2 it does not) is the lowest value
    `x` holds, so max pooling over it equals ONNX's -inf padding: an int8 grid that starts at 0
    (zero point -128, e.g. after a Relu), or a float tensor a Relu / Clip(min >= 0) produced."""
    tensor = ctx.tensor(x)
    if tensor.dtype == "int8":
        return int(tensor.quantization.as_pair()[1]) == -128
    producer = next((n for n in ctx.model.graph.node if name in n.output), None)
    if producer is None:
        return False
    if producer.op_type == "Relu":
        return True
    bounds = clip_bounds(ctx, producer) if producer.op_type == "Clip" else None
    return bounds is not None and bounds[0] >= 0.0


def _edge_pad_is_exact(plan: PoolPlan) -> bool:
    """Whether edge padding equals ONNX's -inf padding for max pooling: with every pad (ceil-mode
    overhang included) shorter than the window, each window that reaches into the padding also
    covers the edge row the padding copies, so the copy never changes the window's maximum."""
    top, left, bottom, right = plan.pads
    return max(top, bottom) < plan.kernel[0] and max(left, right) < plan.kernel[1]


def _edge_padded(ctx: Lowering, node, x: int, pads: list[int]) -> int:
    """The NHWC input with its edge rows and columns repeated into the pads: SLICE +
    CONCATENATION, which XNNPACK delegates (PADV2 with the lowest value splits the partition)."""
    source = ctx.tensor(x)
    top, left, bottom, right = pads
    batch, height, width, channels = source.shape
    shape = [batch, height + top + bottom, width + left + right, channels]
    out = ctx.temp(f"{node.name};edge_padded", shape, source.dtype, source.quantization)
    mirror_by_slices(ctx, node, x, np.array([[0, 0], [top, bottom], [left, right], [0, 0]]), "edge", out)
    return out


def _emit_pool(ctx: Lowering, node, opcode: str, x: int, out: int, plan: PoolPlan) -> None:
    ctx.emit(opcode, [x], [out], node, "Pool2DOptions", Padding=plan.padding, StrideW=plan.strides[1],
             StrideH=plan.strides[0], FilterWidth=plan.kernel[1], FilterHeight=plan.kernel[0],
             FusedActivationFunction=0)


def _corrected_average(ctx: Lowering, node, x: int, plan: PoolPlan, dtype: str) -> None:
    """Average over the zero-padded window, then MUL by kh*kw / divisor per output position."""
    out = ctx.new_value(node.output[0], dtype, NHWC)
    window_mean = ctx.temp(f"{node.name};window_mean", ctx.tensor(out).shape, dtype)
    _emit_pool(ctx, node, "AVERAGE_POOL_2D", x, window_mean, plan)
    factors = (plan.kernel[0] * plan.kernel[1] / plan.divisors).astype(np.float32).reshape(1, *plan.divisors.shape, 1)
    factor_index = ctx.spec.add_constant(f"{node.name};divisor_correction", factors)
    ctx.emit("MUL", [window_mean, factor_index], [out], node, "MulOptions", FusedActivationFunction=0)


def _average_as_depthwise(ctx: Lowering, node, x: int, out: int, kernel, strides) -> None:
    """int8 VALID average pooling as a depthwise conv with weights 1/(kh*kw): XNNPACK delegates
    int8 DEPTHWISE_CONV_2D but not int8 AVERAGE_POOL_2D, and the weight is exact in int8."""
    channels = ctx.tensor(x).shape[3]
    weights = np.full((1, kernel[0], kernel[1], channels), 1.0 / (kernel[0] * kernel[1]), np.float32)
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 3, np.zeros(channels, np.float32), x, "int8")
    ctx.emit("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], [out], node, "DepthwiseConv2DOptions",
             Padding=VALID, StrideH=strides[0], StrideW=strides[1], DilationHFactor=1, DilationWFactor=1,
             DepthMultiplier=1, FusedActivationFunction=0)


def check_global(ctx: Lowering, node) -> str | None:
    return None if ctx.rank(node.input[0]) == 4 else "only 4-D NCHW input is supported"


@register("GlobalMaxPool", check=check_global, int16=True)
def lower_global_max(ctx: Lowering, node) -> None:
    """REDUCE_MAX over H, W: it compares integers, so the output keeps the input's quantization."""
    dtype = ctx.node_dtype(node)
    x = ctx.get(node.input[0], dtype, NHWC)
    out = ctx.new_value(node.output[0], dtype, NHWC, ctx.tensor(x).quantization)
    axes = ctx.int32_constant(f"{node.name};axes", [1, 2])
    ctx.emit("REDUCE_MAX", [x, axes], [out], node, "ReducerOptions", KeepDims=True)


@register("GlobalAveragePool", check=check_global, int16=True)
def lower_global_average(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    x = ctx.get(node.input[0], dtype, NHWC)
    out = ctx.new_value(node.output[0], dtype, NHWC)
    axes = ctx.int32_constant(f"{node.name};axes", [1, 2])
    ctx.emit("MEAN", [x, axes], [out], node, "ReducerOptions", KeepDims=True)
