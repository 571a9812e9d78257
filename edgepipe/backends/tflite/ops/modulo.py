"""Mod on integers: LiteRT's FLOOR_MOD.

ONNX `Mod` with fmod=0 (the only form ONNX allows on integers unless fmod=1 is asked) takes the
divisor's sign, as Python's `%` and TFLite's FLOOR_MOD do. Exporters write it on index
arithmetic: an end-to-end YOLO head (ultralytics, isbnx) splits TopK's flat indices into box and
class with `Mod` by the class count. It runs in int32 on the builtin kernels, beside the other
index ops. C-style fmod=1 (the dividend's sign) and float Mod have no TFLite builtin and are
refused naming the node.
"""

from __future__ import annotations

from edgepipe.backends.tflite.lower import Lowering, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.elementwise import broadcast_inputs, check_binary


def check_mod(ctx: Lowering, node) -> str | None:
    if ctx.onnx_kind(node.output[0]) != "int32":
        return "float Mod (C fmod) has no TFLite builtin; only integer Mod (FLOOR_MOD) is lowered"
    if node_attrs(node).get("fmod", 0):
        return "fmod=1 (the dividend's sign) on integers has no TFLite builtin; FLOOR_MOD takes the divisor's sign"
    return check_binary(ctx, node)


@register("Mod", check=check_mod, int8=False, since=10)
def lower_mod(ctx: Lowering, node) -> None:
    inputs, perm = broadcast_inputs(ctx, node, "int32")
    ctx.emit("FLOOR_MOD", inputs, [ctx.new_value(node.output[0], "int32", perm)], node)
