"""Gemm and MatMul -> FULLY_CONNECTED (constant weights) or BATCH_MATMUL (two activations).

FULLY_CONNECTED wants weights [out, in]; alpha/beta and transB are folded into the constants at
convert time. Weights are quantized per output channel, the bias to int32. BATCH_MATMUL reads a
B whose last two dims are swapped in memory with AdjY (XNNPACK takes AdjY, not AdjX), and gets a
symmetric int8 B (XNNPACK's condition for delegating it).

A Gemm whose C is not a per-column constant bias (C computed by another branch, which onnxsim
makes when it fuses MatMul + Add, or a constant [M, N] / [M, 1] table) is FULLY_CONNECTED
without bias, then ADD of beta * C. The product A * B is no ONNX tensor, so calibration has no
range for it: that Gemm is lowered as a float island (its inputs and output stay int8).
transA=1 is a TRANSPOSE of A before FULLY_CONNECTED. A FULLY_CONNECTED that writes a float model
output (a classifier head; not with --int8-io) stays float: the int8 kernel could only write the
output's calibrated grid and would clip logits the calibration set never reached.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization


def _c_input(node) -> str | None:
    return node.input[2] if len(node.input) > 2 and node.input[2] else None


def _bias_vector(ctx: Lowering, node) -> np.ndarray | None:
    """beta * C as FULLY_CONNECTED's per-column bias, or None when C is not constant per column."""
    name = _c_input(node)
    columns = ctx.dim(node.output[0], 1)
    if name is None:
        return np.zeros(columns, np.float32)
    bias = ctx.constant(name)
    if bias is None or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1) or bias.size not in (1, columns):
        return None
    return np.broadcast_to(np.asarray(bias, np.float32).ravel(), (columns,)) * float(node_attrs(node).get("beta", 1.0))


def check_gemm(ctx: Lowering, node) -> str | None:
    attrs = node_attrs(node)
    if ctx.constant(node.input[1]) is None:
        return "B must be a constant initializer"
    name = _c_input(node)
    if name is not None and ctx.constant(name) is None and float(attrs.get("beta", 1.0)) != 1.0:
        return f"beta={attrs['beta']} with a computed C is not supported; scale C before the Gemm"
    return None


def _float_output_head(ctx: Lowering, node) -> bool:
    """A FULLY_CONNECTED that writes a float graph output (no --int8-io) stays float: the int8
    kernel can only write the calibrated int8 grid, which clips every logit beyond the range the
    calibration set reached, and a head of in x out weights is cheap in float."""
    return node.output[0] in ctx.graph_outputs and not ctx.int8_io


def _gemm_int8(ctx: Lowering, node) -> bool:
    return _bias_vector(ctx, node) is not None and not _float_output_head(ctx, node)


@register("Gemm", check=check_gemm, int8=_gemm_int8, int16=_gemm_int8)
def lower_gemm(ctx: Lowering, node) -> None:
    attrs = node_attrs(node)
    weights = np.asarray(ctx.constant(node.input[1]), np.float32) * float(attrs.get("alpha", 1.0))
    weights = weights if attrs.get("transB", 0) else weights.T
    x = _gemm_a(ctx, node)
    bias = _bias_vector(ctx, node)
    if bias is not None:
        _fully_connected(ctx, node, weights, bias, x)
        return
    _fully_connected_plus(ctx, node, weights, _c_input(node), float(attrs.get("beta", 1.0)), x)


def _gemm_a(ctx: Lowering, node) -> int:
    """A as [M, K]: transA=1 is a TRANSPOSE (it keeps the int8 parameters)."""
    dtype = ctx.node_dtype(node)
    x = ctx.get(node.input[0], dtype, identity(2))
    if not node_attrs(node).get("transA", 0):
        return x
    source = ctx.tensor(x)
    transposed = ctx.temp(f"{node.name};a_t", list(source.shape)[::-1], dtype, source.quantization)
    ctx.emit("TRANSPOSE", [x, ctx.int32_constant(f"{node.name};a_perm", [1, 0])], [transposed], node)
    return transposed


def _fully_connected_plus(ctx: Lowering, node, weights: np.ndarray, c_name: str, beta: float, x: int) -> None:
    """FULLY_CONNECTED (no bias) into a temporary, then ADD of beta * C with ONNX broadcasting."""
    dtype = ctx.node_dtype(node)
    shape = ctx.shape(node.output[0])
    product = ctx.temp(f"{node.name};product", shape, dtype)
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 0, np.zeros(weights.shape[0], np.float32),
                                                   x, dtype)
    ctx.emit("FULLY_CONNECTED", [x, filter_index, bias_index], [product], node, "FullyConnectedOptions",
             FusedActivationFunction=0, KeepNumDims=False)
    if ctx.constant(c_name) is not None:
        addend = ctx.add_weight_constant(f"{node.name};c", _padded(ctx.constant(c_name), 2) * beta, dtype)
    else:
        addend = ctx.broadcast_input(c_name, dtype, identity(2), 2)
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, identity(2))
    ctx.emit("ADD", [product, addend], [out], node, "AddOptions", FusedActivationFunction=activation)


def _padded(value, rank: int) -> np.ndarray:
    value = np.asarray(value, np.float32)
    return value.reshape((1,) * (rank - value.ndim) + value.shape)


def _fully_connected(ctx: Lowering, node, weights: np.ndarray, bias: np.ndarray, x: int | None = None) -> None:
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.input[0])
    x = ctx.get(node.input[0], dtype, identity(rank)) if x is None else x
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, identity(ctx.rank(node.output[0])))
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 0, bias, x, dtype)
    ctx.emit("FULLY_CONNECTED", [x, filter_index, bias_index], [out], node, "FullyConnectedOptions",
             FusedActivationFunction=activation, KeepNumDims=rank > 2)


def check_matmul(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.input[0]) < 2 or ctx.rank(node.input[1]) < 2:
        return "1-D MatMul operands are not supported; reshape to 2-D"
    return None


def _constant_2d_weights(ctx: Lowering, node) -> bool:
    weights = ctx.constant(node.input[1])
    return weights is not None and weights.ndim == 2


def _matmul_int8(ctx: Lowering, node) -> bool:
    """A constant B with batch dims is BATCH_MATMUL with a constant operand: float (int8
    BATCH_MATMUL would need one activation-style scale for all its weights)."""
    if ctx.constant(node.input[1]) is None:
        return True
    return _constant_2d_weights(ctx, node) and not _float_output_head(ctx, node)


@register("MatMul", check=check_matmul, int8=_matmul_int8, int16=_matmul_int8)
def lower_matmul(ctx: Lowering, node) -> None:
    weights = ctx.constant(node.input[1])
    if _constant_2d_weights(ctx, node):
        weights = np.asarray(weights, np.float32).T
        _fully_connected(ctx, node, weights, np.zeros(weights.shape[0], np.float32))
        return
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.output[0])
    a = ctx.get(node.input[0], dtype, identity(ctx.rank(node.input[0])))
    b_rank = ctx.rank(node.input[1])
    swapped = identity(b_rank)[:-2] + (b_rank - 1, b_rank - 2)
    adj_y = _reads_b_transposed(ctx, node.input[1], dtype, swapped)
    b = ctx.get(node.input[1], dtype, swapped if adj_y else identity(b_rank))
    if dtype == "int8":
        b = ctx.requantized(b, symmetric(ctx.tensor(b).quantization), node.input[1])
    out = ctx.new_value(node.output[0], dtype, identity(rank))
    ctx.emit("BATCH_MATMUL", [a, b], [out], node, "BatchMatMulOptions", AdjX=False, AdjY=adj_y)


def _reads_b_transposed(ctx: Lowering, name: str, dtype: str, swapped: tuple[int, ...]) -> bool:
    """BATCH_MATMUL reads B stored [N, K] (AdjY) when B^T is already in memory (k of attention:
    no TRANSPOSE), and in int8 also when B must be transposed anyway (a pending layout, v of
    attention after a head-splitting Transpose): the one TRANSPOSE then writes B^T instead of B.
    XNNPACK packs an activation B on every call, and its int8 packer is vectorised for [N, K]
    but a scalar loop for [K, N] (x86 VNNI and ARM dot-product alike); fp32 packs [K, N] as fast
    or faster, so the float model keeps B in ONNX order."""
    layout = ctx.layout(name)
    if layout == swapped:
        return True
    reps = ctx.values.get(name) or []
    pending = bool(reps) and all(ctx.moves_data(value, identity(len(layout))) for value in reps)
    return dtype == "int8" and pending


def symmetric(quant: Quantization) -> Quantization:
    """Zero point 0 over the same range: XNNPACK takes an int8 BATCH_MATMUL only when its second
    input is symmetric (else the builtin kernel runs it, splitting the delegated graph)."""
    scale, zero_point = quant.as_pair()
    if zero_point == 0:
        return quant
    return Quantization.per_tensor(scale * max(128 + zero_point, 127 - zero_point) / 127, 0)
