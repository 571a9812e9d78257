"""Gemm and MatMul -> FULLY_CONNECTED (constant weights) or BATCH_MATMUL (two activations).

FULLY_CONNECTED wants weights [out, in]; alpha/beta and transB are folded into the constants at
convert time. Weights are quantized per output channel, the bias to int32. BATCH_MATMUL reads a
B whose last two dims are swapped in memory with AdjY (XNNPACK takes AdjY, not AdjX), and gets a
symmetric int8 B (XNNPACK's condition for delegating it).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization


def check_gemm(ctx: Lowering, node) -> str | None:
    attrs = node_attrs(node)
    if attrs.get("transA", 0):
        return "transA=1 is not supported; transpose A before the Gemm"
    if ctx.constant(node.input[1]) is None:
        return "B must be a constant initializer"
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.constant(node.input[2])
        if bias is None:
            return "C must be a constant initializer"
        if bias.size not in (1, ctx.shape(node.output[0])[1]):
            return f"C of shape {list(bias.shape)} is not a per-output-column bias"
    return None


@register("Gemm", check=check_gemm)
def lower_gemm(ctx: Lowering, node) -> None:
    attrs = node_attrs(node)
    weights = np.asarray(ctx.constant(node.input[1]), np.float32) * float(attrs.get("alpha", 1.0))
    weights = weights if attrs.get("transB", 0) else weights.T
    columns = weights.shape[0]
    bias = np.zeros(columns, np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = np.broadcast_to(np.asarray(ctx.constant(node.input[2]), np.float32).ravel(), (columns,)) \
            * float(attrs.get("beta", 1.0))
    _fully_connected(ctx, node, weights, bias)


def _fully_connected(ctx: Lowering, node, weights: np.ndarray, bias: np.ndarray) -> None:
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.input[0])
    x = ctx.get(node.input[0], dtype, identity(rank))
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, identity(ctx.rank(node.output[0])))
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 0, bias, x, dtype)
    ctx.emit("FULLY_CONNECTED", [x, filter_index, bias_index], [out], node, "FullyConnectedOptions",
             FusedActivationFunction=activation, KeepNumDims=rank > 2)


def check_matmul(ctx: Lowering, node) -> str | None:
    weights = ctx.constant(node.input[1])
    if weights is not None and weights.ndim != 2:
        return "a constant B must be 2-D"
    if ctx.rank(node.input[0]) < 2 or ctx.rank(node.input[1]) < 2:
        return "1-D MatMul operands are not supported; reshape to 2-D"
    return None


@register("MatMul", check=check_matmul)
def lower_matmul(ctx: Lowering, node) -> None:
    weights = ctx.constant(node.input[1])
    if weights is not None:
        weights = np.asarray(weights, np.float32).T
        _fully_connected(ctx, node, weights, np.zeros(weights.shape[0], np.float32))
        return
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.output[0])
    a = ctx.get(node.input[0], dtype, identity(ctx.rank(node.input[0])))
    b_rank = ctx.rank(node.input[1])
    swapped = identity(b_rank)[:-2] + (b_rank - 1, b_rank - 2)
    adj_y = ctx.layout(node.input[1]) == swapped  # B^T already in memory (k of attention): no TRANSPOSE
    b = ctx.get(node.input[1], dtype, swapped if adj_y else identity(b_rank))
    if dtype == "int8":
        b = ctx.requantized(b, symmetric(ctx.tensor(b).quantization), node.input[1])
    out = ctx.new_value(node.output[0], dtype, identity(rank))
    ctx.emit("BATCH_MATMUL", [a, b], [out], node, "BatchMatMulOptions", AdjX=False, AdjY=adj_y)


def symmetric(quant: Quantization) -> Quantization:
    """Zero point 0 over the same range: XNNPACK takes an int8 BATCH_MATMUL only when its second
    input is symmetric (else the builtin kernel runs it, splitting the delegated graph)."""
    scale, zero_point = quant.as_pair()
    if zero_point == 0:
        return quant
    return Quantization.per_tensor(scale * max(128 + zero_point, 127 - zero_point) / 127, 0)
