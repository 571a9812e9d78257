"""Activations: Relu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu, PRelu, Gelu, Elu.

Relu / Relu6 / Clip(-1, 1) usually disappear into their producer (`Lowering.fuse_activation`);
what reaches this module is the standalone case. LOGISTIC and TANH get the fixed int8 output
parameters their kernels assume (builtins.fixed_output). SiLU (x * sigmoid(x)) needs no pattern:
LOGISTIC then MUL both have int8 kernels.
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath
from edgepipe.backends.tflite.builtins import fixed_output
from edgepipe.backends.tflite.lower import Lowering, clip_bounds, fusable_activation, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization

FIXED_OUTPUT = {"Sigmoid": "LOGISTIC", "Tanh": "TANH"}
SIMPLE = {"HardSwish": "HARD_SWISH", "Relu": "RELU"}
SIXTH = np.float32(1.0 / 6.0)
ADD_MIN_SCALE_RATIO = 2.0**-10 * 1.5  # XNNPACK's int8 ADD limit (input scale / output scale), with margin


def _unary(ctx: Lowering, node, opcode: str, quant: Quantization | None = None, options_type=None,
           **options) -> None:
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm, quant)
    ctx.emit(opcode, [x], [out], node, options_type, **options)


@register("Relu", "HardSwish")
def lower_simple(ctx: Lowering, node) -> None:
    if node.op_type == "HardSwish" and ctx.node_dtype(node) == "int8":
        _int8_hard_swish(ctx, node)
    else:
        _unary(ctx, node, SIMPLE[node.op_type])


def _int8_hard_swish(ctx: Lowering, node) -> None:
    """x * clip(x / 6 + 1/2, 0, 1) in int8 ops XNNPACK delegates (it takes HARD_SWISH only in float;
    one undelegated node splits the int8 graph into several partitions).

    Usually ADD(3, fused RELU6), MUL(1/6), MUL (measured faster under XNNPACK on x86 than the
    two-op form below). XNNPACK rejects an int8 ADD whose input/output scale ratio is below
    2**-10, which happens for small-range inputs (the gate's range is fixed at [0, 6]; deep layers
    can have ranges of 1e-3 and less): for those, 4-D tensors get the gate as a 1x1
    DEPTHWISE_CONV_2D (weight 1/6, bias 1/2) whose output grid [0, 1] clips by saturation.
    """
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "int8", perm)
    out = ctx.new_value(node.output[0], "int8", perm)
    shape = ctx.tensor(out).shape
    unit_quant = Quantization.per_tensor(*quantmath.asymmetric_params(0, 1))
    unit = ctx.temp(f"{node.name};gate", shape, "int8", unit_quant)
    input_scale = float(ctx.tensor(x).quantization.scale[0])
    if len(shape) == 4 and input_scale < ADD_MIN_SCALE_RATIO * quantmath.asymmetric_params(0, 6)[0]:
        _hard_swish_gate_depthwise(ctx, node, x, unit, shape[3])
    else:
        gate = ctx.temp(f"{node.name};relu6", shape, "int8",
                        Quantization.per_tensor(*quantmath.asymmetric_params(0, 6)))
        ctx.emit("ADD", [x, ctx.add_weight_constant(f"{node.name};three", np.float32(3), "int8")], [gate], node,
                 "AddOptions", FusedActivationFunction=3)
        ctx.emit("MUL", [gate, ctx.add_weight_constant(f"{node.name};sixth", SIXTH, "int8")], [unit], node,
                 "MulOptions", FusedActivationFunction=0)
    ctx.emit("MUL", [x, unit], [out], node, "MulOptions", FusedActivationFunction=0)


def _hard_swish_gate_depthwise(ctx: Lowering, node, x: int, unit: int, channels: int) -> None:
    """unit = clip(x / 6 + 1/2, 0, 1) as a 1x1 depthwise conv. The weight scale is raised above
    (1/6)/127 only where the int32 bias 1/2 would overflow (input scale < ~2e-7): such inputs are
    far below the gate's resolution anyway."""
    input_scale = float(ctx.tensor(x).quantization.scale[0])
    weight_scale = max(float(SIXTH) / 127, 0.5 / (input_scale * 2.0**30))
    weights = np.full((1, 1, 1, channels), np.clip(np.rint(float(SIXTH) / weight_scale), -127, 127), np.int8)
    bias_scale = input_scale * weight_scale
    bias = np.full(channels, np.rint(0.5 / bias_scale), np.int32)
    filter_index = ctx.spec.add_constant(f"{node.name};sixth", weights,
                                         Quantization.per_channel(np.full(channels, weight_scale), 3))
    bias_index = ctx.spec.add_constant(f"{node.name};half", bias,
                                       Quantization.per_channel(np.full(channels, bias_scale), 0))
    ctx.emit("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], [unit], node, "DepthwiseConv2DOptions",
             Padding=1, StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, DepthMultiplier=1,
             FusedActivationFunction=0)


@register("Sigmoid", "Tanh")
def lower_fixed_output(ctx: Lowering, node) -> None:
    opcode = FIXED_OUTPUT[node.op_type]
    _unary(ctx, node, opcode, Quantization.per_tensor(*fixed_output(opcode)))


def check_clip(ctx: Lowering, node) -> str | None:
    return None if clip_bounds(ctx, node) is not None else "min/max must be constants"


@register("Clip", check=check_clip)
def lower_clip(ctx: Lowering, node) -> None:
    kind = fusable_activation(ctx, node)
    if kind is not None:
        _unary(ctx, node, kind)
        return
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    low, high = clip_bounds(ctx, node)
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    quant = ctx.tensor(out).quantization
    current = ctx.requantized(x, quant, node.input[0]) if dtype == "int8" else x
    steps = [(opcode, bound) for opcode, bound in (("MAXIMUM", low), ("MINIMUM", high)) if np.isfinite(bound)]
    for position, (opcode, bound) in enumerate(steps):
        bound_index = ctx.quantized_constant(f"{node.name};{opcode.lower()}", np.float32(bound), quant, dtype)
        target = out if position == len(steps) - 1 else ctx.temp(f"{node.name};{opcode.lower()}",
                                                                 ctx.tensor(out).shape, dtype, quant)
        ctx.emit(opcode, [current, bound_index], [target], node)
        current = target
    if not steps:
        ctx.emit("RESHAPE", [current, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)


@register("HardSigmoid")
def lower_hard_sigmoid(ctx: Lowering, node) -> None:
    """clip(alpha * x + beta, 0, 1) as MUL, ADD with fused RELU, MINIMUM(1)."""
    attrs = node_attrs(node)
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    shape, quant = ctx.tensor(out).shape, ctx.tensor(out).quantization
    scaled_quant = None
    if dtype == "int8":
        in_scale, in_zero = ctx.tensor(x).quantization.as_pair()
        ends = sorted([alpha * in_scale * (-128 - in_zero), alpha * in_scale * (127 - in_zero)])
        scaled_quant = Quantization.per_tensor(*quantmath.asymmetric_params(ends[0], ends[1]))
    scaled = ctx.temp(f"{node.name};scaled", shape, dtype, scaled_quant)
    ctx.emit("MUL", [x, ctx.add_weight_constant(f"{node.name};alpha", np.float32(alpha), dtype)], [scaled], node,
             "MulOptions", FusedActivationFunction=0)
    shifted = ctx.temp(f"{node.name};shifted", shape, dtype, quant)
    ctx.emit("ADD", [scaled, ctx.add_weight_constant(f"{node.name};beta", np.float32(beta), dtype)], [shifted], node,
             "AddOptions", FusedActivationFunction=1)
    ctx.emit("MINIMUM", [shifted, ctx.quantized_constant(f"{node.name};one", np.float32(1.0), quant, dtype)],
             [out], node)


@register("LeakyRelu")
def lower_leaky_relu(ctx: Lowering, node) -> None:
    _unary(ctx, node, "LEAKY_RELU", None, "LeakyReluOptions", Alpha=float(node_attrs(node).get("alpha", 0.01)))


def check_prelu(ctx: Lowering, node) -> str | None:
    return None if ctx.constant(node.input[1]) is not None else "the slope must be a constant"


@register("PRelu", check=check_prelu)
def lower_prelu(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    slope = ctx.constant_input(node.input[1], dtype, perm, ctx.rank(node.input[0]))
    ctx.emit("PRELU", [x, slope], [ctx.new_value(node.output[0], dtype, perm)], node)


@register("Gelu", since=20)
def lower_gelu(ctx: Lowering, node) -> None:
    approximate = node_attrs(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    _unary(ctx, node, "GELU", None, "GeluOptions", Approximate=approximate == "tanh")


def check_elu(ctx: Lowering, node) -> str | None:
    alpha = float(node_attrs(node).get("alpha", 1.0))
    return None if alpha == 1.0 else f"alpha={alpha}; TFLite ELU supports alpha=1.0 only"


@register("Elu", check=check_elu)
def lower_elu(ctx: Lowering, node) -> None:
    """relu(x) + (exp(min(x, 0)) - 1): LiteRT 2.3 registers no ELU kernel (any resolver)."""
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    source = ctx.tensor(x)
    low, high = _range(source.quantization) if dtype == "int8" else (0.0, 0.0)

    def step(opcode, inputs, tag, lo, hi, options_type=None, **options):
        quant = Quantization.per_tensor(*quantmath.asymmetric_params(lo, hi)) if dtype == "int8" else None
        target = ctx.temp(f"{node.name};{tag}", source.shape, dtype, quant)
        ctx.emit(opcode, inputs, [target], node, options_type, **options)
        return target

    negative = step("MINIMUM", [x, ctx.quantized_constant(f"{node.name};zero", np.float32(0), source.quantization,
                                                          dtype)], "negative", low, high)
    ctx.tensor(negative).quantization = source.quantization  # MINIMUM keeps its input's parameters
    exponential = step("EXP", [negative], "exp", 0.0, 1.0)
    shifted = step("ADD", [exponential, ctx.add_weight_constant(f"{node.name};minus_one", np.float32(-1), dtype)],
                   "shifted", -1.0, 0.0, "AddOptions", FusedActivationFunction=0)
    positive = step("RELU", [x], "positive", 0.0, max(high, 1e-6))
    ctx.emit("ADD", [positive, shifted], [out], node, "AddOptions", FusedActivationFunction=0)


def _range(quant: Quantization) -> tuple[float, float]:
    scale, zero_point = quant.as_pair()
    return scale * (-128 - zero_point), scale * (127 - zero_point)
