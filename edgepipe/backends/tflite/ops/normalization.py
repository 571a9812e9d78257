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

from onnx import helper

from edgepipe import graph
from edgepipe.backends.tflite.lower import NHWC, Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import FUSED_DOMAIN, record_absorbed, register, register_rewrite


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


@register("LayerNorm", domain=FUSED_DOMAIN, int8=False)
def lower_fused_layer_norm(ctx: Lowering, node) -> None:
    """What `fuse_decomposed_layer_norm` found: the decomposition over `axes`."""
    _normalize(ctx, node, list(node_attrs(node)["axes"]), node.input[1], node.input[2])


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
    if len(node.input) < 5:
        return "scale, bias, mean and variance are required"
    if not _constant_statistics(ctx, node) and any(ctx.rank(name) > 1 for name in node.input[1:5]):
        return "computed scale, bias, mean or variance must be 1-D (one value per channel)"
    if ctx.rank(node.input[0]) != 4:
        return "only 4-D NCHW input is supported (a BatchNormalization after a Conv is folded into it)"
    return None


def _constant_statistics(ctx: Lowering, node) -> bool:
    return all(ctx.constant(name) is not None for name in node.input[1:5])


@register("BatchNormalization", check=check_batch_norm, int8=_constant_statistics, int16=_constant_statistics)
def lower_batch_norm(ctx: Lowering, node) -> None:
    """A BatchNormalization the fold stage could not merge (after a Concat, on the input): a 1x1
    depthwise conv, so int8 gets per-channel weights and an int32 bias like any conv. With
    statistics computed in the graph (tf2onnx writes Keras LayerNormalization as a
    BatchNormalization fed its own per-row mean and variance): (x - mean) * rsqrt(var + eps) *
    scale + bias in float32 on NHWC, each [C] operand broadcast along the channel axis."""
    if not _constant_statistics(ctx, node):
        _computed_batch_norm(ctx, node)
        return
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


def _computed_batch_norm(ctx: Lowering, node) -> None:
    x = ctx.get(node.input[0], "float32", NHWC)
    gamma, beta, mean, variance = (ctx.broadcast_input(name, "float32", identity(1), 1) for name in node.input[1:5])
    shape = ctx.tensor(x).shape
    channels = [shape[3]]

    def step(opcode, inputs, tag, step_shape, options_type=None, **options):
        target = ctx.temp(f"{node.name};{tag}", step_shape, "float32")
        ctx.emit(opcode, inputs, [target], node, options_type, **options)
        return target

    epsilon = ctx.spec.add_constant(f"{node.name};epsilon", np.float32(node_attrs(node).get("epsilon", 1e-5)))
    shifted = step("ADD", [variance, epsilon], "variance_eps", channels, "AddOptions", FusedActivationFunction=0)
    scale = step("MUL", [step("RSQRT", [shifted], "inverse_std", channels), gamma], "scale", channels, "MulOptions",
                 FusedActivationFunction=0)
    centered = step("SUB", [x, mean], "centered", shape, "SubOptions", FusedActivationFunction=0)
    _affine(ctx, node, centered, scale, beta, ctx.new_value(node.output[0], "float32", NHWC))


# ----- tf2onnx's Keras LayerNormalization, decomposed --------------------------------------------
def _match_layer_norm(model, reciprocal, producers, consumers, outputs) -> tuple[dict, list] | None:
    """({x, y, gamma, beta, axes, epsilon}, member nodes) when `reciprocal` is 1 / sqrt(var + eps)
    of y = x * (r * gamma) + (beta - mean * (r * gamma)), mean and var over the same axes (any:
    Keras normalizes axis 1 of [N, C, L] as readily as the last), gamma and beta constants that
    broadcast against x."""

    def producer(name, op_type):
        node = producers.get(name)
        return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None

    def users(name):
        return [] if name in outputs else consumers.get(name, [])

    def constant(name):
        return graph.constant_value(model, name)

    def mean_of(name):  # tf2onnx writes a mean over the last axis of [N, L, C] as GlobalAveragePool
        return producer(name, "ReduceMean") or producer(name, "GlobalAveragePool")

    def reduce_axes(node, rank):
        if node.op_type == "GlobalAveragePool":
            return list(range(2, rank)) if rank >= 3 else None
        attrs = node_attrs(node)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and constant(node.input[1]) is not None:
            axes = constant(node.input[1]).reshape(-1).tolist()
        return None if axes is None or not attrs.get("keepdims", 1) else sorted(int(a) % rank for a in axes)

    root = producer(reciprocal.input[0], "Sqrt")
    shifted = root and producer(root.input[0], "Add")
    if shifted is None:
        return None
    epsilons = [constant(name) for name in shifted.input]
    var_name = next((n for n, c in zip(shifted.input, epsilons) if c is None), None)
    epsilon = next((c for c in epsilons if c is not None and c.size == 1), None)
    variance = var_name and mean_of(var_name)
    squared = variance and producer(variance.input[0], "Mul")
    centred = squared and squared.input[0] == squared.input[1] and producer(squared.input[0], "Sub")
    mean = centred and mean_of(centred.input[1])
    if not mean or epsilon is None or mean.input[0] != centred.input[0]:
        return None
    x = mean.input[0]
    info = graph.value_infos(model).get(x)
    rank = len(graph.tensor_shape(info)) if info is not None else 0
    axes = reduce_axes(mean, rank) if rank else None
    if not axes or axes != reduce_axes(variance, rank):
        return None
    scaled = users(reciprocal.output[0])
    if len(scaled) != 1 or scaled[0].op_type != "Mul":
        return None
    scale = scaled[0]
    gamma = next((n for n in scale.input if n != reciprocal.output[0] and constant(n) is not None), None)
    products = users(scale.output[0])
    if gamma is None or len(products) != 2 or any(n.op_type != "Mul" for n in products):
        return None
    of_x = next((n for n in products if x in n.input), None)
    of_mean = next((n for n in products if mean.output[0] in n.input), None)
    shift = of_mean and len(users(of_mean.output[0])) == 1 and users(of_mean.output[0])[0]
    if of_x is None or not shift or shift.op_type != "Sub" or shift.input[1] != of_mean.output[0]:
        return None
    beta = shift.input[0] if constant(shift.input[0]) is not None else None
    out = users(of_x.output[0])
    if (beta is None or len(out) != 1 or out[0].op_type != "Add"
            or set(out[0].input) != {of_x.output[0], shift.output[0]}):
        return None
    members = [mean, centred, squared, variance, shifted, root, reciprocal, scale, of_x, of_mean, shift, out[0]]
    inner = {o for m in members[:-1] for o in m.output}
    if any(name in outputs or any(u not in members for u in consumers.get(name, [])) for name in inner):
        return None
    return {"x": x, "y": out[0].output[0], "gamma": gamma, "beta": beta, "axes": axes,
            "epsilon": float(epsilon.reshape(-1)[0])}, members


@register_rewrite
def fuse_decomposed_layer_norm(model) -> None:
    """tf2onnx writes Keras LayerNormalization as mean, squared difference, variance, 1 / sqrt and
    x * s + (beta - mean * s) with s = gamma / std: in int8 the per-row 1 / std and the two large
    products that cancel each other cannot share a grid (a Magika byte classifier lost all but
    8 dB). One fused node runs the decomposition as the float island LayerNormalization gets."""
    outputs = {o.name for o in model.graph.output}
    fused = False
    while True:
        producers, consumers = graph.producers(model), graph.consumers(model)
        nodes = list(model.graph.node)
        found = next((m for n in nodes if n.op_type == "Reciprocal"
                      for m in [_match_layer_norm(model, n, producers, consumers, outputs)] if m), None)
        if found is None:
            break
        facts, members = found
        last = max(nodes.index(m) for m in members)
        norm = helper.make_node("LayerNorm", [facts["x"], facts["gamma"], facts["beta"]], [facts["y"]],
                                name=nodes[last].name, domain=FUSED_DOMAIN, axes=facts["axes"],
                                epsilon=facts["epsilon"])
        kept = [norm if i == last else n for i, n in enumerate(nodes) if i == last or n not in members]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        record_absorbed(model, [m.name for m in members], norm.name)
        fused = True
    if fused and all(entry.domain != FUSED_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
