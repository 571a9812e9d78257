"""Comparisons, logical ops, Where and Expand -> EQUAL / NOT_EQUAL / LESS / ..., LOGICAL_NOT /
LOGICAL_AND / LOGICAL_OR (Xor: NOT_EQUAL of the booleans), SELECT_V2, BROADCAST_TO: the
attention-mask path of token models, and a CTC decoder's in-graph "label changed" test (trueocr).

A transformer exported from PyTorch turns its `attention_mask` (int64 0/1 per token) into an
additive mask: Equal(mask, 0) -> Where(-inf or finfo.min, 0) -> Reshape / Expand -> Add to the
attention scores. The comparison and the select run on int32 / bool tensors (lower.py: integer
ONNX tensors are int32 in TFLite); the additive mask itself carries infinities, so calibration
marks it unbounded and it stays float (lower.py `node_dtype`) until the Softmax, which is a float
island anyway. None of these kernels is delegated by XNNPACK: they run once per inference on
[1, T] masks, before the delegated encoder.

Where is a float island in int8 models (a select between an int8 and a float constant would need
the constant on the data's grid, and its common use is the mask). Expand keeps the input's int8
grid (BROADCAST_TO moves values).
"""

from __future__ import annotations

from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.elementwise import broadcast_inputs, output_layout

COMPARISONS = {"Equal": "EQUAL", "Less": "LESS", "LessOrEqual": "LESS_EQUAL", "Greater": "GREATER",
               "GreaterOrEqual": "GREATER_EQUAL"}
LOGICAL = {"And": "LOGICAL_AND", "Or": "LOGICAL_OR", "Xor": "NOT_EQUAL"}  # TFLite has no LOGICAL_XOR: a != b on bools
MAX_RANK = 5  # broadcasting comparison / select kernels take up to 5 dims


def _comparison_dtype(ctx: Lowering, node) -> str:
    """Both operands are compared as int32 when either is an integer tensor, else as float32 (an
    int8 input is dequantized: two int8 grids compare only after a requantization)."""
    kinds = {ctx.onnx_kind(name) for name in node.input}
    return "bool" if kinds == {"bool"} else "int32" if "int32" in kinds else "float32"


def check_broadcasting(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.output[0]) > MAX_RANK:
        return f"more than {MAX_RANK} dimensions"
    return None


def check_comparison(ctx: Lowering, node) -> str | None:
    if node.op_type != "Equal" and _comparison_dtype(ctx, node) == "bool":
        return "ordering booleans is not supported"
    return check_broadcasting(ctx, node)


@register(*COMPARISONS, check=check_comparison, int8=False)
def lower_comparison(ctx: Lowering, node) -> None:
    inputs, perm = broadcast_inputs(ctx, node, _comparison_dtype(ctx, node))
    out = ctx.new_value(node.output[0], "bool", perm)
    ctx.emit(COMPARISONS[node.op_type], inputs, [out], node)


@register(*LOGICAL, check=check_broadcasting, int8=False)
def lower_logical(ctx: Lowering, node) -> None:
    inputs, perm = broadcast_inputs(ctx, node, "bool")
    out = ctx.new_value(node.output[0], "bool", perm)
    ctx.emit(LOGICAL[node.op_type], inputs, [out], node)


@register("Not", int8=False)
def lower_not(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    out = ctx.new_value(node.output[0], "bool", perm)
    ctx.emit("LOGICAL_NOT", [ctx.get(node.input[0], "bool", perm)], [out], node)


@register("Where", check=check_broadcasting, int8=False)
def lower_where(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)  # float32 or int32 (int8 models: a float island)
    perm = output_layout(ctx, node)
    rank = ctx.rank(node.output[0])
    condition = ctx.broadcast_input(node.input[0], "bool", perm, rank)
    values = [ctx.broadcast_input(name, dtype, perm, rank) for name in node.input[1:]]
    out = ctx.new_value(node.output[0], dtype, perm)
    ctx.emit("SELECT_V2", [condition, *values], [out], node)


def check_expand(ctx: Lowering, node) -> str | None:
    if ctx.constant(node.input[1]) is None:
        return "the shape must be a constant"
    return check_broadcasting(ctx, node)


BROADCASTING = {"Add", "Sub", "Mul", "Div", "Where", "Max", "Min", "Pow", *COMPARISONS, *LOGICAL}


def lowered_shape(ctx: Lowering, name: str) -> list[int]:
    """`name`'s shape in ONNX order as the TFLite graph holds it: an Expand already left to its
    readers' broadcasting is its smaller input there (two of them into one Add must not both be)."""
    values = ctx.values.get(name)
    if not values or name in ctx.constants:
        return list(ctx.shape(name))
    value = values[0]
    held = ctx.tensor(value.index).shape
    if len(held) != len(value.perm):
        return list(ctx.shape(name))
    shape = [0] * len(held)
    for dim, axis in zip(held, value.perm):
        shape[axis] = int(dim)
    return shape


def broadcast_by_readers(ctx: Lowering, node) -> bool:
    """Every reader broadcasts on its own and would compute the same shape from the unexpanded
    tensor (the attention mask [1, 1, 1, T] expanded per head, then added to [1, H, T, T])."""
    readers = ctx.consumers.get(node.output[0], [])
    if not readers or node.output[0] in ctx.graph_outputs:
        return False
    source = lowered_shape(ctx, node.input[0])
    for reader in readers:
        if reader.op_type not in BROADCASTING or reader.domain not in ("", "ai.onnx"):
            return False
        shapes = [source if name == node.output[0] else lowered_shape(ctx, name) for name in reader.input if name]
        rank = max(len(shape) for shape in shapes)
        padded = [[1] * (rank - len(shape)) + list(shape) for shape in shapes]
        if [max(dims) for dims in zip(*padded)] != ctx.shape(reader.output[0]):
            return False
    return True


@register("Expand", check=check_expand)
def lower_expand(ctx: Lowering, node) -> None:
    """No op when the readers broadcast anyway (BROADCAST_TO is not delegated: it would split the
    XNNPACK graph); else BROADCAST_TO."""
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.output[0])
    perm = ctx.layout(node.input[0]) if ctx.rank(node.input[0]) == rank else tuple(range(rank))
    x = ctx.broadcast_input(node.input[0], dtype, perm, rank)
    if broadcast_by_readers(ctx, node):
        ctx.alias(node.output[0], x, perm)
        return
    out = ctx.new_value(node.output[0], dtype, perm, ctx.tensor(x).quantization)
    shape = ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)
    ctx.emit("BROADCAST_TO", [x, shape], [out], node)
