"""Shape ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Identity.

Reshape-like ops all become one RESHAPE to the ONNX output shape (read from shape inference,
so axes/-1/0 never need decoding). They are layout-sensitive: the input is brought to ONNX order
first, unless the permuted dims are size 1 (e.g. [N,1,1,C] after global pooling) so memory order
is already the same. Transpose never moves data: its output is the input's tensor with a new
`perm`; a consumer that needs another order gets one TRANSPOSE from the registry.
"""

from __future__ import annotations

from edgepipe.backends.tflite.lower import Lowering, identity, inverse, node_attrs
from edgepipe.backends.tflite.ops import register


def same_memory_order(shape, perm) -> bool:
    """True when a tensor laid out by `perm` has the same element order as in ONNX order."""
    non_unit = [axis for axis in perm if shape[axis] != 1]
    return non_unit == sorted(non_unit)


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def lower_reshape(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    perm = ctx.layout(name)
    if not same_memory_order(ctx.shape(name), perm):
        perm = identity(ctx.rank(name))
    x = ctx.get(name, dtype, perm)
    out_shape = ctx.shape(node.output[0])
    out = ctx.new_value(node.output[0], dtype, identity(len(out_shape)), ctx.tensor(x).quantization)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};shape", out_shape)], [out], node)


@register("Identity")
def lower_identity(ctx: Lowering, node) -> None:
    if ctx.constant(node.input[0]) is not None:
        ctx.constants[node.output[0]] = ctx.constant(node.input[0])
        return
    for value in ctx.values[node.input[0]]:
        ctx.alias(node.output[0], value.index, value.perm)


@register("Transpose")
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


@register("Concat", check=check_concat)
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
            inputs.append(ctx.requantized(index, quant, name) if dtype == "int8" else index)
    axis = perm.index(node_attrs(node)["axis"] % rank)
    ctx.emit("CONCATENATION", inputs, [out], node, "ConcatenationOptions", Axis=axis, FusedActivationFunction=0)
