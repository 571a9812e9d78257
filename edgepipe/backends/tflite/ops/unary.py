"""Elementwise math: Neg, Abs, Exp, Log, Floor, Ceil, Round, Sign, Reciprocal, Softplus, Mish.

Ceil and Round are written with ops every LiteRT resolver has (its reference kernels have no CEIL
or ROUND) and XNNPACK delegates: Ceil is -floor(-x); Round rounds each sign's magnitude p by
float32 addition itself, (p + 2^23) - 2^23, which rounds halves to even as ONNX Round does (exact for
|x| < 2^47; larger floats are integers whose difference from 2^23 float32 may round).

Sign is x scaled by 2^200 (in two steps: 2^200 is no float32) and clamped to [-1, 1]: every
nonzero float (denormals too, unless the CPU flushes them to zero) reaches +-1, zero stays zero,
NaN stays NaN; LiteRT's SIGN kernel is not delegated.

Exp has an int8 kernel (a lookup table over the input grid). The others run as float islands in
int8 models: they are rare next to the heavy ops, and computing them in float avoids each
kernel's own int8 parameter rules. Softplus is evaluated in its overflow-free form
relu(x) + log(1 + exp(-|x|)) (exp(x) overflows float32 for x > 88), Mish as x * tanh(softplus(x)).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import register

SIMPLE = {"Neg": "NEG", "Abs": "ABS", "Exp": "EXP", "Log": "LOG", "Floor": "FLOOR"}
SIGN_GAIN = 2.0**100  # applied twice
ROUNDING_SHIFT = 2.0**23  # float32 p + 2^23 (0 <= p < 2^23) lies where the spacing is 1: it rounds p


@register("Exp")
def lower_exp(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    ctx.emit("EXP", [x], [ctx.new_value(node.output[0], dtype, perm)], node)


class FloatSteps:
    """Emits a chain of float32 ops on tensors shaped like the node's input."""

    def __init__(self, ctx: Lowering, node):
        self.ctx, self.node = ctx, node
        self.perm = ctx.layout(node.input[0])
        self.x = ctx.get(node.input[0], "float32", self.perm)
        self.shape = ctx.tensor(self.x).shape
        self.count = 0

    def op(self, opcode: str, inputs: list[int], out: int | None = None, options_type=None, **options) -> int:
        self.count += 1
        target = out if out is not None else self.ctx.temp(f"{self.node.name};{opcode.lower()}{self.count}",
                                                           self.shape, "float32")
        self.ctx.emit(opcode, inputs, [target], self.node, options_type, **options)
        return target

    def add(self, a: int, b: int, out: int | None = None) -> int:
        return self.op("ADD", [a, b], out, "AddOptions", FusedActivationFunction=0)

    def mul(self, a: int, b: int, out: int | None = None) -> int:
        return self.op("MUL", [a, b], out, "MulOptions", FusedActivationFunction=0)

    def constant(self, value: float) -> int:
        self.count += 1
        return self.ctx.spec.add_constant(f"{self.node.name};c{self.count}", np.float32(value))

    def output(self) -> int:
        return self.ctx.new_value(self.node.output[0], "float32", self.perm)

    def softplus(self, out: int | None = None) -> int:
        negative_magnitude = self.op("NEG", [self.op("ABS", [self.x])])
        tail = self.op("LOG", [self.add(self.op("EXP", [negative_magnitude]), self.constant(1.0))])
        return self.add(self.op("RELU", [self.x]), tail, out=out)


@register("Neg", "Abs", "Log", "Floor", int8=False)
def lower_simple(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.op(SIMPLE[node.op_type], [steps.x], steps.output())


@register("Reciprocal", int8=False)
def lower_reciprocal(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.op("DIV", [steps.constant(1.0), steps.x], steps.output(), "DivOptions", FusedActivationFunction=0)


@register("Softplus", int8=False)
def lower_softplus(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.softplus(out=steps.output())


@register("Mish", since=18, int8=False)
def lower_mish(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.mul(steps.x, steps.op("TANH", [steps.softplus()]), out=steps.output())


@register("Ceil", int8=False)
def lower_ceil(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    steps.op("NEG", [steps.op("FLOOR", [steps.op("NEG", [steps.x])])], steps.output())


@register("Round", int8=False)
def lower_round(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    zero, shift = steps.constant(0.0), steps.constant(ROUNDING_SHIFT)

    def rounded_magnitude(magnitude: int) -> int:
        below = steps.op("MINIMUM", [magnitude, shift])  # the part the shift rounds
        rounded = steps.op("SUB", [steps.add(below, shift), shift], None, "SubOptions", FusedActivationFunction=0)
        beyond = steps.op("SUB", [magnitude, below], None, "SubOptions", FusedActivationFunction=0)  # integers
        return steps.add(rounded, beyond)

    positive = rounded_magnitude(steps.op("MAXIMUM", [steps.x, zero]))
    negative = rounded_magnitude(steps.op("MAXIMUM", [steps.op("NEG", [steps.x]), zero]))
    steps.op("SUB", [positive, negative], steps.output(), "SubOptions", FusedActivationFunction=0)


@register("Sign", int8=False)
def lower_sign(ctx: Lowering, node) -> None:
    steps = FloatSteps(ctx, node)
    gain = steps.constant(SIGN_GAIN)
    scaled = steps.mul(steps.mul(steps.x, gain), gain)
    steps.op("MAXIMUM", [steps.op("MINIMUM", [scaled, steps.constant(1.0)]), steps.constant(-1.0)], steps.output())
