"""Cast (float <-> int32) and OneHot -> CAST and ONE_HOT: models whose input is a sequence of
integer tokens carried as floats (Magika's byte classifier, from tf2onnx: Cast, OneHot, then a
dense layer).

The Cast runs in float32 (a float island in int8 models: a token id is an integer, never a
point on an activation grid), writing an int32 tensor that only integer readers take. ONE_HOT
writes int8 directly in int8 models: its on / off values are quantized constants on the output's
calibrated grid (0 and 1 are exact on [0, 1]). Neither kernel is delegated by XNNPACK.
TFLite's ONE_HOT leaves an index outside [0, depth) all off; ONNX counts a negative index from the
end, so negative indices are refused at conversion only when they are constants (a computed
index is assumed non-negative, as token ids are).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register

INTEGER_TYPES = {onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int32"}


def _cast_target(node) -> int:
    return int(node_attrs(node).get("to", 0))


def check_cast(ctx: Lowering, node) -> str | None:
    if _cast_target(node) not in INTEGER_TYPES and _cast_target(node) != onnx.TensorProto.FLOAT:
        target = onnx.TensorProto.DataType.Name(_cast_target(node))
        return f"cast to {target}: only float32 <-> int32/int64 is supported"
    return None


@register("Cast", check=check_cast, int8=False)
def lower_cast(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    to_integer = _cast_target(node) in INTEGER_TYPES
    source_dtype = "float32" if to_integer else "int32"
    x = ctx.get(node.input[0], source_dtype, perm)
    out = ctx.new_value(node.output[0], "int32" if to_integer else "float32", perm)
    ctx.emit("CAST", [x], [out], node)


def check_one_hot(ctx: Lowering, node) -> str | None:
    depth, values = ctx.constant(node.input[1]), ctx.constant(node.input[2])
    if depth is None or values is None or values.size != 2:
        return "depth and values must be constants"
    indices = ctx.constant(node.input[0])
    if indices is not None and np.any(indices < 0):
        return "negative indices (ONNX counts them from the end; TFLite leaves them all off)"
    return None


@register("OneHot", check=check_one_hot)
def lower_one_hot(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.output[0])
    axis = int(node_attrs(node).get("axis", -1)) % rank
    indices = ctx.get(node.input[0], "int32", identity(rank - 1))
    out = ctx.new_value(node.output[0], dtype, identity(rank))
    quant = ctx.tensor(out).quantization
    off, on = (np.float32(v) for v in np.asarray(ctx.constant(node.input[2])).reshape(-1))
    depth_value = int(np.asarray(ctx.constant(node.input[1])).reshape(-1)[0])
    depth = ctx.int32_constant(f"{node.name};depth", np.int32(depth_value))
    on_index, off_index = (ctx.quantized_constant(f"{node.name};{tag}", value, quant, dtype)
                           for tag, value in (("on", on), ("off", off)))
    ctx.emit("ONE_HOT", [indices, depth, on_index, off_index], [out], node, "OneHotOptions", Axis=axis)
