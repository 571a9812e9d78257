"""Comparisons and selection: Equal, Greater, Less, GreaterOrEqual, LessOrEqual -> EQUAL,
GREATER, LESS, GREATER_EQUAL, LESS_EQUAL (bool); Where -> SELECT_V2; Not -> LOGICAL_NOT.

Why: TensorFlow's `div_no_nan` and `tf.where` come through tf2onnx as Equal + Where (Spotify's
Basic Pitch normalizes its log-magnitude CQT as (x - min) / (max - min), 0 where max - min is 0).
The comparisons and the selection run in float32 (float islands in int8 models): a bool is never
a point on an activation grid, and the selected values keep their float range until the next
int8 op. Both sides are compared with ONNX broadcasting in the output's layout
(elementwise.broadcast_inputs). Only float inputs are lowered; integer comparisons (shape
arithmetic) are constant-folded before the backend sees them.
"""

from __future__ import annotations

import onnx

from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.elementwise import broadcast_inputs

COMPARISONS = {"Equal": "EQUAL", "Greater": "GREATER", "Less": "LESS", "GreaterOrEqual": "GREATER_EQUAL",
               "LessOrEqual": "LESS_EQUAL"}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def _float_operands(ctx: Lowering, node, names) -> str | None:
    for name in names:
        if ctx.rank(name) > 6:
            return "more than 6 dimensions"
        info = ctx.infos.get(name) if ctx.constant(name) is None else None
        elem = info.type.tensor_type.elem_type if info is not None else 0
        if elem and elem not in FLOAT_TYPES:
            return f"input '{name}' is {onnx.TensorProto.DataType.Name(elem).lower()}; only float comparisons are lowered"
    return None


def check_compare(ctx: Lowering, node) -> str | None:
    return _float_operands(ctx, node, node.input)


@register(*COMPARISONS, check=check_compare, int8=False)
def lower_compare(ctx: Lowering, node) -> None:
    inputs, perm = broadcast_inputs(ctx, node, "float32")
    ctx.emit(COMPARISONS[node.op_type], inputs, [ctx.new_value(node.output[0], "bool", perm)], node)


def check_where(ctx: Lowering, node) -> str | None:
    return _float_operands(ctx, node, node.input[1:])


@register("Where", check=check_where, int8=False)
def lower_where(ctx: Lowering, node) -> None:
    _, perm = broadcast_inputs(ctx, node, "float32", node.input[1:])
    rank = ctx.rank(node.output[0])
    condition = ctx.broadcast_input(node.input[0], "bool", perm, rank)
    values = [ctx.broadcast_input(name, "float32", perm, rank) for name in node.input[1:]]
    ctx.emit("SELECT_V2", [condition, *values], [ctx.new_value(node.output[0], "float32", perm)], node)


@register("Not", int8=False)
def lower_not(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "bool", perm)
    ctx.emit("LOGICAL_NOT", [x], [ctx.new_value(node.output[0], "bool", perm)], node)
