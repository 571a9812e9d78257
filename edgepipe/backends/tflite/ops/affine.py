"""Chains of constant Mul / Add / Sub / Div on a 4-D tensor: folded into the Conv that feeds them,
or lowered as one per-channel affine op.

Why: exporters write y = a[c] * x + b[c] as separate elementwise nodes (PaddleOCR's learnable
affine blocks after convs and activations: `+ bias`, `/ 6`, `* scale`, `+ bias`; input scaling).
Lowered one by one, every node rounds onto its own int8 grid, and these roundings add up along a
deep backbone (measured on the PP-OCRv4 recognizer: they moved its spaces). `fuse_constant_affine`
folds a chain that follows a Conv into the Conv's weights and bias (exact in float, no rounding
left; edgepipe/fold/affine.py, shared with the fold stage's `fold.constant_affine`), and
replaces any other chain of two or more nodes by one `edgepipe.fused::ChannelAffine` node
(x, scale[C], shift[C]) named after the chain's last node: int8 lowers it as a single 1x1
DEPTHWISE_CONV_2D (`channel_affine`: per-channel weight, int32 bias, one rounding, delegated to
XNNPACK), float32 and int16 as MUL then ADD. One scale and one shift for the whole tensor (the
learnable affine blocks) are computed in float instead (`_int8_kernel`): XNNPACK turns the
chain DEQUANTIZE, MUL, ADD, QUANTIZE of one int8 tensor into one 256-entry lookup table, which
is faster than the depthwise conv and rounds once too.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe import graph, quantmath
from edgepipe.backends.tflite.lower import NHWC, Lowering
from edgepipe.backends.tflite.ops import FUSED_DOMAIN, record_absorbed, register, register_rewrite
from edgepipe.backends.tflite.ops.activations import channel_affine
from edgepipe.backends.tflite.writer import Quantization
from edgepipe.fold.affine import AFFINE_OPS, affine_chain, fold_into_conv, foldable_conv, tensor_shapes


def _int8_kernel(ctx: Lowering, node) -> bool:
    """Per-channel parameters: the int8 1x1 depthwise conv. One scale and one shift: False, a float
    island whose elementwise chain XNNPACK evaluates as an int8 lookup table."""
    return np.size(ctx.constant(node.input[1])) > 1 or np.size(ctx.constant(node.input[2])) > 1


def _tabulated(ctx: Lowering, node) -> bool:
    """The scalar chain's float island is one int8 lookup table under XNNPACK (counted as int8)."""
    return not _int8_kernel(ctx, node)


@register("ChannelAffine", domain=FUSED_DOMAIN, int8=_int8_kernel, int16=True, table=_tabulated)
def lower_channel_affine(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    scale = np.asarray(ctx.constant(node.input[1]), np.float64).reshape(-1)
    shift = np.asarray(ctx.constant(node.input[2]), np.float64).reshape(-1)
    per_channel = scale.size > 1 or shift.size > 1
    perm = NHWC if per_channel else ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    out = ctx.new_value(node.output[0], dtype, perm)
    if dtype == "int8":
        channel_affine(ctx, node, x, out, scale, shift, "affine")
        return
    shape = ctx.tensor(out).shape
    scaled_quant = None
    if dtype == "int16":
        amax = float(ctx.tensor(x).quantization.scale[0]) * 32767 * float(np.abs(scale).max())
        scaled_quant = Quantization.per_tensor(quantmath.symmetric_scale(max(amax, 1e-8), 16), 0)

    def constant(tag: str, values: np.ndarray) -> int:
        value = values.reshape(1, 1, 1, -1) if values.size > 1 else np.float32(values[0])
        return ctx.add_weight_constant(f"{node.name};{tag}", value, dtype)

    add = bool(np.any(shift != 0))
    scaled = ctx.temp(f"{node.name};scaled", shape, dtype, scaled_quant) if add else out
    ctx.emit("MUL", [x, constant("scale", scale)], [scaled], node, "MulOptions", FusedActivationFunction=0)
    if add:
        ctx.emit("ADD", [scaled, constant("shift", shift)], [out], node, "AddOptions", FusedActivationFunction=0)


@register_rewrite(late=True)
def fuse_constant_affine(model: onnx.ModelProto) -> None:
    """Fold every chain of constant Mul/Add/Sub/Div nodes on a 4-D tensor (intermediate results
    used by nothing else) into the Conv that feeds it, or, if none does and the chain has two or
    more nodes, replace it by one FUSED_DOMAIN ChannelAffine node."""
    outputs = {o.name for o in model.graph.output}
    shapes = tensor_shapes(model)
    producers, consumers = graph.producers(model), graph.consumers(model)
    nodes = list(model.graph.node)
    replaced: dict[int, onnx.NodeProto] = {}
    absorbed: set[int] = set()
    for node in nodes:
        if id(node) in absorbed or node.op_type not in AFFINE_OPS:
            continue
        found = affine_chain(model, node, consumers, outputs, shapes)
        if found is None:
            continue
        x, members, scale, shift = found
        conv = foldable_conv(model, producers, consumers, outputs, x)
        if conv is not None:
            fold_into_conv(model, conv, members, scale, shift)
            record_absorbed(model, [m.name for m in members], conv.name)
            absorbed.update(id(m) for m in members)
            continue
        if len(members) < 2:
            continue
        channels = max(scale.size, shift.size)
        scale_name = graph.add_initializer(model, f"{members[-1].name};affine_scale",
                                           np.broadcast_to(scale, (channels,)).astype(np.float32))
        shift_name = graph.add_initializer(model, f"{members[-1].name};affine_shift",
                                           np.broadcast_to(shift, (channels,)).astype(np.float32))
        fused = helper.make_node("ChannelAffine", [x, scale_name, shift_name], [members[-1].output[0]],
                                 name=members[-1].name, domain=FUSED_DOMAIN)
        replaced[id(members[-1])] = fused
        record_absorbed(model, [m.name for m in members], fused.name)
        absorbed.update(id(m) for m in members)
    if not absorbed:
        return
    kept = [replaced.get(id(n), n) for n in nodes if id(n) not in absorbed or id(n) in replaced]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    if replaced and all(entry.domain != FUSED_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
