"""Binary elementwise ops with ONNX broadcasting: Add, Sub, Mul, Div, Max, Min, Pow, Sqrt.

The output keeps the layout of the first full-rank dynamic input; constants are broadcast and
transposed to it at convert time. int8 ADD/SUB/MUL requantize internally; MAXIMUM/MINIMUM only
compare integers, so their inputs are requantized to the output's parameters first (int16; in an
int8 model a Max / Min is a float island unless it clamps on a saturating grid: XNNPACK delegates
MAXIMUM / MINIMUM in float only). Division by
a constant becomes a multiplication; other divisions, Sqrt and general Pow have no int8 kernel
and are lowered as float islands. So is a channel gate (`channel_gate`): XNNPACK's int8 MUL
broadcasting a per-channel tensor over an image costs more than converting both sides and
multiplying in float.
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath
from edgepipe.backends.tflite.lower import QUANTIZED, Lowering, identity
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.activations import ADD_MIN_SCALE_RATIO
from edgepipe.backends.tflite.writer import Quantization

FUSABLE = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
           "Div": ("DIV", "DivOptions")}
SAME_QUANT = {"Max": "MAXIMUM", "Min": "MINIMUM"}


def output_layout(ctx: Lowering, node) -> tuple[int, ...]:
    rank = ctx.rank(node.output[0])
    for name in node.input:
        if name and ctx.constant(name) is None and ctx.rank(name) == rank:
            return ctx.layout(name)
    return identity(rank)


def broadcast_inputs(ctx: Lowering, node, dtype: str, names=None) -> tuple[list[int], tuple[int, ...]]:
    perm = output_layout(ctx, node)
    rank = ctx.rank(node.output[0])
    return [ctx.broadcast_input(name, dtype, perm, rank) for name in (names or node.input)], perm


def check_binary(ctx: Lowering, node) -> str | None:
    if len(node.input) != 2:
        return f"{len(node.input)} inputs; only two-input {node.op_type} is supported"
    if ctx.rank(node.output[0]) > 6:
        return "more than 6 dimensions"
    return None


def _divides_by_constant(ctx: Lowering, node) -> bool:
    """A float Div by a nonzero constant (a MUL by its reciprocal); an integer Div truncates, and
    1 / 4 in int32 is 0 (trueocr's `(widths + 3) // 4` came out 0), so it stays a DIV."""
    divisor = ctx.constant(node.input[1])
    return (divisor is not None and bool(np.all(divisor != 0)) and np.issubdtype(divisor.dtype, np.floating)
            and ctx.onnx_kind(node.output[0]) == "float32")


def _arithmetic_int8(ctx: Lowering, node) -> bool:
    return node.op_type != "Div" or _divides_by_constant(ctx, node)


def channel_gate(ctx: Lowering, node) -> bool:
    """A Mul of a 4-D image [N, C, H, W] (H * W > 1) by a computed [N, C, 1, 1] gate, in either
    order: squeeze-and-excitation. Under XNNPACK (x86 AVX-512: its int8 MUL has only 128-bit
    kernels) the float island (DEQUANTIZE both sides, MUL, QUANTIZE) is faster than the int8 MUL
    (benchmarks/xnnpack_op_speed.py, "SE gate" cases). On ARM the int8 MUL is one integer-only pass
    (`qs8_vmul_minmax_rndnu__neon_ld64_u16`) and likely the faster form; the island stays because
    the int8 MUL measured less accurate on a real model (the PP-OCRv4 recognizer: README,
    "Squeeze-excite gates"), which no ARM timing here can weigh against."""
    if node.op_type != "Mul" or any(ctx.constant(name) is not None for name in node.input):
        return False
    shapes = [ctx.shape(name) for name in node.input]
    if any(len(shape) != 4 for shape in shapes) or shapes[0][:2] != shapes[1][:2]:
        return False
    spatial = sorted(shape[2] * shape[3] for shape in shapes)
    return spatial[0] == 1 and spatial[1] > 1


def _arithmetic_int8_kernel(ctx: Lowering, node) -> bool:
    return _arithmetic_int8(ctx, node) and not channel_gate(ctx, node)


@register("Add", "Sub", "Mul", "Div", check=check_binary, int8=_arithmetic_int8_kernel, int16=_arithmetic_int8)
def lower_arithmetic(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    opcode, options_type = FUSABLE[node.op_type]
    names = list(node.input)
    if node.op_type == "Div" and _divides_by_constant(ctx, node):
        reciprocal = f"{node.input[1]};reciprocal"
        ctx.constants[reciprocal] = (1.0 / ctx.constant(node.input[1]).astype(np.float64)).astype(np.float32)
        names[1], (opcode, options_type) = reciprocal, FUSABLE["Mul"]
    inputs, perm = broadcast_inputs(ctx, node, dtype, names)
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, perm)
    if dtype == "int8" and opcode in ("ADD", "SUB"):
        inputs = [_coarse_enough(ctx, index, ctx.tensor(out).quantization) if ctx.constant(name) is not None
                  else index for name, index in zip(names, inputs)]
    ctx.emit(opcode, inputs, [out], node, options_type, FusedActivationFunction=activation)


def _coarse_enough(ctx: Lowering, index: int, out_quant: Quantization) -> int:
    """An int8 constant operand of ADD / SUB whose own grid is far finer than the output's (a
    learned bias of 1e-5 on activations of range 1) is re-expressed on a grid XNNPACK accepts
    (input / output scale ratio >= 2**-10; else the ADD leaves the delegated graph). The constant
    then moves by less than 1/500 of an output step."""
    tensor = ctx.tensor(index)
    scale, zero_point = tensor.quantization.as_pair()
    floor = float(out_quant.scale[0]) * ADD_MIN_SCALE_RATIO * 2
    if scale >= floor:
        return index
    values = quantmath.dequantize(ctx.spec.constant_value(index), scale, zero_point)
    coarse = Quantization.per_tensor(floor, zero_point)  # same zero point: covers a wider range
    return ctx.spec.add_constant(f"{tensor.name};coarse", quantmath.quantize(values, floor, zero_point), coarse)


def _max_min_int8(ctx: Lowering, node) -> bool:
    """int8 only as a clamp on a saturating grid (shared_scales.clamps: no MAXIMUM / MINIMUM at
    all). LiteRT's XNNPACK delegates MAXIMUM / MINIMUM in float only, so any other int8 Max / Min
    is a float island (DEQUANTIZE, MAXIMUM, QUANTIZE) inside the partition instead of an int8 op
    on the builtin kernels. While the clamps are being found every Max / Min is a candidate."""
    return ctx.clamp_inputs is None or node.output[0] in ctx.clamp_inputs


@register("Max", "Min", check=check_binary, int8=_max_min_int8, int16=True)
def lower_max_min(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    perm = output_layout(ctx, node)
    clamped = ctx.clamp_inputs.get(node.output[0])
    if clamped is not None:  # shared_scales.clamps: a saturating grid, no int8 MAXIMUM / MINIMUM
        x = ctx.get(clamped, dtype, perm)
        if ctx.tensor(x).quantization.same_as(ctx.quant(node.output[0])) and node.output[0] not in ctx.graph_outputs:
            if ctx.tensor(x).name == clamped:  # it holds the clamped values now: named so (edgepipe compare)
                ctx.tensor(x).name = node.output[0]
            ctx.alias(node.output[0], x, perm)
            return
        ctx.emit("QUANTIZE", [x], [ctx.new_value(node.output[0], dtype, perm)], node)
        return
    out = ctx.new_value(node.output[0], dtype, perm)
    quant = ctx.tensor(out).quantization
    rank = ctx.rank(node.output[0])
    inputs = []
    for name in node.input:
        if ctx.constant(name) is not None:
            value = np.asarray(ctx.constant(name), np.float32)
            value = value.reshape((1,) * (rank - value.ndim) + value.shape).transpose(perm)
            inputs.append(ctx.quantized_constant(f"{name};{node.name}", value, quant, dtype))
        else:
            index = ctx.broadcast_input(name, dtype, perm, rank)
            inputs.append(ctx.requantized(index, quant, name) if dtype in QUANTIZED else index)
    ctx.emit(SAME_QUANT[node.op_type], inputs, [out], node)


def _square(ctx: Lowering, node) -> bool:
    exponent = ctx.constant(node.input[1])
    return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


MAX_MULTIPLIED_POWER = 16


def _multiplied_power(ctx: Lowering, node) -> float | None:
    """The exponent when it is a whole or half-whole number other than 0, 1, 2 and 0.5 with
    |exponent| <= MAX_MULTIPLIED_POWER and the base fills the output shape, else None: x^3, x^-1,
    x^1.5 (LayerNorm variants, focal terms, x.abs().pow(1.5)) are MULs (and a SQRT, a DIV) XNNPACK
    delegates, where POW is not delegated and is less exact."""
    exponent = ctx.constant(node.input[1])
    if exponent is None or exponent.size != 1 or ctx.constant(node.input[0]) is not None:
        return None
    value = float(exponent.reshape(-1)[0])
    if value in (0.0, 1.0, 2.0, 0.5) or abs(value) > MAX_MULTIPLIED_POWER or (2 * value) % 1:
        return None
    if list(ctx.shape(node.input[0])) != list(ctx.shape(node.output[0])):
        return None
    return value


def _emit_multiplied_power(ctx: Lowering, node, exponent: float) -> None:
    """x^|n| by repeated squaring (times SQRT(x) for a half), then 1 / that for a negative n."""
    from edgepipe.backends.tflite.ops.unary import FloatSteps

    steps = FloatSteps(ctx, node)
    whole, half, negative = int(abs(exponent)), bool(abs(exponent) % 1), exponent < 0
    bits = [k for k in range(whole.bit_length()) if whole >> k & 1]
    last = steps.output() if not negative else None
    if last is not None and len(bits) == 1 and not half:  # x^(2^k): the last squaring writes the output
        square = steps.x
        for _ in range(bits[0] - 1):
            square = steps.mul(square, square)
        steps.mul(square, square, out=last)
        return
    squares = [steps.x]
    for _ in range(max(bits, default=0)):
        squares.append(steps.mul(squares[-1], squares[-1]))
    factors = [squares[k] for k in bits] + ([steps.op("SQRT", [steps.x])] if half else [])
    product = factors[0]
    for position, factor in enumerate(factors[1:], start=2):
        product = steps.mul(product, factor, out=last if position == len(factors) else None)
    if negative:
        steps.op("DIV", [steps.constant(1.0), product], steps.output(), "DivOptions", FusedActivationFunction=0)


@register("Pow", check=check_binary, int8=_square, int16=_square)
def lower_pow(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    exponent = ctx.constant(node.input[1])
    perm = output_layout(ctx, node)
    if _square(ctx, node):
        x = ctx.get(node.input[0], dtype, perm)
        ctx.emit("MUL", [x, x], [ctx.new_value(node.output[0], dtype, perm)], node, "MulOptions",
                 FusedActivationFunction=0)
    elif exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 0.5:
        x = ctx.get(node.input[0], dtype, perm)
        ctx.emit("SQRT", [x], [ctx.new_value(node.output[0], dtype, perm)], node)
    elif _multiplied_power(ctx, node) is not None:
        _emit_multiplied_power(ctx, node, _multiplied_power(ctx, node))
    else:
        inputs, perm = broadcast_inputs(ctx, node, dtype)
        ctx.emit("POW", inputs, [ctx.new_value(node.output[0], dtype, perm)], node)


@register("Sqrt", int8=False)
def lower_sqrt(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    ctx.emit("SQRT", [x], [ctx.new_value(node.output[0], "float32", perm)], node)
