"""Sin, Cos -> SIN / COS; Atan as a float chain of ops XNNPACK delegates.

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


@register("Atan", int8=False)
def lower_atan(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    one = steps.constant(1.0)
    t = steps.op("MAXIMUM", [steps.op("MINIMUM", [steps.x, steps.constant(ATAN_CLAMP)]), steps.constant(-ATAN_CLAMP)])
    for _ in range(2):  # t / (1 + sqrt(1 + t^2)): halves the angle
        root = steps.op("SQRT", [steps.add(steps.mul(t, t), one)])
        t = steps.op("DIV", [t, steps.add(root, one)], None, "DivOptions", FusedActivationFunction=0)
    square = steps.mul(t, t)
    # Horner in t^2: t * (1 - t^2 / 3 + t^4 / 5 - ...), times 4 for the two halvings
    coefficients = [4.0 * (-1) ** k / (2 * k + 1) for k in range(TAYLOR_TERMS)]
    series = steps.constant(coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        series = steps.add(steps.mul(square, series), steps.constant(coefficient))
    steps.mul(t, series, out=steps.output())
