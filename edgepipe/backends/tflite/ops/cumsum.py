"""CumSum as a constant 0/1 weight matrix: FULLY_CONNECTED or a zero PAD + DEPTHWISE_CONV_2D.

TFLite's CUMSUM kernel has no int8 form and XNNPACK does not delegate it, so a model with a
running sum (positional indices, a detector's post-processing) would leave the delegated graph.
A running sum over an axis of static length L is a linear map with 0/1 weights, which both
delegated weighted kernels express exactly (float; in int8 the weights 1 are exact on the
per-channel grid, and the output requantizes to its calibrated range like any FC):
- axis innermost in the TFLite layout (or with only size-1 dims after it): the [outer, L] view
  times an L x L triangular matrix (FULLY_CONNECTED);
- otherwise the [1, outer, L, inner] view: PAD L - 1 zeros before (after, for `reverse`) the axis,
  then a depthwise [1, L] window of ones over it, one channel per inner element.
`exclusive` zeroes the diagonal (the window's own tap). The work is L per element either way,
so very long axes are refused rather than built into a huge matrix. An integer CumSum (RoBERTa's
position ids: the running count of non-pad tokens) is LiteRT's int32 CUMSUM, next to the other
mask ops that run on builtin kernels before the delegated encoder (ops/logical.py).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering, node_attrs
from edgepipe.backends.tflite.ops import register

MAX_LENGTH = 2048  # L x L weights (4 MiB in int8) and L multiply-adds per element


def _axis(ctx: Lowering, node) -> int | None:
    value = ctx.constant(node.input[1]) if len(node.input) > 1 else None
    if value is None or value.size != 1:
        return None
    return int(value.reshape(-1)[0]) % ctx.rank(node.input[0])


def check_cumsum(ctx: Lowering, node) -> str | None:
    if ctx.constant(node.input[0]) is not None:
        return "the summed tensor is a constant; constant-fold the model (onnxsim) first"
    axis = _axis(ctx, node)
    if axis is None:
        return "axis must be a constant scalar"
    length = ctx.shape(node.input[0])[axis]
    if length > MAX_LENGTH and ctx.onnx_kind(node.output[0]) == "float32":
        return f"an axis of {length} elements; the running-sum matrix form is limited to {MAX_LENGTH}"
    return None


def _taps(length: int, exclusive: bool, reverse: bool) -> np.ndarray:
    """[out, in] 0/1 matrix: out[i] sums in[j] for j <= i (j >= i reversed), j != i if exclusive."""
    rows, cols = np.indices((length, length))
    keep = cols >= rows if reverse else cols <= rows
    if exclusive:
        keep &= cols != rows
    return keep.astype(np.float32)


@register("CumSum", check=check_cumsum)
def lower_cumsum(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    attrs = node_attrs(node)
    exclusive, reverse = bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))
    shape = list(ctx.tensor(x).shape)
    axis = perm.index(_axis(ctx, node))
    outer, length, inner = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    quant = ctx.tensor(out).quantization
    if dtype == "int32":  # position ids from a token mask: exact integer sums, before the encoder
        ctx.emit("CUMSUM", [x, ctx.int32_constant(f"{node.name};axis", axis)], [out], node, "CumsumOptions",
                 Exclusive=exclusive, Reverse=reverse)
        return
    if inner == 1:
        view = _reshaped(ctx, node, x, [outer, length], "rows")
        summed = out if len(shape) == 2 else ctx.temp(f"{node.name};rows_summed", [outer, length], dtype, quant)
        filter_index, bias_index = ctx.filter_and_bias(node.name, _taps(length, exclusive, reverse), 0,
                                                       np.zeros(length, np.float32), view, dtype)
        ctx.emit("FULLY_CONNECTED", [view, filter_index, bias_index], [summed], node, "FullyConnectedOptions",
                 FusedActivationFunction=0, KeepNumDims=False)
    else:
        view = _reshaped(ctx, node, x, [1, outer, length, inner], "window")
        source = ctx.tensor(view)
        padded = ctx.temp(f"{node.name};padded", [1, outer, 2 * length - 1, inner], dtype, source.quantization)
        before, after = (0, length - 1) if reverse else (length - 1, 0)
        paddings = ctx.int32_constant(f"{node.name};paddings", [[0, 0], [0, 0], [before, after], [0, 0]])
        ctx.emit("PAD", [view, paddings], [padded], node)
        taps = np.ones(length, np.float32)
        if exclusive:
            taps[0 if reverse else -1] = 0.0  # the window's tap on its own position
        weights = np.broadcast_to(taps[None, None, :, None], (1, 1, length, inner)).copy()
        filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 3, np.zeros(inner, np.float32), padded,
                                                       dtype)
        summed = ctx.temp(f"{node.name};window_summed", [1, outer, length, inner], dtype, quant)
        ctx.emit("DEPTHWISE_CONV_2D", [padded, filter_index, bias_index], [summed], node, "DepthwiseConv2DOptions",
                 Padding=1, StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, DepthMultiplier=1,
                 FusedActivationFunction=0)
    if summed != out:
        ctx.emit("RESHAPE", [summed, ctx.int32_constant(f"{node.name};shape", shape)], [out], node)


def _reshaped(ctx: Lowering, node, x: int, shape: list[int], label: str) -> int:
    source = ctx.tensor(x)
    if list(source.shape) == shape:
        return x
    view = ctx.temp(f"{node.name};{label}", shape, source.dtype, source.quantization)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};{label}_shape", shape)], [view], node)
    return view
