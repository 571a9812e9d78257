"""Pad -> PAD (zero fill), PAD + ADD (constant fill), SLICE / FULLY_CONNECTED / CONCATENATION (reflect, edge).

Kernel rules that shape this module:
- int8 PAD / MIRROR_PAD copy integers: the output quantization is the input's, and PAD
  fills with the output zero point, so 0.0 is exact (asymmetric ranges always contain 0).
- XNNPACK delegates PAD (int8 and float) but not PADV2 (measured, LiteRT 2.3), and one
  undelegated node splits the graph. A non-zero fill c therefore becomes PAD(0) + ADD(constant
  that is c on the border, 0 inside), the same form the fold stage writes for per-channel
  borders; int8 ADD requantizes to the calibrated output range, so c need not fit the input's.
- XNNPACK does not delegate MIRROR_PAD (and its builtin kernel is slow), whose SYMMETRIC mode
  equals ONNX "edge" only for pads of 1. Reflect / edge pads are copies instead: the outer axes
  (an image's H and W) one-row SLICEs + CONCATENATION (`mirror_by_slices`), the innermost axis
  SLICE + FULLY_CONNECTED (a 0/1 matrix) + CONCATENATION (`mirror_last_axis`); any pad size.
  "wrap" has no TFLite form and is reported.
Pads are given per ONNX axis; TFLite dim i gets the pads of ONNX axis perm[i], so a 4-D image
input stays NHWC (the fold stage's Pad(0) + Add(border) in front of the first conv stays delegated).
An explicit zero Pad of H and W whose only reader is a Conv becomes that Conv's own pads
(`fold_zero_pad_into_conv`): the conv then often needs no PAD at all (TFLite SAME padding).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe import graph
from edgepipe.backends.tflite.lower import Lowering, node_attrs
from edgepipe.backends.tflite.ops import register, register_rewrite
from edgepipe.backends.tflite.ops.concatenation import emit_concatenation
from edgepipe.errors import UserError

MIRROR_MODES = ("reflect", "edge")  # copies of the input's own values (no fill)
MAX_RANK = 4


def _mode(node) -> str:
    mode = node_attrs(node).get("mode", b"constant")
    return mode.decode() if isinstance(mode, bytes) else mode


def _optional_input(ctx: Lowering, node, position: int):
    """(present, constant value or None) of an optional input."""
    if len(node.input) > position and node.input[position]:
        return True, ctx.constant(node.input[position])
    return False, None


def pad_plan(ctx: Lowering, node) -> tuple[np.ndarray | None, float | None]:
    """(pads as [rank, 2] per ONNX axis, fill value); None where not a constant."""
    rank = ctx.rank(node.input[0])
    attrs = node_attrs(node)
    if "pads" in attrs:  # opset < 11
        flat, value = np.asarray(attrs["pads"], np.int64), float(attrs.get("value", 0.0))
    else:
        flat = ctx.constant(node.input[1])
        present, constant = _optional_input(ctx, node, 2)
        scalar = float(constant.reshape(-1)[0]) if constant is not None and constant.size == 1 else None
        value = scalar if present else 0.0
    if flat is None:
        return None, value
    present, axes = _optional_input(ctx, node, 3)
    if present and axes is None:
        return None, value
    axes = [int(a) % rank for a in axes] if present else list(range(rank))
    flat = np.asarray(flat, np.int64).ravel()
    if flat.size != 2 * len(axes):  # passes the checker; indexing past the list was an internal error
        raise UserError(f"{flat.size} pads for {len(axes)} padded axes; ONNX needs two per axis (all begins, "
                        "then all ends): re-export the model")
    pads = np.zeros((rank, 2), np.int64)
    for position, axis in enumerate(axes):
        pads[axis] = flat[position], flat[position + len(axes)]
    return pads, value


def check_pad(ctx: Lowering, node) -> str | None:
    if ctx.constant(node.input[0]) is not None:
        return "the padded tensor is a constant; constant-fold the model (onnxsim) first"
    rank = ctx.rank(node.input[0])
    if rank > MAX_RANK:
        return f"{rank}-D input; TFLite PAD supports at most {MAX_RANK} dimensions"
    pads, value = pad_plan(ctx, node)
    if pads is None:
        return "pads (and axes) must be constants"
    if value is None:
        return "constant_value must be a constant scalar"
    if np.any(pads < 0):
        return "negative pads (cropping) are not supported; use Slice"
    mode = _mode(node)
    if mode not in ("constant", *MIRROR_MODES):
        return f"mode '{mode}' has no TFLite kernel; use constant, reflect or edge"
    shape = np.asarray(ctx.shape(node.input[0]))
    if mode == "reflect" and np.any(pads > (shape - 1)[:, None]):
        return "reflect pads must be smaller than the padded dimension"
    return None


def border(pads: np.ndarray, out_shape, value: float) -> np.ndarray:
    """`value` where a pad adds elements, 0 inside; size 1 along axes without pads (broadcast)."""
    padded = pads.sum(axis=1) > 0
    result = np.full([d if p else 1 for d, p in zip(out_shape, padded)], value, np.float32)
    result[tuple(slice(b, d - e) if p else slice(None)
                 for (b, e), d, p in zip(pads, result.shape, padded))] = 0.0
    return result


@register("Pad", check=check_pad, int16=lambda ctx, node: _mode(node) not in MIRROR_MODES)
def lower_pad(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    perm = ctx.layout(name)
    pads, value = pad_plan(ctx, node)
    mode = _mode(node)
    x = ctx.get(name, dtype, perm)
    source = ctx.tensor(x)
    if mode in MIRROR_MODES:
        out = ctx.new_value(node.output[0], dtype, perm, source.quantization)
        tflite_pads = pads[list(perm)]
        outer = tflite_pads.copy()
        outer[-1] = 0
        if outer.any():  # outer axes by row slices, then the innermost by a 0/1 matrix
            shape = [d + int(b) + int(e) for d, (b, e) in zip(source.shape, outer)]
            target = out if not tflite_pads[-1].any() else ctx.temp(f"{node.name};outer_padded", shape, dtype,
                                                                     source.quantization)
            mirror_by_slices(ctx, node, x, outer, mode, target)
            x = target
        if tflite_pads[-1].any():
            mirror_last_axis(ctx, node, x, tflite_pads[-1], mode, out)
        return
    paddings = ctx.int32_constant(f"{node.name};paddings", pads[list(perm)])
    if value == 0.0:
        ctx.emit("PAD", [x, paddings], [ctx.new_value(node.output[0], dtype, perm, source.quantization)], node)
        return
    # PADV2 is not delegated by XNNPACK: zero PAD, then ADD a constant that is `value` on the border
    out = ctx.new_value(node.output[0], dtype, perm)
    zero_padded = ctx.temp(f"{node.name};zero_padded", ctx.tensor(out).shape, dtype, source.quantization)
    ctx.emit("PAD", [x, paddings], [zero_padded], node)
    fill = border(pads, ctx.shape(node.output[0]), value).transpose(perm)
    ctx.emit("ADD", [zero_padded, ctx.add_weight_constant(f"{node.name};border", fill, dtype)], [out], node,
             "AddOptions", FusedActivationFunction=0)


def mirror_last_axis(ctx: Lowering, node, x: int, pads, mode: str, out: int) -> None:
    """Reflect / edge padding of the innermost axis (audio framing, an STFT's `center=True`) as
    SLICE of the edge samples -> FULLY_CONNECTED with a 0/1 matrix (a reversal, or the edge sample
    repeated) -> CONCATENATION: XNNPACK runs all three, and MIRROR_PAD would split the delegated
    graph. The copy is exact in float and in int8 (weights 127 at scale 1/127, the output on the
    input's grid)."""
    source = ctx.tensor(x)
    shape, rank, length = list(source.shape), len(source.shape), int(source.shape[-1])
    parts = []
    for side, count in (("left", int(pads[0])), ("right", int(pads[1]))):
        if count == 0:
            continue
        if mode == "reflect":  # the `count` samples next to the edge sample, reversed
            width, start, matrix = count, 1 if side == "left" else length - count - 1, np.eye(count)[::-1]
        else:  # edge: the edge sample, `count` times
            width, start, matrix = 1, 0 if side == "left" else length - 1, np.ones((count, 1))
        window = ctx.temp(f"{node.name};{side}_edge", shape[:-1] + [width], source.dtype, source.quantization)
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};{side}_begin", [0] * (rank - 1) + [start]),
                           ctx.int32_constant(f"{node.name};{side}_size", shape[:-1] + [width])], [window], node,
                 "SliceOptions")
        mirrored = ctx.temp(f"{node.name};{side}_mirror", shape[:-1] + [count], source.dtype, source.quantization)
        filter_index, bias_index = ctx.filter_and_bias(f"{node.name};{side}", matrix.astype(np.float32),
                                                       0, np.zeros(count, np.float32), window, source.dtype)
        ctx.emit("FULLY_CONNECTED", [window, filter_index, bias_index], [mirrored], node, "FullyConnectedOptions",
                 FusedActivationFunction=0, KeepNumDims=rank > 2)
        parts.append((side, mirrored))
    inputs = [m for side, m in parts if side == "left"] + [x] + [m for side, m in parts if side == "right"]
    ctx.emit("CONCATENATION", inputs, [out], node, "ConcatenationOptions", Axis=rank - 1, FusedActivationFunction=0)


def mirror_by_slices(ctx: Lowering, node, x: int, pads, mode: str, out: int) -> None:
    """Reflect / edge padding of outer axes (an image's H and W in NHWC: ReflectionPad2d in
    style-transfer and super-resolution generators) as one-row SLICEs and CONCATENATIONs, axis by
    axis: XNNPACK delegates both, while MIRROR_PAD runs on LiteRT's builtin kernel (about a
    millisecond for a small feature map) and splits the partition. Rows are copied, so the values
    are exact in float and in int8 (same grid), and edge pads of any size work too."""
    source = ctx.tensor(x)
    current, shape = x, list(source.shape)
    padded_axes = [axis for axis in range(len(shape)) if pads[axis].any()]
    for step, axis in enumerate(padded_axes):
        length, (before, after) = shape[axis], (int(pads[axis][0]), int(pads[axis][1]))
        if mode == "reflect":
            rows = [*range(before, 0, -1)], [*range(length - 2, length - 2 - after, -1)]
        else:
            rows = [0] * before, [length - 1] * after
        size = [1 if a == axis else d for a, d in enumerate(shape)]
        size_constant = ctx.int32_constant(f"{node.name};axis{axis}_size", size)
        sliced: dict[int, int] = {}  # each row once, however often it repeats (an edge pad of p rows)
        pieces = []
        for index in [*rows[0], None, *rows[1]]:
            if index is None:
                pieces.append(current)
                continue
            if index not in sliced:
                begin = [index if a == axis else 0 for a in range(len(shape))]
                sliced[index] = ctx.temp(f"{node.name};axis{axis}_row{index}", size, source.dtype, source.quantization)
                ctx.emit("SLICE", [current, ctx.int32_constant(f"{node.name};axis{axis}_begin{index}", begin),
                                   size_constant], [sliced[index]], node, "SliceOptions")
            pieces.append(sliced[index])
        shape[axis] += before + after
        last = step == len(padded_axes) - 1
        target = out if last else ctx.temp(f"{node.name};axis{axis}_padded", list(shape), source.dtype,
                                            source.quantization)
        emit_concatenation(ctx, pieces, target, node, axis)
        current = target


def _zero_spatial_pads(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int] | None:
    """[top, left, bottom, right] of a constant-mode Pad of a 4-D tensor that fills with 0 and pads
    only H and W, else None."""
    attrs = node_attrs(node)
    if _mode(node) != "constant" or len(node.input) > 3 and node.input[3]:
        return None
    if "pads" in attrs:
        flat, value = attrs["pads"], float(attrs.get("value", 0.0))
    else:
        flat = graph.constant_value(model, node.input[1]) if len(node.input) > 1 else None
        fill = graph.constant_value(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and fill is None:
            return None
        value = float(np.asarray(fill).reshape(-1)[0]) if fill is not None and np.asarray(fill).size == 1 else \
            (0.0 if fill is None else None)
    if flat is None or value != 0.0:
        return None
    flat = [int(v) for v in np.asarray(flat).ravel()]
    if len(flat) != 8 or any(flat[i] for i in (0, 1, 4, 5)) or any(v < 0 for v in flat):
        return None
    return [flat[2], flat[3], flat[6], flat[7]]


@register_rewrite
def fold_zero_pad_into_conv(model: onnx.ModelProto) -> None:
    """Pad(0, H/W only) -> Conv becomes Conv with the pads added (the Pad node goes)."""
    outputs = {o.name for o in model.graph.output}
    consumers = graph.consumers(model)
    removed = set()
    for node in model.graph.node:
        if node.op_type != "Pad" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != node.output[0]:
            continue
        conv = users[0]
        attrs = node_attrs(conv)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        pads = _zero_spatial_pads(model, node)
        if pads is None or (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
            continue
        if len(attrs.get("kernel_shape", [0, 0])) != 2:
            continue
        current = list(attrs.get("pads", [0, 0, 0, 0]))
        merged = [a + b for a, b in zip(current, pads)]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", merged)])
        conv.input[0] = node.input[0]
        removed.add(node.name)
    if removed:
        nodes = [n for n in model.graph.node if n.name not in removed]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
