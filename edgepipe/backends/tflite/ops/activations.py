"""Activations: Relu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu, PRelu, Gelu, Elu / Selu / Celu.

Relu / Relu6 / Clip(-1, 1) usually disappear into their producer (`Lowering.fuse_activation`);
what reaches this module is the standalone case. LOGISTIC and TANH get the fixed int8 output
parameters their kernels assume (builtins.fixed_output). SiLU (x * sigmoid(x)) needs no pattern:
LOGISTIC then MUL both have int8 kernels.
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath
from edgepipe.backends.tflite.builtins import fixed_output
from edgepipe.backends.tflite.fusion import clip_bounds, fusable_activation
from edgepipe.backends.tflite.lower import ACTIVATIONS, NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization

FIXED_OUTPUT = {"Sigmoid": "LOGISTIC", "Tanh": "TANH"}
SIMPLE = {"HardSwish": "HARD_SWISH", "Relu": "RELU"}
SIXTH = np.float32(1.0 / 6.0)
# XNNPACK's int8 ADD lower limit on input scale / output scale (2**-10), with margin
ADD_MIN_SCALE_RATIO = 2.0**-10 * 1.5
# channel_affine views tensors with at most MAX_FEW_CHANNELS channels as rows of W * C channels
MAX_FEW_CHANNELS = 16
MAX_ROW_CHANNELS = 8192


def _unary(ctx: Lowering, node, opcode: str, quant: Quantization | None = None, options_type=None,
           **options) -> None:
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm, quant)
    ctx.emit(opcode, [x], [out], node, options_type, **options)


@register("Relu", "HardSwish", int16=True)
def lower_simple(ctx: Lowering, node) -> None:
    if node.op_type == "HardSwish" and ctx.node_dtype(node) == "int8":
        _int8_hard_swish(ctx, node)
    elif node.op_type == "HardSwish" and ctx.node_dtype(node) == "int16":
        _int16_hard_swish(ctx, node)
    elif not (node.op_type == "Relu" and ctx.node_dtype(node) == "int8" and _int8_relu_by_saturation(ctx, node)):
        _unary(ctx, node, SIMPLE[node.op_type])


def _int8_relu_by_saturation(ctx: Lowering, node) -> bool:
    """A Relu no producer could fuse: XNNPACK does not take a standalone int8 RELU, but an int8 ->
    int8 QUANTIZE onto the output grid, which starts at 0 (zero point -128), saturates every
    negative value to 0: the same numbers, inside the partition. False when the grid is otherwise."""
    quant = ctx.quant(node.output[0])
    if quant.as_pair()[1] != -128:
        return False
    perm = ctx.layout(node.input[0])
    if any(value.dtype == "int8" for value in ctx.values[node.input[0]]):
        ctx.alias(node.output[0], ctx.requantized(ctx.get(node.input[0], "int8", perm), quant, node.output[0]), perm)
    else:  # a float producer (kept float): one QUANTIZE onto the Relu's grid, not two roundings
        out = ctx.new_value(node.output[0], "int8", perm, quant=quant)
        ctx.emit("QUANTIZE", [ctx.get(node.input[0], "float32", perm)], [out], node)
    return True


def _int16_hard_swish(ctx: Lowering, node) -> None:
    """x * relu6(x + 3) / 6 in int16 ADD / MUL kernels: LiteRT has no int16 HARD_SWISH."""
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "int16", perm)
    out = ctx.new_value(node.output[0], "int16", perm)
    shape = ctx.tensor(out).shape
    gate = ctx.temp(f"{node.name};relu6", shape, "int16", Quantization.per_tensor(quantmath.symmetric_scale(6, 16), 0))
    ctx.emit("ADD", [x, ctx.add_weight_constant(f"{node.name};three", np.float32(3), "int16")], [gate], node,
             "AddOptions", FusedActivationFunction=ACTIVATIONS["RELU6"])
    unit = ctx.temp(f"{node.name};gate", shape, "int16", Quantization.per_tensor(quantmath.symmetric_scale(1, 16), 0))
    ctx.emit("MUL", [gate, ctx.add_weight_constant(f"{node.name};sixth", SIXTH, "int16")], [unit], node,
             "MulOptions", FusedActivationFunction=0)
    ctx.emit("MUL", [x, unit], [out], node, "MulOptions", FusedActivationFunction=0)


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
        channel_affine(ctx, node, x, unit, SIXTH, 0.5, "gate")
    else:
        gate = ctx.temp(f"{node.name};relu6", shape, "int8",
                        Quantization.per_tensor(*quantmath.asymmetric_params(0, 6)))
        ctx.emit("ADD", [x, ctx.add_weight_constant(f"{node.name};three", np.float32(3), "int8")], [gate], node,
                 "AddOptions", FusedActivationFunction=3)
        ctx.emit("MUL", [gate, ctx.add_weight_constant(f"{node.name};sixth", SIXTH, "int8")], [unit], node,
                 "MulOptions", FusedActivationFunction=0)
    ctx.emit("MUL", [x, unit], [out], node, "MulOptions", FusedActivationFunction=0)


def channel_affine(ctx: Lowering, node, x: int, out: int, scale, shift, tag: str, activation: int = 0) -> None:
    """out = scale[c] * x + shift[c] as a 1x1 DEPTHWISE_CONV_2D on an NHWC int8 tensor: one op
    XNNPACK delegates, with per-channel weight precision, whose output grid clips by saturation.
    A channel's weight scale is raised above |scale|/127 only where its int32 bias would overflow
    (input scale < ~|shift| * 1e-9): such inputs are far below the output's resolution anyway.

    With few channels (<= 16) XNNPACK's int8 depthwise kernel spends most of each pixel on its channel
    tile: the tensor is then viewed as one row per image row ([N, H, 1, W * C], RESHAPE on both
    sides, the parameters repeated W times), which computes the same integers per element."""
    shape = ctx.tensor(out).shape
    channels = shape[3]
    scale = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (channels,))
    shift = np.broadcast_to(np.asarray(shift, np.float64).reshape(-1), (channels,))
    input_scale = float(ctx.tensor(x).quantization.scale[0])
    weight_scale = np.maximum(np.maximum(np.abs(scale) / 127, 1e-8), np.abs(shift) / (input_scale * 2.0**30))
    weights = np.clip(np.rint(scale / weight_scale), -127, 127).astype(np.int8)
    bias = np.rint(shift / (input_scale * weight_scale)).astype(np.int32)
    row_shape = row_view(shape)
    repeat = shape[2] if row_shape else 1
    target = out
    if row_shape:
        x = _reshaped(ctx, x, row_shape, f"{node.name};{tag};rows")
        target = ctx.temp(f"{node.name};{tag};rows_out", row_shape, "int8", ctx.tensor(out).quantization)
    weight_scale = np.tile(weight_scale, repeat)
    filter_index = ctx.spec.add_constant(f"{node.name};{tag};scale", np.tile(weights, repeat).reshape(1, 1, 1, -1),
                                         Quantization.per_channel(weight_scale, 3))
    bias_index = ctx.spec.add_constant(f"{node.name};{tag};shift", np.tile(bias, repeat),
                                       Quantization.per_channel(input_scale * weight_scale, 0))
    ctx.emit("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], [target], node, "DepthwiseConv2DOptions",
             Padding=1, StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, DepthMultiplier=1,
             FusedActivationFunction=activation)
    if row_shape:
        ctx.emit("RESHAPE", [target, ctx.int32_constant(f"{node.name};{tag};shape", shape)], [out], node)


def row_view(shape) -> list[int] | None:
    """[N, H, 1, W * C] for an NHWC shape with few channels (channel_affine), else None."""
    channels = shape[3]
    if channels > MAX_FEW_CHANNELS or shape[2] == 1 or shape[2] * channels > MAX_ROW_CHANNELS:
        return None
    return [shape[0], shape[1], 1, shape[2] * channels]


def _reshaped(ctx: Lowering, index: int, shape, name: str) -> int:
    tensor = ctx.tensor(index)
    out = ctx.temp(name, shape, tensor.dtype, tensor.quantization)
    ctx.emit("RESHAPE", [index, ctx.int32_constant(f"{name};shape", shape)], [out])
    return out


@register("Sigmoid", "Tanh", int16=True)
def lower_fixed_output(ctx: Lowering, node) -> None:
    opcode = FIXED_OUTPUT[node.op_type]
    dtype = ctx.node_dtype(node)
    _unary(ctx, node, opcode, Quantization.per_tensor(*fixed_output(opcode, dtype)) if dtype != "float32" else None)


def _clip_steps(ctx: Lowering, node) -> list[tuple[str, float | str]]:
    """(MAXIMUM for min / MINIMUM for max, bound) per bound that is given: a float when constant,
    else the name of the computed scalar tensor (a top-dB floor `max(x) - 80` of a log-mel model)."""
    bounds = clip_bounds(ctx, node)
    if bounds is not None:
        return [(opcode, bound) for opcode, bound in zip(("MAXIMUM", "MINIMUM"), bounds) if np.isfinite(bound)]
    attrs = node_attrs(node)
    steps: list[tuple[str, float | str]] = []
    for position, (opcode, attr) in enumerate((("MAXIMUM", "min"), ("MINIMUM", "max")), start=1):
        name = node.input[position] if len(node.input) > position else ""
        if name:
            value = ctx.constant(name)
            steps.append((opcode, name if value is None else float(np.asarray(value).reshape(-1)[0])))
        elif attr in attrs:
            steps.append((opcode, float(attrs[attr])))
    return steps


def _int16_clip(ctx: Lowering, node) -> bool:
    """RELU / RELU6 and MAXIMUM / MINIMUM have int16 kernels; RELU_N1_TO_1 has none."""
    return fusable_activation(ctx, node) in (None, "RELU", "RELU6")


def _int8_clip(ctx: Lowering, node) -> bool:
    """int8 only as a RELU kind: XNNPACK delegates MAXIMUM / MINIMUM in float only, so any other
    clip in an int8 model is a float island (DEQUANTIZE, MAXIMUM / MINIMUM, QUANTIZE) inside the
    partition, not int8 ops on the builtin kernels."""
    return fusable_activation(ctx, node) is not None


@register("Clip", int8=_int8_clip, int16=_int16_clip)
def lower_clip(ctx: Lowering, node) -> None:
    """Constant bounds: a fused RELU kind, else MAXIMUM / MINIMUM with a constant. A computed
    bound is broadcast from its scalar tensor (requantized to the output grid, as MAXIMUM and
    MINIMUM only compare integers, in int16)."""
    kind = fusable_activation(ctx, node)
    if kind is not None:
        _unary(ctx, node, kind)
        return
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    quant = ctx.tensor(out).quantization
    current = ctx.requantized(x, quant, node.input[0]) if dtype != "float32" else x
    steps = _clip_steps(ctx, node)
    for position, (opcode, bound) in enumerate(steps):
        if isinstance(bound, str):
            bound_index = ctx.broadcast_input(bound, dtype, perm, len(perm))
            bound_index = ctx.requantized(bound_index, quant, bound) if dtype != "float32" else bound_index
        else:
            bound_index = ctx.quantized_constant(f"{node.name};{opcode.lower()}", np.float32(bound), quant, dtype)
        target = out if position == len(steps) - 1 else ctx.temp(f"{node.name};{opcode.lower()}",
                                                                 ctx.tensor(out).shape, dtype, quant)
        ctx.emit(opcode, [current, bound_index], [target], node)
        current = target
    if not steps:
        ctx.emit("RESHAPE", [current, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)


@register("HardSigmoid", int16=True)
def lower_hard_sigmoid(ctx: Lowering, node) -> None:
    """clip(alpha * x + beta, 0, 1). int8: alpha * x + beta written into an output grid inside
    [0, 1] whose lower end is exactly 0, so saturation is the clip: one 1x1 DEPTHWISE_CONV_2D on
    4-D tensors, MUL then ADD otherwise (XNNPACK has no int8 MINIMUM). float32: MUL, ADD with
    fused RELU, MINIMUM(1)."""
    attrs = node_attrs(node)
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    if dtype == "int16":
        _int16_hard_sigmoid(ctx, node, x, perm, alpha, beta)
        return
    if dtype == "int8":
        low, high = _range(ctx.quant(node.output[0]))
        unit = None if low == 0.0 and high <= 1.0 else Quantization.per_tensor(*quantmath.asymmetric_params(0, 1))
        out = ctx.new_value(node.output[0], dtype, perm, unit)
        if len(ctx.tensor(out).shape) == 4:
            channel_affine(ctx, node, x, out, alpha, beta, "affine")
            return
    else:
        out = ctx.new_value(node.output[0], dtype, perm)
    shape, quant = ctx.tensor(out).shape, ctx.tensor(out).quantization
    scaled_quant = None
    if dtype == "int8":
        ends = sorted(alpha * v for v in _range(ctx.tensor(x).quantization))
        scaled_quant = Quantization.per_tensor(*quantmath.asymmetric_params(ends[0], ends[1]))
    scaled = ctx.temp(f"{node.name};scaled", shape, dtype, scaled_quant)
    ctx.emit("MUL", [x, ctx.add_weight_constant(f"{node.name};alpha", np.float32(alpha), dtype)], [scaled], node,
             "MulOptions", FusedActivationFunction=0)
    shifted = out if dtype == "int8" else ctx.temp(f"{node.name};shifted", shape, dtype, quant)
    ctx.emit("ADD", [scaled, ctx.add_weight_constant(f"{node.name};beta", np.float32(beta), dtype)], [shifted], node,
             "AddOptions", FusedActivationFunction=0 if dtype == "int8" else 1)
    if dtype != "int8":
        ctx.emit("MINIMUM", [shifted, ctx.spec.add_constant(f"{node.name};one", np.float32(1.0))], [out], node)


def _int16_hard_sigmoid(ctx: Lowering, node, x: int, perm, alpha: float, beta: float) -> None:
    """MUL(alpha), ADD(beta) with fused RELU, MINIMUM(1) on int16 grids (no int32-bias conv)."""
    out = ctx.new_value(node.output[0], "int16", perm)
    shape, quant = ctx.tensor(out).shape, ctx.tensor(out).quantization
    amax = float(ctx.tensor(x).quantization.scale[0]) * 32767 * abs(alpha)
    scaled = ctx.temp(f"{node.name};scaled", shape, "int16",
                      Quantization.per_tensor(quantmath.symmetric_scale(amax, 16), 0))
    ctx.emit("MUL", [x, ctx.add_weight_constant(f"{node.name};alpha", np.float32(alpha), "int16")], [scaled], node,
             "MulOptions", FusedActivationFunction=0)
    shifted = ctx.temp(f"{node.name};shifted", shape, "int16", quant)
    ctx.emit("ADD", [scaled, ctx.add_weight_constant(f"{node.name};beta", np.float32(beta), "int16")], [shifted],
             node, "AddOptions", FusedActivationFunction=ACTIVATIONS["RELU"])
    ctx.emit("MINIMUM", [shifted, ctx.quantized_constant(f"{node.name};one", np.float32(1.0), quant, "int16")], [out],
             node)


@register("LeakyRelu", int16=True)
def lower_leaky_relu(ctx: Lowering, node) -> None:
    _unary(ctx, node, "LEAKY_RELU", None, "LeakyReluOptions", Alpha=float(node_attrs(node).get("alpha", 0.01)))


def check_prelu(ctx: Lowering, node) -> str | None:
    return None if ctx.constant(node.input[1]) is not None else "the slope must be a constant"


@register("PRelu", check=check_prelu, int8=False)
def lower_prelu(ctx: Lowering, node) -> None:
    """PRELU in float, in int8 models too: a float island (DEQUANTIZE, PRELU, QUANTIZE) inside the
    XNNPACK partition. XNNPACK has no int8 PRELU, LiteRT's builtin int8 kernel costs more than the
    rest of a small detector, and the island beat the int8 forms (x + (1 - s) * relu(-x) from 1x1
    depthwise convs and an ADD) at every MTCNN shape measured. A slope per channel of an NHWC
    tensor runs on the [N, H, W * C] view (the slope repeated W times, a RESHAPE each side) where
    XNNPACK computes that faster: always in the island, in fp32 at up to 16 channels
    (benchmarks/xnnpack_op_speed.py, "prelu" cases)."""
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    slopes = _channel_slopes(ctx, node, perm)
    shape = list(ctx.tensor(out).shape)
    if slopes is not None and len(shape) == 4 and perm == NHWC and shape[2] > 1 and \
            (ctx.quantized or shape[3] <= MAX_FEW_CHANNELS):
        rows = [shape[0], shape[1], shape[2] * shape[3]]
        row_slope = np.tile(slopes, shape[2]).astype(np.float32).reshape(1, 1, -1)
        target = ctx.temp(f"{node.name};rows_out", rows, dtype)
        ctx.emit("PRELU", [_reshaped(ctx, x, rows, f"{node.name};rows"),
                           ctx.spec.add_constant(f"{node.name};row_slope", row_slope)], [target], node)
        ctx.emit("RESHAPE", [target, ctx.int32_constant(f"{node.name};shape", shape)], [out], node)
        return
    slope = ctx.constant_input(node.input[1], dtype, perm, ctx.rank(node.input[0]))
    ctx.emit("PRELU", [x, slope], [out], node)


def _channel_slopes(ctx: Lowering, node, perm) -> np.ndarray | None:
    """The slope as one value per channel, the channel being the ONNX axis laid out last in
    TFLite (NHWC: C; a dense [N, C]: C), or None if it varies along any other axis."""
    rank = len(perm)
    axis = perm[-1]
    channels = ctx.shape(node.input[0])[axis]
    slope = np.asarray(ctx.constant(node.input[1]), np.float64)
    if slope.ndim > rank:
        return None
    slope = slope.reshape((1,) * (rank - slope.ndim) + slope.shape)
    if any(d != 1 for i, d in enumerate(slope.shape) if i != axis) or slope.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(slope.reshape(-1), (channels,)).copy()


@register("Gelu", since=20, int8=False)
def lower_gelu(ctx: Lowering, node) -> None:
    """GELU in float also in int8 models: XNNPACK takes the float kernel (and the DEQUANTIZE /
    QUANTIZE around it) into the int8 partition, while an int8 GELU would split the graph. The
    DEQUANTIZE -> GELU -> QUANTIZE chain runs there as fast as the int8 approximation x *
    sigmoid(1.702 x) (the gelu cases of benchmarks/xnnpack_op_speed.py), which would save nothing."""
    approximate = node_attrs(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    _unary(ctx, node, "GELU", None, "GeluOptions", Approximate=approximate == "tanh")


# (positive-side gain, negative-side gain, exponent divisor) of y = a relu(x) + b (exp(min(x, 0) / c) - 1)
def _elu_terms(node) -> tuple[float, float, float]:
    attrs = node_attrs(node)
    if node.op_type == "Selu":
        alpha = float(attrs.get("alpha", 1.67326319217681884765625))  # ONNX's defaults
        gamma = float(attrs.get("gamma", 1.05070102214813232421875))
        return gamma, gamma * alpha, 1.0
    alpha = float(attrs.get("alpha", 1.0))
    return (1.0, alpha, alpha) if node.op_type == "Celu" else (1.0, alpha, 1.0)


@register("Elu", "Selu", "Celu", int8=False)
def lower_elu(ctx: Lowering, node) -> None:
    """a relu(x) + b (exp(min(x, 0) / c) - 1) in float, in int8 models too: LiteRT 2.3 registers
    no ELU kernel, and XNNPACK takes MAXIMUM / MINIMUM and EXP in float only, so an int8 form split
    the partition (and ran slower than fp32). As a float island (DEQUANTIZE ... QUANTIZE) every op
    stays inside the delegate, any alpha / gamma works, and there is no int8 rounding inside."""
    gain, negative_gain, divisor = _elu_terms(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    shape = ctx.tensor(x).shape

    def step(opcode, inputs, tag, options_type=None, **options):
        target = ctx.temp(f"{node.name};{tag}", shape, "float32")
        ctx.emit(opcode, inputs, [target], node, options_type, **options)
        return target

    def constant(tag, value):
        return ctx.add_weight_constant(f"{node.name};{tag}", np.float32(value), "float32")

    negative = step("MINIMUM", [x, constant("zero", 0.0)], "negative")
    if divisor != 1.0:
        negative = step("MUL", [negative, constant("inverse_alpha", 1.0 / divisor)], "scaled", "MulOptions",
                        FusedActivationFunction=0)
    shifted = step("ADD", [step("EXP", [negative], "exp"), constant("minus_one", -1.0)], "shifted", "AddOptions",
                   FusedActivationFunction=0)
    if negative_gain != 1.0:
        shifted = step("MUL", [shifted, constant("negative_gain", negative_gain)], "negative_side", "MulOptions",
                       FusedActivationFunction=0)
    positive = step("MAXIMUM", [x, constant("zero_floor", 0.0)], "positive")
    if gain != 1.0:
        positive = step("MUL", [positive, constant("gain", gain)], "positive_side", "MulOptions",
                        FusedActivationFunction=0)
    ctx.emit("ADD", [positive, shifted], [ctx.new_value(node.output[0], "float32", perm)], node, "AddOptions",
             FusedActivationFunction=0)


def _range(quant: Quantization) -> tuple[float, float]:
    scale, zero_point = quant.as_pair()
    return scale * (-128 - zero_point), scale * (127 - zero_point)
