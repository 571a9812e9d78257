"""LayerNormalization, decomposed: MEAN, SUB, MUL (square), MEAN, ADD eps, RSQRT, MUL, MUL gamma, ADD beta;
InstanceNormalization the same over the spatial axes, GroupNormalization over [N, G, rest];
BatchNormalization left unfolded: a 1x1 DEPTHWISE_CONV_2D.

TFLite has no layer-norm kernel. The decomposition runs as a float island inside int8 models
(the registry adds DEQUANTIZE before and QUANTIZE after; XNNPACK takes it into the int8
partition). An integer form was measured and rejected (benchmarks/layernorm_int8.py,
tests/test_tflite_layer_norm_int8.py): XNNPACK takes int8 MEAN, SUB and MUL but no int8 RSQRT,
SQRT, DIV or SQUARED_DIFFERENCE and no 16x8 kernel, so the per-row statistics go back to float at
best; and its int8 elementwise passes with two tensor inputs cost more than the float ones, so
that form is slower than the island, and less accurate: the squared deviations span orders of
magnitude across rows, so a per-tensor int8 grid rounds the small ones to zero, and each int8
step adds a rounding of the full tensor. The normalized axes
[axis, rank) map to TFLite dims through the input's layout; gamma and beta are broadcast to it.
The optional Mean / InvStdDev outputs (exporters name them even when nothing reads them) are
the decomposition's own MEAN and RSQRT results: registered when read, not written otherwise.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import NHWC, Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register


def _used(ctx: Lowering, node, position: int) -> str | None:
    """Name of optional output `position` when something reads it (a node or the graph), else None."""
    name = node.output[position] if len(node.output) > position else ""
    return name if name and (ctx.consumers.get(name) or name in ctx.graph_outputs) else None


def check_layer_norm(ctx: Lowering, node) -> str | None:
    for name in node.input[1:]:
        if name and ctx.constant(name) is None:
            return "scale and bias must be constants"
    if ctx.rank(node.input[0]) > 4:
        return "more than 4 dimensions"
    return None


@register("LayerNormalization", check=check_layer_norm, int8=False)
def lower_layer_norm(ctx: Lowering, node) -> None:
    attrs = node_attrs(node)
    rank = ctx.rank(node.input[0])
    axis = int(attrs.get("axis", -1)) % rank
    beta = node.input[2] if len(node.input) > 2 and node.input[2] else None
    _normalize(ctx, node, list(range(axis, rank)), node.input[1], beta,
               statistics=(_used(ctx, node, 1), _used(ctx, node, 2)))


def check_instance_norm(ctx: Lowering, node) -> str | None:
    if len(node.input) < 3 or any(ctx.constant(name) is None for name in node.input[1:3]):
        return "scale and bias must be constants"
    if not 3 <= ctx.rank(node.input[0]) <= 4:
        return "only 3-D or 4-D NCHW input is supported"
    return None


@register("InstanceNormalization", check=check_instance_norm, int8=False)
def lower_instance_norm(ctx: Lowering, node) -> None:
    """Per (sample, channel) statistics over the spatial axes, then a per-channel scale and bias:
    the layer-norm decomposition over axes [2, rank) with [C, 1, ...] constants."""
    rank = ctx.rank(node.input[0])
    channel_shaped = []
    for position in (1, 2):
        name = f"{node.input[position]};{node.name};per_channel"
        ctx.constants[name] = np.asarray(ctx.constant(node.input[position]), np.float32).reshape(-1, *[1] * (rank - 2))
        channel_shaped.append(name)
    _normalize(ctx, node, list(range(2, rank)), channel_shaped[0], channel_shaped[1])


def _normalize(ctx: Lowering, node, axes_onnx: list[int], gamma_name: str, beta_name: str | None,
               statistics=(None, None)) -> None:
    """(x - mean) * rsqrt(var + epsilon) * gamma + beta over ONNX axes `axes_onnx`, in float32, in
    the input's layout. `statistics` names ONNX outputs that the mean / inverse std also are."""
    rank = ctx.rank(node.input[0])
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    normalized = _standardize(ctx, node, x, [perm.index(a) for a in axes_onnx], perm, statistics)
    gamma = ctx.constant_input(gamma_name, "float32", perm, rank)
    beta = ctx.constant_input(beta_name, "float32", perm, rank) if beta_name else None
    _affine(ctx, node, normalized, gamma, beta, ctx.new_value(node.output[0], "float32", perm))


def _standardize(ctx: Lowering, node, x: int, axes: list[int], perm=None, statistics=(None, None)) -> int:
    """(x - mean) * rsqrt(var + eps) over TFLite axes `axes` of float tensor `x`; the mean and the
    inverse std become the ONNX outputs named in `statistics` (layout `perm`) when given."""
    shape = ctx.tensor(x).shape
    reduced_shape = [1 if i in axes else d for i, d in enumerate(shape)]
    axes_index = ctx.int32_constant(f"{node.name};axes", sorted(axes))
    epsilon = float(node_attrs(node).get("epsilon", 1e-5))

    def step(opcode, inputs, tag, step_shape, options_type=None, output=None, **options):
        target = ctx.new_value(output, "float32", perm) if output else ctx.temp(f"{node.name};{tag}", step_shape,
                                                                                 "float32")
        ctx.emit(opcode, inputs, [target], node, options_type, **options)
        return target

    mean = step("MEAN", [x, axes_index], "mean", reduced_shape, "ReducerOptions", output=statistics[0],
                KeepDims=True)
    centered = step("SUB", [x, mean], "centered", shape, "SubOptions", FusedActivationFunction=0)
    squared = step("MUL", [centered, centered], "squared", shape, "MulOptions", FusedActivationFunction=0)
    variance = step("MEAN", [squared, axes_index], "variance", reduced_shape, "ReducerOptions", KeepDims=True)
    epsilon_index = ctx.spec.add_constant(f"{node.name};epsilon", np.float32(epsilon))
    shifted = step("ADD", [variance, epsilon_index], "variance_eps", reduced_shape, "AddOptions",
                   FusedActivationFunction=0)
    inverse_std = step("RSQRT", [shifted], "inverse_std", reduced_shape, output=statistics[1])
    return step("MUL", [centered, inverse_std], "normalized", shape, "MulOptions", FusedActivationFunction=0)


def _affine(ctx: Lowering, node, normalized: int, gamma: int, beta: int | None, out: int) -> None:
    """out = normalized * gamma (+ beta)."""
    if beta is None:
        ctx.emit("MUL", [normalized, gamma], [out], node, "MulOptions", FusedActivationFunction=0)
        return
    scaled = ctx.temp(f"{node.name};scaled", ctx.tensor(normalized).shape, "float32")
    ctx.emit("MUL", [normalized, gamma], [scaled], node, "MulOptions", FusedActivationFunction=0)
    ctx.emit("ADD", [scaled, beta], [out], node, "AddOptions", FusedActivationFunction=0)


def check_group_norm(ctx: Lowering, node) -> str | None:
    if len(node.input) < 3 or any(ctx.constant(name) is None for name in node.input[1:3]):
        return "scale and bias must be constants"
    groups = int(node_attrs(node).get("num_groups", 0))
    channels = ctx.dim(node.input[0], 1) if ctx.rank(node.input[0]) >= 3 else 0
    if ctx.rank(node.input[0]) < 3 or groups < 1 or channels % groups:
        return f"num_groups={groups} must divide the {channels} channels of a >= 3-D NCHW input"
    if node_attrs(node).get("stash_type", 1) != 1:
        return "stash_type other than float32 is not supported"
    return None


def _group_norm_lowering(per_group_affine: bool):
    def lower_group_norm(ctx: Lowering, node) -> None:
        """Statistics per (sample, group): RESHAPE [N, G, rest], standardize over the last axis,
        RESHAPE back, then the per-channel (opset 21) or per-group (opset 18) scale and bias."""
        shape = ctx.shape(node.input[0])
        rank, channels = len(shape), shape[1]
        groups = int(node_attrs(node).get("num_groups"))
        x = ctx.get(node.input[0], "float32", identity(rank))
        grouped = ctx.temp(f"{node.name};grouped", [shape[0], groups, int(np.prod(shape[1:])) // groups], "float32")
        ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};grouped_shape", ctx.tensor(grouped).shape)],
                 [grouped], node)
        standardized = _standardize(ctx, node, grouped, [2])
        back = ctx.temp(f"{node.name};ungrouped", shape, "float32")
        ctx.emit("RESHAPE", [standardized, ctx.int32_constant(f"{node.name};shape", shape)], [back], node)
        affine = []
        for position in (1, 2):
            value = np.asarray(ctx.constant(node.input[position]), np.float32).reshape(-1)
            if per_group_affine:
                value = np.repeat(value, channels // groups)
            affine.append(ctx.spec.add_constant(f"{node.name};affine{position}",
                                                value.reshape(1, channels, *[1] * (rank - 2))))
        _affine(ctx, node, back, affine[0], affine[1], ctx.new_value(node.output[0], "float32", identity(rank)))

    return lower_group_norm


register("GroupNormalization", since=18, until=20, check=check_group_norm, int8=False)(_group_norm_lowering(True))
register("GroupNormalization", since=21, check=check_group_norm, int8=False)(_group_norm_lowering(False))


def check_batch_norm(ctx: Lowering, node) -> str | None:
    if node_attrs(node).get("training_mode", 0):
        return "training_mode=1 (batch statistics) has no inference kernel"
    used = [name for name in node.output[1:] if name and (ctx.consumers.get(name) or name in ctx.graph_outputs)]
    if used:
        return f"output '{used[0]}' (running statistics, training-only) is used"
    if len(node.input) < 5 or any(ctx.constant(name) is None for name in node.input[1:5]):
        return "scale, bias, mean and variance must be constants"
    if ctx.rank(node.input[0]) != 4:
        return "only 4-D NCHW input is supported (a BatchNormalization after a Conv is folded into it)"
    return None


@register("BatchNormalization", check=check_batch_norm, int16=True)
def lower_batch_norm(ctx: Lowering, node) -> None:
    """A BatchNormalization the fold stage could not merge (after a Concat, on the input): a 1x1
    depthwise conv, so int8 gets per-channel weights and an int32 bias like any conv."""
    dtype = ctx.node_dtype(node)
    gamma, beta, mean, variance = (np.asarray(ctx.constant(name), np.float64) for name in node.input[1:5])
    epsilon = float(node_attrs(node).get("epsilon", 1e-5))
    scale = gamma / np.sqrt(variance + epsilon)
    shift = beta - mean * scale
    x = ctx.get(node.input[0], dtype, NHWC)
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, NHWC)
    weights = scale.astype(np.float32).reshape(1, 1, 1, -1)
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights, 3, shift.astype(np.float32), x, dtype)
    ctx.emit("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], [out], node, "DepthwiseConv2DOptions",
             Padding=1, StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, DepthMultiplier=1,
             FusedActivationFunction=activation)
