"""ArgMax / ArgMin -> ARG_MAX / ARG_MIN, TopK -> TOPK_V2: the post-processing models ship in-graph.

Why: classifiers and segmenters are often exported with their argmax (a label, a class map) or
top-k as outputs, and the user's app reads those integers. int8 values are ordered as the floats
they stand for (the scale is positive), so the int8 kernels pick the same index, except where
quantization makes two close values equal (ARG_MAX then takes the first, as ONNX does by default).
TOPK_V2's values share the input's quantization (same_quant). Indices are int32 inside; an ONNX
int64 output gets ARG_MAX's int64 output type directly, or one CAST (TopK). XNNPACK delegates none
of these: they run on the builtin kernels, at the end of the graph where models put them.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register

_INT64 = 4  # tflite.TensorType.INT64
_INT32 = 2  # tflite.TensorType.INT32


def _wants_int64(ctx: Lowering, name: str) -> bool:
    """A graph output the ONNX model declares int64 (what the app reads); int32 inside the graph."""
    return any(o.name == name and o.type.tensor_type.elem_type == onnx.TensorProto.INT64
               for o in ctx.model.graph.output)


def check_arg(ctx: Lowering, node) -> str | None:
    if int(node_attrs(node).get("select_last_index", 0)):
        return "select_last_index=1 (TFLite's ARG_MAX / ARG_MIN return the first of equal values)"
    return None


def _lower_arg(ctx: Lowering, node, opcode: str) -> None:
    dtype = ctx.node_dtype(node)
    attrs = node_attrs(node)
    name = node.input[0]
    rank = ctx.rank(name)
    axis = int(attrs.get("axis", 0)) % rank
    keepdims = bool(int(attrs.get("keepdims", 1)))
    x = ctx.get(name, dtype)
    perm = ctx.layout(name)
    out_dtype = "int64" if _wants_int64(ctx, node.output[0]) else "int32"
    reduced_perm = tuple(p - (p > axis) for p in perm if p != axis)
    reduced_shape = [d for p, d in zip(perm, ctx.tensor(x).shape) if p != axis]
    if keepdims:
        out = ctx.new_value(node.output[0], out_dtype, perm)
        target = ctx.temp(f"{node.name};reduced", reduced_shape, out_dtype)
    else:
        out = target = ctx.new_value(node.output[0], out_dtype, reduced_perm)
    ctx.emit(opcode, [x, ctx.int32_constant(f"{node.name};axis", np.int32(perm.index(axis)))], [target], node,
             "ArgMaxOptions" if opcode == "ARG_MAX" else "ArgMinOptions",
             OutputType=_INT64 if out_dtype == "int64" else _INT32)
    if target != out:  # keepdims: the reduced axis comes back as size 1
        ctx.emit("RESHAPE", [target, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)


@register("ArgMax", check=check_arg)
def lower_argmax(ctx: Lowering, node) -> None:
    _lower_arg(ctx, node, "ARG_MAX")


@register("ArgMin", check=check_arg)
def lower_argmin(ctx: Lowering, node) -> None:
    _lower_arg(ctx, node, "ARG_MIN")


def _topk_axis(ctx: Lowering, node) -> int:
    rank = ctx.rank(node.input[0])
    return int(node_attrs(node).get("axis", -1)) % rank


def check_topk(ctx: Lowering, node) -> str | None:
    attrs = node_attrs(node)
    if "k" not in attrs and ctx.constant(node.input[1]) is None:
        return "k must be a constant"
    if not int(attrs.get("largest", 1)):
        return "largest=0 (TFLite's TOPK_V2 returns the largest values only)"
    if _topk_axis(ctx, node) != ctx.rank(node.input[0]) - 1:
        return "only the last axis (TFLite's TOPK_V2 works along the innermost dimension)"
    return None


@register("TopK", check=check_topk)
def lower_topk(ctx: Lowering, node) -> None:
    """Sorted top-k along the last axis (ONNX `sorted=0` allows any order, so sorted is correct)."""
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    rank = ctx.rank(name)
    attrs = node_attrs(node)
    k = int(attrs["k"]) if "k" in attrs else int(np.asarray(ctx.constant(node.input[1])).reshape(-1)[0])
    x = ctx.get(name, dtype, identity(rank))
    values, indices = node.output[0], node.output[1] if len(node.output) > 1 else ""
    values_out = ctx.new_value(values, dtype, identity(rank), ctx.tensor(x).quantization) if values else \
        ctx.temp(f"{node.name};values", ctx.shape(node.output[0]), dtype, ctx.tensor(x).quantization)
    index_shape = [*ctx.tensor(x).shape[:-1], k]
    int64_out = bool(indices) and _wants_int64(ctx, indices)
    index_out = ctx.new_value(indices, "int32", identity(rank)) if indices and not int64_out else \
        ctx.temp(f"{node.name};indices", index_shape, "int32")
    ctx.emit("TOPK_V2", [x, ctx.int32_constant(f"{node.name};k", np.int32(k))], [values_out, index_out], node)
    if int64_out:
        ctx.emit("CAST", [index_out], [ctx.new_value(indices, "int64", identity(rank))], node)
