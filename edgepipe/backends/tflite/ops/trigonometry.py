"""Sin, Cos -> SIN / COS; Tan, Atan, Asin, Acos as float chains of ops XNNPACK delegates.

Rotary position embeddings, Fourier features and angle heads compute these. LiteRT registers SIN
and COS (float only, delegated by XNNPACK) but no ATAN; its ATAN2 kernel is not delegated. All
three run as float islands in int8 models: an int8 sine would need its own table, and the values
are usually few next to the convs around them.

Atan has no kernel at all, so it is computed: two half-angle reductions
atan(x) = 2 atan(x / (1 + sqrt(1 + x^2))) bring any x into |t| < tan(pi / 8), where the odd Taylor
series up to t^15 is within 2e-7 of atan; then atan(x) = 4 atan(t). x is clamped to +-1e18 first
so x^2 stays finite (atan(1e18) is pi / 2 in float32).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.unary import FloatSteps

BUILTIN = {"Sin": "SIN", "Cos": "COS"}
ATAN_CLAMP = 1e18
TAYLOR_TERMS = 8  # t, t^3 / 3, ..., t^15 / 15


@register("Sin", "Cos", int8=False)
def lower_sin_cos(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.op(BUILTIN[node.op_type], [steps.x], steps.output())


def _atan(steps: FloatSteps, x: int, out: int | None = None) -> int:
    one = steps.constant(1.0)
    t = steps.op("MAXIMUM", [steps.op("MINIMUM", [x, steps.constant(ATAN_CLAMP)]), steps.constant(-ATAN_CLAMP)])
    for _ in range(2):  # t / (1 + sqrt(1 + t^2)): halves the angle
        root = steps.op("SQRT", [steps.add(steps.mul(t, t), one)])
        t = steps.op("DIV", [t, steps.add(root, one)], None, "DivOptions", FusedActivationFunction=0)
    square = steps.mul(t, t)
    # Horner in t^2: t * (1 - t^2 / 3 + t^4 / 5 - ...), times 4 for the two halvings
    coefficients = [4.0 * (-1) ** k / (2 * k + 1) for k in range(TAYLOR_TERMS)]
    series = steps.constant(coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        series = steps.add(steps.mul(square, series), steps.constant(coefficient))
    return steps.mul(t, series, out=out)


@register("Atan", int8=False)
def lower_atan(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    _atan(steps, steps.x, steps.output())


@register("Asin", "Acos", int8=False)
def lower_asin_acos(ctx: Lowering, node) -> None:
    """asin(x) = atan(x / sqrt((1 - x)(1 + x))) (+-inf at +-1 gives +-pi / 2; |x| > 1 is NaN, as
    in ONNX), acos(x) = pi / 2 - asin(x)."""
    steps = FloatSteps(ctx, node)
    one = steps.constant(1.0)
    below = steps.op("SUB", [one, steps.x], None, "SubOptions", FusedActivationFunction=0)
    cosine = steps.op("SQRT", [steps.mul(below, steps.add(one, steps.x))])
    ratio = steps.op("DIV", [steps.x, cosine], None, "DivOptions", FusedActivationFunction=0)
    if node.op_type == "Asin":
        _atan(steps, ratio, steps.output())
        return
    steps.op("SUB", [steps.constant(np.pi / 2), _atan(steps, ratio)], steps.output(), "SubOptions",
             FusedActivationFunction=0)


@register("Tan", int8=False)
def lower_tan(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.op("DIV", [steps.op("SIN", [steps.x]), steps.op("COS", [steps.x])], steps.output(), "DivOptions",
             FusedActivationFunction=0)
