"""Shape ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Identity, Tile.

Reshape-like ops all become one RESHAPE to the ONNX output shape (read from shape inference,
so axes/-1/0 never need decoding). They are layout-sensitive: the input is brought to ONNX order
first, unless the permuted dims are size 1 (e.g. [N,1,1,C] after global pooling) so memory order
is already the same, or the dims the reshape merges or splits are consecutive in memory (the
output then keeps a permuted layout: `layout_preserving_perm`). Transpose never moves data: its output is the input's tensor with a new
`perm`; a consumer that needs another order gets one TRANSPOSE from the registry. Tile (a Keras
UpSampling2D exported as Reshape -> Tile -> Reshape) keeps its input's layout: the repeats are
permuted like the tensor.
"""

from __future__ import annotations

from edgepipe.backends.tflite.lower import Lowering, identity, inverse, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.concatenation import emit_concatenation


def same_memory_order(shape, perm) -> bool:
    """True when a tensor laid out by `perm` has the same element order as in ONNX order."""
    non_unit = [axis for axis in perm if shape[axis] != 1]
    return non_unit == sorted(non_unit)


def reshape_groups(in_shape, out_shape) -> list[tuple[list[int], list[int]]] | None:
    """Pairs (input dims, output dims) of consecutive dims with equal products: the finest
    factorization of a reshape (trailing size-1 dims join the last group); None if none exists."""
    groups, i, j = [], 0, 0
    while i < len(in_shape) or j < len(out_shape):
        if i == len(in_shape) or j == len(out_shape):
            if not groups or any(d != 1 for d in [*in_shape[i:], *out_shape[j:]]):
                return None
            groups[-1][0].extend(range(i, len(in_shape)))
            groups[-1][1].extend(range(j, len(out_shape)))
            break
        ins, outs = [i], [j]
        left, right = in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while left != right:
            if left < right and i < len(in_shape):
                left, i = left * in_shape[i], i + 1
                ins.append(i - 1)
            elif right < left and j < len(out_shape):
                right, j = right * out_shape[j], j + 1
                outs.append(j - 1)
            else:
                return None
        groups.append((ins, outs))
    return groups


def layout_preserving_perm(in_shape, perm, out_shape) -> tuple[int, ...] | None:
    """Output layout of a reshape done directly on a tensor laid out by `perm`, or None.

    Possible when every group of ONNX dims the reshape merges or splits sits consecutively and in
    order in memory: e.g. an NHWC conv output [N, C, H, W] -> [N, C, H*W] is [N, H*W, C] in
    memory, and the usual Transpose(0, 2, 1) of a patch embedding then costs nothing."""
    groups = reshape_groups(list(in_shape), list(out_shape))
    if groups is None:
        return None
    placed = []
    for ins, outs in groups:
        positions = [perm.index(d) for d in ins]
        if positions != list(range(positions[0], positions[0] + len(positions))):
            return None
        placed.append((positions[0], outs))
    return tuple(d for _, outs in sorted(placed) for d in outs)


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze", int16=True)
def lower_reshape(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    perm = ctx.layout(name)
    out_shape = ctx.shape(node.output[0])
    out_perm = identity(len(out_shape))
    if not same_memory_order(ctx.shape(name), perm):
        out_perm = layout_preserving_perm(ctx.shape(name), perm, out_shape) or out_perm
        perm = perm if out_perm != identity(len(out_shape)) else identity(ctx.rank(name))
    x = ctx.get(name, dtype, perm)
    out = ctx.new_value(node.output[0], dtype, out_perm, ctx.tensor(x).quantization)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)


@register("Identity", int16=True)
def lower_identity(ctx: Lowering, node) -> None:
    if ctx.constant(node.input[0]) is not None:
        ctx.constants[node.output[0]] = ctx.constant(node.input[0])
        return
    for value in ctx.values[node.input[0]]:
        ctx.alias(node.output[0], value.index, value.perm)


@register("Transpose", int16=True)
def lower_transpose(ctx: Lowering, node) -> None:
    """out = in.transpose(q): the TFLite tensor is unchanged, its perm becomes q^-1 o in_perm."""
    rank = ctx.rank(node.input[0])
    order = list(node_attrs(node).get("perm", list(reversed(range(rank)))))
    if ctx.constant(node.input[0]) is not None:
        ctx.constants[node.output[0]] = ctx.constant(node.input[0]).transpose(order)
        return
    order_inverse = inverse(order)
    for value in list(ctx.values[node.input[0]]):
        ctx.alias(node.output[0], value.index, tuple(order_inverse[p] for p in value.perm))


def check_concat(ctx: Lowering, node) -> str | None:
    if all(ctx.constant(name) is not None for name in node.input):
        return "all inputs are constants; constant-fold the model (onnxsim) first"
    return None


@register("Concat", check=check_concat, int16=True)
def lower_concat(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.output[0])
    dynamic = [name for name in node.input if ctx.constant(name) is None]
    perm = ctx.layout(dynamic[0])
    out = ctx.new_value(node.output[0], dtype, perm)
    quant = ctx.tensor(out).quantization
    inputs = []
    for name in node.input:
        if ctx.constant(name) is not None:
            value = ctx.constant(name).astype("float32").transpose(perm)
            inputs.append(ctx.quantized_constant(f"{name};{node.name}", value, quant, dtype))
        else:
            index = ctx.get(name, dtype, perm)
            inputs.append(ctx.requantized(index, quant, name) if dtype != "float32" else index)
    emit_concatenation(ctx, inputs, out, node, perm.index(node_attrs(node)["axis"] % rank))


def check_tile(ctx: Lowering, node) -> str | None:
    if ctx.constant(node.input[1]) is None:
        return "the repeats must be a constant (fix the input shapes with --input-shape)"
    if ctx.constant(node.input[0]) is not None:
        return "the input is a constant; constant-fold the model first"
    return None


@register("Tile", check=check_tile)
def lower_tile(ctx: Lowering, node) -> None:
    """TILE on the tensor as it is held; int8 moves values, so the output keeps the input's grid."""
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    repeats = [int(r) for r in ctx.constant(node.input[1]).reshape(-1)]
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm, ctx.tensor(x).quantization)
    ctx.emit("TILE", [x, ctx.int32_constant(f"{node.name};multiples", [repeats[axis] for axis in perm])], [out], node)
