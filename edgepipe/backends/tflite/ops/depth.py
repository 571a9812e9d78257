"""DepthToSpace / SpaceToDepth (NCHW) -> DEPTH_TO_SPACE / SPACE_TO_DEPTH on NHWC.

TFLite's kernels use TensorFlow's channel order, which is ONNX's DCR mode (the default). mode=CRD
(PyTorch's PixelShuffle / PixelUnshuffle order) is a fixed channel permutation. When a Conv alone
feeds a CRD DepthToSpace (a super-resolution head: conv then PixelShuffle), the permutation is
moved into the conv's output channels (weights and bias reordered, exact), so the graph keeps
DEPTH_TO_SPACE alone (`crd_into_conv`). Otherwise a GATHER over the channel axis with constant
indices reorders the channels before DEPTH_TO_SPACE or after SPACE_TO_DEPTH, exactly; XNNPACK does
not take GATHER.
Both kernels move int8 values without requantizing: outputs keep the input's quantization.
"""

from __future__ import annotations

import numpy as np

import onnx
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.tflite.lower import NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register, register_rewrite


def _mode(node) -> str:
    mode = node_attrs(node).get("mode", b"DCR")
    return mode.decode() if isinstance(mode, bytes) else mode


def check_depth(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.input[0]) != 4:
        return "only 4-D NCHW input is supported"
    if int(node_attrs(node).get("blocksize", 0)) < 1:
        return "blocksize must be a positive integer"
    if _mode(node) not in ("DCR", "CRD"):
        return f"mode '{_mode(node)}' is not DCR or CRD"
    return None


def crd_to_dcr_indices(channels: int, block: int) -> np.ndarray:
    """indices[k] = the CRD channel DEPTH_TO_SPACE expects at DCR position k = (i*b + j)*C + c."""
    out_channels = channels // (block * block)
    k = np.arange(channels)
    offset, c = k // out_channels, k % out_channels
    return (c * block * block + offset).astype(np.int32)


@register("DepthToSpace", "SpaceToDepth", check=check_depth)
def lower_depth(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    block = int(node_attrs(node)["blocksize"])
    x = ctx.get(node.input[0], dtype, NHWC)
    source = ctx.tensor(x)
    if node.op_type == "DepthToSpace" and _mode(node) == "CRD":
        reordered = ctx.temp(f"{node.name};dcr", source.shape, dtype, source.quantization)
        indices = ctx.int32_constant(f"{node.name};crd_to_dcr", crd_to_dcr_indices(source.shape[3], block))
        ctx.emit("GATHER", [x, indices], [reordered], node, "GatherOptions", Axis=3, BatchDims=0)
        x = reordered
    out = ctx.new_value(node.output[0], dtype, NHWC, source.quantization)
    if node.op_type == "DepthToSpace":
        ctx.emit("DEPTH_TO_SPACE", [x], [out], node, "DepthToSpaceOptions", BlockSize=block)
        return
    if _mode(node) == "DCR":
        ctx.emit("SPACE_TO_DEPTH", [x], [out], node, "SpaceToDepthOptions", BlockSize=block)
        return
    moved = ctx.temp(f"{node.name};dcr", ctx.tensor(out).shape, dtype, source.quantization)
    ctx.emit("SPACE_TO_DEPTH", [x], [moved], node, "SpaceToDepthOptions", BlockSize=block)
    order = np.argsort(crd_to_dcr_indices(ctx.tensor(out).shape[3], block)).astype(np.int32)
    ctx.emit("GATHER", [moved, ctx.int32_constant(f"{node.name};dcr_to_crd", order)], [out], node, "GatherOptions",
             Axis=3, BatchDims=0)


@register_rewrite
def crd_into_conv(model: onnx.ModelProto) -> None:
    """Conv -> DepthToSpace(CRD) becomes Conv(output channels in DCR order) -> DepthToSpace(DCR)."""
    outputs = {o.name for o in model.graph.output}
    consumers = graph.consumers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    taken = graph.taken_names(model)
    for node in model.graph.node:
        if node.op_type != "DepthToSpace" or node.domain not in ("", "ai.onnx") or _mode(node) != "CRD":
            continue
        conv = producers.get(node.input[0])
        if conv is None or conv.op_type != "Conv" or node.input[0] in outputs or len(consumers.get(node.input[0], [])) != 1:
            continue
        if conv.input[1] not in initializers or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in initializers):
            continue
        weights = numpy_helper.to_array(initializers[conv.input[1]])
        block = int(node_attrs(node).get("blocksize", 0))
        if block < 1 or weights.shape[0] % (block * block) or int(node_attrs(conv).get("group", 1)) != 1:
            continue
        order = crd_to_dcr_indices(weights.shape[0], block)
        for position in (1, 2):
            if position < len(conv.input) and conv.input[position]:
                value = numpy_helper.to_array(initializers[conv.input[position]])[order]
                # a fresh name: convs sharing one weight may feed DepthToSpaces of other block sizes
                name = graph.add_initializer(model, f"{conv.input[position]};dcr_order", value, taken)
                conv.input[position] = name
        for attribute in node.attribute:
            if attribute.name == "mode":
                attribute.CopyFrom(helper.make_attribute("mode", "DCR"))
