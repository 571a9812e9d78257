"""Spatial padding shared by the image ops (conv, pooling): ONNX pads -> TFLite SAME / VALID.

TFLite kernels know only SAME (TensorFlow's rule: extra padding at the end) and VALID. ONNX
pads that equal TensorFlow's SAME pads become SAME; zero pads become VALID; anything else becomes
an explicit PAD (or PADV2 with a fill value) followed by a VALID op. No op is registered here.
"""

from __future__ import annotations

import math

import numpy as np

from edgepipe.backends.tflite.lower import Lowering, node_attrs

SAME, VALID = 0, 1  # tflite.Padding values


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def onnx_pads(node, in_hw, kernel, strides, dilations) -> list[int]:
    """Explicit ONNX pads [top, left, bottom, right] after resolving auto_pad."""
    attrs = node_attrs(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [same_pads(in_hw[i], kernel[i], strides[i], dilations[i]) for i in range(2)]
        if auto_pad == "SAME_LOWER":
            pairs = [(after, before) for before, after in pairs]
        return [pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1]]
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    return list(attrs.get("pads", [0, 0, 0, 0]))


def choose_padding(node, in_hw, kernel, strides, dilations) -> tuple[int, list[int] | None]:
    """(TFLite padding mode, explicit pads [top, left, bottom, right] to apply first or None)."""
    pads = onnx_pads(node, in_hw, kernel, strides, dilations)
    if not any(pads):
        return VALID, None
    same = [same_pads(in_hw[i], kernel[i], strides[i], dilations[i]) for i in range(2)]
    if pads == [same[0][0], same[1][0], same[0][1], same[1][1]]:
        return SAME, None
    return VALID, pads


def output_size(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
    effective = (kernel - 1) * dilation + 1
    if padding == SAME:
        return math.ceil(size / stride)
    return (size - effective) // stride + 1


def spatial_attrs(ctx: Lowering, node, kernel=None):
    """(in_hw, kernel, strides, dilations) of a 2-D image op."""
    attrs = node_attrs(node)
    in_hw = ctx.shape(node.input[0])[2:]
    kernel = list(kernel if kernel is not None else attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    return in_hw, kernel, strides, dilations


def window_problem(node) -> str | None:
    """Kernel, strides and dilations below 1 (a hand-edited or hostile file): refused before any
    size arithmetic divides by them."""
    attrs = node_attrs(node)
    for name in ("kernel_shape", "strides", "dilations"):
        if any(int(v) < 1 for v in attrs.get(name, [])):
            return f"{name}={list(attrs[name])} must be positive"
    return None


def pad_nhwc(ctx: Lowering, node, x: int, pads: list[int], fill: float | None = None, rows: bool = False) -> int:
    """Pad an NHWC tensor spatially; zero fill (PAD) or a given fill value (PADV2).

    `rows` (zero fill, for a pad no convolution reads): PAD the [N, H, W * C] view instead, W's
    pads times C, with a RESHAPE on both sides. XNNPACK folds a 4-D PAD into the conv that reads
    it, but runs one in front of anything else as a copy of C values per pixel, several times
    slower than the row view's copies (benchmarks/xnnpack_op_speed.py, "padded max pool" cases)."""
    source = ctx.tensor(x)
    top, left, bottom, right = pads
    batch, height, width, channels = source.shape
    paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
    shape = [batch, height + top + bottom, width + left + right, channels]
    out = ctx.temp(f"{node.name};padded", shape, source.dtype, source.quantization)
    if fill is None and rows:
        view = ctx.temp(f"{node.name};rows", [batch, height, width * channels], source.dtype, source.quantization)
        ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};rows_shape", ctx.tensor(view).shape)], [view], node)
        padded = ctx.temp(f"{node.name};padded_rows", [batch, shape[1], shape[2] * channels], source.dtype,
                          source.quantization)
        row_paddings = np.array([[0, 0], [top, bottom], [left * channels, right * channels]], np.int32)
        ctx.emit("PAD", [view, ctx.spec.add_constant(f"{node.name};row_paddings", row_paddings)], [padded], node)
        ctx.emit("RESHAPE", [padded, ctx.int32_constant(f"{node.name};padded_shape", shape)], [out], node)
        return out
    inputs = [x, ctx.spec.add_constant(f"{node.name};paddings", paddings)]
    if fill is None:
        ctx.emit("PAD", inputs, [out], node)
        return out
    if source.dtype in ("int8", "int16"):  # lowest representable: "minus infinity" for max pooling
        fill_value = np.array(np.iinfo(source.dtype).min, source.dtype)
        inputs.append(ctx.spec.add_constant(f"{node.name};fill", fill_value, source.quantization))
    else:
        inputs.append(ctx.spec.add_constant(f"{node.name};fill", np.array(fill, np.float32)))
    ctx.emit("PADV2", inputs, [out], node)
    return out
