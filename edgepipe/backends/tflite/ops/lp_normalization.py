"""LpNormalization (p = 2) -> x * RSQRT(MEAN(x * x)) / sqrt(n), a float island in int8 models.

Why: embedding models end in an L2 normalization (`x / torch.norm(x, dim=1, keepdim=True)`,
`F.normalize`: speaker encoders such as Resemblyzer's, face and text embedders); torch exports it
as ReduceL2 + Div, which onnxsim fuses into one LpNormalization. The sum of squares is a MEAN
times n (XNNPACK delegates MEAN, RSQRT and MUL in float, not SUM or DIV), and its range spans the
squares of the input's range: float, like every normalization's statistics (float_statistics.py).
TFLite's L2_NORMALIZATION covers the last axis only and is not delegated. p = 1 is refused by name.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering, node_attrs
from edgepipe.backends.tflite.ops import register


def check_lp_normalization(ctx: Lowering, node) -> str | None:
    attrs = node_attrs(node)
    if int(attrs.get("p", 2)) != 2:
        return f"p={attrs.get('p')}: only the L2 norm (p=2) is lowered"
    if ctx.rank(node.input[0]) > 4:
        return "more than 4 dimensions"
    return None


@register("LpNormalization", check=check_lp_normalization, int8=False)
def lower_lp_normalization(ctx: Lowering, node) -> None:
    rank = ctx.rank(node.input[0])
    axis = int(node_attrs(node).get("axis", -1)) % rank
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    shape = list(ctx.tensor(x).shape)
    tflite_axis = perm.index(axis)
    reduced = [1 if k == tflite_axis else d for k, d in enumerate(shape)]

    def temp(suffix: str, dims) -> int:
        return ctx.temp(f"{node.name};{suffix}", dims, "float32")

    squares, mean, inverse, unscaled = temp("squares", shape), temp("mean", reduced), temp("rsqrt", reduced), temp(
        "unscaled", shape)
    floored = temp("floored", reduced)
    ctx.emit("MUL", [x, x], [squares], node, "MulOptions", FusedActivationFunction=0)
    ctx.emit("MEAN", [squares, ctx.int32_constant(f"{node.name};axes", [tflite_axis])], [mean], node,
             "ReducerOptions", KeepDims=True)
    # an all-zero slice gives 0 in ONNX (x / norm where norm != 0, else 0): the mean is floored at the
    # smallest normal float, so RSQRT stays finite and 0 * it is 0 instead of 0 * inf = NaN
    tiny = ctx.spec.add_constant(f"{node.name};tiny", np.float32(np.finfo(np.float32).tiny))
    ctx.emit("MAXIMUM", [mean, tiny], [floored], node)
    ctx.emit("RSQRT", [floored], [inverse], node)
    ctx.emit("MUL", [x, inverse], [unscaled], node, "MulOptions", FusedActivationFunction=0)
    scale = ctx.spec.add_constant(f"{node.name};1/sqrt(n)", np.float32(1.0 / np.sqrt(shape[tflite_axis])))
    ctx.emit("MUL", [unscaled, scale], [ctx.new_value(node.output[0], "float32", perm)], node, "MulOptions",
             FusedActivationFunction=0)
