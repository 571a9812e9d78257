"""ReduceMean / ReduceMax / ReduceMin / ReduceSum -> MEAN / REDUCE_MAX / REDUCE_MIN / SUM, and
ReduceSumSquare -> MUL then SUM (a float island in int8 models: the squares of a centred tensor,
tf2onnx's layer-norm variance, span orders of magnitude that one int8 grid cannot hold), ReduceL2
-> MUL, SUM, SQRT and ReduceL1 -> ABS, SUM (float islands for the same reason).

Axes come from the attribute (before opset 18; ReduceSum before 13) or a constant input, and map
to TFLite dims through the input's layout (`perm.index(axis)`), so a channel mean on an NHWC tensor
needs no transpose. With keepdims=0 the output keeps the surviving dims in their TFLite order and
its layout is renumbered to the ONNX output's axes. Kernel rules:
- int8 MEAN requantizes to the output's calibrated range; int8 REDUCE_MAX / REDUCE_MIN only
  compare integers, so their output keeps the input's quantization. int8 SUM's reference and
  optimized kernels disagree, so an int8 ReduceSum is MEAN then MUL by the element count.
- The reducer options table (keep_dims) is required by the kernels.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import QUANTIZED, Lowering, identity, node_attrs, permute
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization

OPCODES = {"ReduceMean": "MEAN", "ReduceMax": "REDUCE_MAX", "ReduceMin": "REDUCE_MIN", "ReduceSum": "SUM"}
KEEPS_QUANT = {"ReduceMax", "ReduceMin"}


def reduce_axes(ctx: Lowering, node) -> list[int] | None:
    """Sorted ONNX axes reduced by `node` (all for none given), [] for a no-op, None if not constant."""
    rank = ctx.rank(node.input[0])
    attrs = node_attrs(node)
    if "axes" in attrs:
        axes = attrs["axes"]
    elif len(node.input) > 1 and node.input[1]:
        axes = ctx.constant(node.input[1])
        if axes is None:
            return None
        axes = np.asarray(axes).ravel().tolist()
    else:
        axes = []
    if not axes or rank == 0:  # a scalar has nothing to reduce
        return [] if attrs.get("noop_with_empty_axes", 0) or rank == 0 else list(range(rank))
    return sorted({int(a) % rank for a in axes})


def check_reduce(ctx: Lowering, node) -> str | None:
    if reduce_axes(ctx, node) is None:
        return "axes must be a constant"
    if ctx.rank(node.input[0]) > 4:
        return "more than 4 dimensions"
    return None


def squeezed_view(ctx: Lowering, node) -> tuple[list[int], list[int]] | None:
    """(shape without its size-1 dims, reduced axes in it) of an input of rank > 4 that has at
    most 4 dims other than 1 and reduces at least one of them, else None."""
    shape, axes = ctx.shape(node.input[0]), reduce_axes(ctx, node)
    kept = [a for a, d in enumerate(shape) if d != 1]
    if axes is None or len(kept) > 4 or not any(a in kept for a in axes):
        return None
    return [shape[a] for a in kept], [kept.index(a) for a in axes if a in kept]


def check_plain_reduce(ctx: Lowering, node) -> str | None:
    """A rank-5/6 input whose other dims are 1 (trueocr's [1, 4, 16, 24, 64] attention pooling)
    reduces on its squeezed 4-D view."""
    if reduce_axes(ctx, node) is None:
        return "axes must be a constant"
    if ctx.rank(node.input[0]) > 4 and squeezed_view(ctx, node) is None:
        return "more than 4 dimensions other than 1"
    return None


@register("ReduceSumSquare", check=check_reduce, int8=False)
def lower_reduce_sum_square(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    squared = ctx.temp(f"{node.name};squared", ctx.tensor(x).shape, "float32")
    ctx.emit("MUL", [x, x], [squared], node, "MulOptions", FusedActivationFunction=0)
    lower_reduce(ctx, node, (squared, perm))


def check_norm(ctx: Lowering, node) -> str | None:
    if reduce_axes(ctx, node) == [] and ctx.rank(node.input[0]):
        return "noop_with_empty_axes with no axes (the input unchanged, not a norm)"
    return check_reduce(ctx, node)


@register("ReduceL2", "ReduceL1", check=check_norm, int8=False)
def lower_reduce_norm(ctx: Lowering, node) -> None:
    """sqrt(sum(x^2)) (F.normalize's norm in embedding heads) and sum(|x|): float islands like
    ReduceSumSquare, MUL or ABS -> SUM (-> SQRT), which XNNPACK runs in float."""
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    terms = ctx.temp(f"{node.name};terms", ctx.tensor(x).shape, "float32")
    if node.op_type == "ReduceL2":
        ctx.emit("MUL", [x, x], [terms], node, "MulOptions", FusedActivationFunction=0)
    else:
        ctx.emit("ABS", [x], [terms], node)
    axes = reduce_axes(ctx, node)
    keepdims = bool(node_attrs(node).get("keepdims", 1))
    kept = [a for a in range(len(perm)) if a not in axes]
    out_perm = perm if keepdims else tuple(kept.index(p) for p in perm if p not in axes)
    tflite_axes = ctx.int32_constant(f"{node.name};axes", sorted(perm.index(a) for a in axes))
    if node.op_type == "ReduceL1":
        out = ctx.new_value(node.output[0], "float32", out_perm)
        ctx.emit("SUM", [terms, tflite_axes], [out], node, "ReducerOptions", KeepDims=keepdims)
        return
    summed = ctx.temp(f"{node.name};sum", permute(ctx.shape(node.output[0]), out_perm), "float32")
    ctx.emit("SUM", [terms, tflite_axes], [summed], node, "ReducerOptions", KeepDims=keepdims)
    ctx.emit("SQRT", [summed], [ctx.new_value(node.output[0], "float32", out_perm)], node)


@register(*OPCODES, check=check_plain_reduce, int16=lambda ctx, node: node.op_type in ("ReduceMean", "ReduceMax"))
def lower_reduce(ctx: Lowering, node, source: tuple[int, tuple[int, ...]] | None = None) -> None:
    """`source`: (tensor, layout) already computed from the input (ReduceSumSquare's squares)."""
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    if source is None and ctx.rank(name) > 4:
        _reduce_squeezed(ctx, node, dtype)
        return
    perm = source[1] if source else ctx.layout(name)
    x = source[0] if source else ctx.get(name, dtype, perm)
    axes = reduce_axes(ctx, node)
    quant = ctx.tensor(x).quantization if node.op_type in KEEPS_QUANT else None
    if not axes:  # noop_with_empty_axes: the input unchanged
        out = ctx.new_value(node.output[0], dtype, perm, ctx.tensor(x).quantization)
        ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};shape", ctx.tensor(x).shape)], [out], node)
        return
    keepdims = bool(node_attrs(node).get("keepdims", 1))
    kept = [a for a in range(len(perm)) if a not in axes]
    out_perm = perm if keepdims else tuple(kept.index(p) for p in perm if p not in axes)
    out = ctx.new_value(node.output[0], dtype, out_perm, quant)
    tflite_axes = ctx.int32_constant(f"{node.name};axes", sorted(perm.index(a) for a in axes))
    if node.op_type == "ReduceSum" and dtype == "int8":
        _int8_sum(ctx, node, x, tflite_axes, out, keepdims, axes)
        return
    opcode = OPCODES.get(node.op_type, "SUM")
    ctx.emit(opcode, [x, tflite_axes], [out], node, "ReducerOptions", KeepDims=keepdims)


def _reduce_squeezed(ctx: Lowering, node, dtype: str) -> None:
    """RESHAPE to the view without size-1 dims, reduce it (keepdims off), RESHAPE to the ONNX
    output's shape; every tensor in ONNX order, the reduced ones on the output's grid."""
    shape, axes = squeezed_view(ctx, node)
    x = ctx.get(node.input[0], dtype, identity(ctx.rank(node.input[0])))
    quant = ctx.tensor(x).quantization if dtype in QUANTIZED else None
    view = ctx.temp(f"{node.name};squeezed", shape, dtype, quant)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};squeezed_shape", shape)], [view], node)
    out = ctx.new_value(node.output[0], dtype, identity(ctx.rank(node.output[0])),
                        quant if node.op_type in KEEPS_QUANT else None)
    out_quant = ctx.tensor(out).quantization if dtype in QUANTIZED else None
    reduced_shape = [d for a, d in enumerate(shape) if a not in axes]
    reduced = ctx.temp(f"{node.name};reduced", reduced_shape, dtype, out_quant)
    tflite_axes = ctx.int32_constant(f"{node.name};axes", axes)
    if node.op_type == "ReduceSum" and dtype == "int8":
        _int8_sum(ctx, node, view, tflite_axes, reduced, False, [a for a in reduce_axes(ctx, node)])
    else:
        ctx.emit(OPCODES[node.op_type], [view, tflite_axes], [reduced], node, "ReducerOptions", KeepDims=False)
    ctx.emit("RESHAPE", [reduced, ctx.int32_constant(f"{node.name};out_shape", ctx.shape(node.output[0]))], [out], node)


def _int8_sum(ctx: Lowering, node, x: int, tflite_axes: int, out: int, keepdims: bool, axes) -> None:
    """sum = MEAN * count: the int8 SUM kernels disagree (BUILTIN_REF off by >100 steps against
    the optimized kernel, measured), MEAN does not. The mean is kept on the output's grid / count,
    and the count is exact in int8 (the top of its own [0, count] range)."""
    count = int(np.prod([ctx.shape(node.input[0])[a] for a in axes]))
    scale, zero_point = ctx.tensor(out).quantization.as_pair()
    mean = ctx.temp(f"{node.name};mean", ctx.tensor(out).shape, "int8",
                    Quantization.per_tensor(scale / count, zero_point))
    ctx.emit("MEAN", [x, tflite_axes], [mean], node, "ReducerOptions", KeepDims=keepdims)
    ctx.emit("MUL", [mean, ctx.add_weight_constant(f"{node.name};count", np.float32(count), "int8")], [out], node,
             "MulOptions", FusedActivationFunction=0)
