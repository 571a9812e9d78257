"""Conv (plain, depthwise, grouped) and ConvTranspose -> CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV.

Filters are transposed to TFLite's layout once at convert time ([O, H, W, I] for CONV_2D,
[1, H, W, C*mult] for DEPTHWISE_CONV_2D) and quantized per output channel. A grouped convolution
that is not depthwise is one CONV_2D whose filter has C / groups input channels: LiteRT's builtin
and reference kernels and XNNPACK (int8 and float) read the group count from that ratio, so no
SPLIT / CONCATENATION splits the delegated graph. Where groups have so few channels that
XNNPACK's kernel tiles are mostly padding, the grouped conv is written as a dense one with a
block-diagonal filter instead (`dense_pays`). A strided conv on a few input channels (an image
stem, an STFT as Conv1d) reads several adjacent columns as one wider column (`column_group`). A
depthwise conv with more taps than XNNPACK's depthwise kernels hold (7x7) is written as a grouped
CONV_2D of up to a GEMM tile of channels per group (`depthwise_group_channels`).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.spatial import (SAME, VALID, choose_padding, onnx_pads, pad_nhwc, spatial_attrs,
                                                window_problem)


def check_conv(ctx: Lowering, node) -> str | None:
    if ctx.constant(node.input[1]) is None:
        return "the weights must be a constant initializer (fold or export them as constants)"
    if len(node.input) > 2 and node.input[2] and ctx.constant(node.input[2]) is None:
        return "the bias must be a constant initializer"
    if ctx.rank(node.input[0]) != 4:
        return "only 1-D and 2-D convolutions (3-D or 4-D NCHW input) are supported"
    if window_problem(node):
        return window_problem(node)
    weights = ctx.constant(node.input[1])
    groups = node_attrs(node).get("group", 1)
    if groups > 1 and weights.shape[0] % groups:
        return f"{weights.shape[0]} output channels are not divisible by group={groups}"
    return None


def _weights_and_bias(ctx: Lowering, node, out_channels: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.asarray(ctx.constant(node.input[1]), np.float32)
    bias = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    bias = np.zeros(out_channels, np.float32) if bias is None else np.asarray(bias, np.float32)
    return weights, bias


def _int16_conv(ctx: Lowering, node) -> bool:
    """Plain and depthwise convolutions have 16x8 kernels; a grouped CONV_2D is left int8."""
    groups = node_attrs(node).get("group", 1)
    return groups == 1 or groups == ctx.dim(node.input[0], 1)


# XNNPACK's x86 AVX-512 GEMM tiles: 16 output channels; int8 input channels in steps of 8 per
# kernel tap (float in steps of 1). A grouped conv runs one GEMM per group, each padded to them.
OUTPUT_TILE, INT8_INPUT_TILE = 16, 8


def _padded(value: int, tile: int) -> int:
    return -(-value // tile) * tile


def dense_pays(in_channels: int, out_channels: int, groups: int) -> bool:
    """Whether a dense conv with a block-diagonal filter (groups times the multiply-adds) fills
    fewer padded kernel tiles than the grouped one in int8, and no more in float: the case of
    groups with a few channels each (ResNeXt-style blocks on narrow tensors), where each group's
    GEMM is mostly tile padding. Both the int8 and the float model take the same form."""
    in_group, out_group = in_channels // groups, out_channels // groups

    def tiles(input_tile: int) -> tuple[int, int]:
        dense = _padded(out_channels, OUTPUT_TILE) * _padded(in_channels, input_tile)
        return dense, groups * _padded(out_group, OUTPUT_TILE) * _padded(in_group, input_tile)

    (dense_int8, grouped_int8), (dense_float, grouped_float) = tiles(INT8_INPUT_TILE), tiles(1)
    return dense_int8 < grouped_int8 and dense_float <= grouped_float


# The most taps of XNNPACK's depthwise (unipass) kernels, int8 and float, x86 and ARM: 3x3 and
# 5x5 windows run there; a bigger one runs as a grouped GEMM with one channel per group, each tap's
# single input channel padded to the int8 input tile and the single output to the output tile.
DEPTHWISE_MAX_TAPS = 25
# (input channels per tap step, output tile) of the GEMMs a grouped conv runs: int8 with dot
# products (x86 AVX-512 VNNI 7x16c8, ARM neondot 4x16c4 / i8mm 4x16c8); float on ARM64 (6x8; x86
# AVX-512's 7x32 is wider, so what fills ARM's tile fills it too).
GROUPED_GEMM_TILES = {"int8": (INT8_INPUT_TILE, OUTPUT_TILE), "float32": (1, 8)}


def depthwise_group_channels(in_channels: int, out_channels: int, kernel, dtype: str) -> int:
    """Channels per group when a depthwise conv (multiplier 1) is better as a grouped CONV_2D: for
    kernels beyond DEPTHWISE_MAX_TAPS, the divisor of C whose groups fill the GEMM tiles best
    (padded multiply-adds per channel; fewer groups on a tie). 1: keep DEPTHWISE_CONV_2D (a kernel
    XNNPACK's depthwise kernels hold, or int16, which has no 16x8 grouped kernel)."""
    if out_channels != in_channels or kernel[0] * kernel[1] <= DEPTHWISE_MAX_TAPS or dtype not in GROUPED_GEMM_TILES:
        return 1
    input_tile, output_tile = GROUPED_GEMM_TILES[dtype]
    divisors = [d for d in range(1, in_channels + 1) if in_channels % d == 0]
    return min(divisors, key=lambda d: (_padded(d, input_tile) * _padded(d, output_tile) / d, -d))


def depthwise_as_grouped(weights: np.ndarray, per_group: int) -> np.ndarray:
    """[C, 1, kh, kw] depthwise filter -> the [C, per_group, kh, kw] grouped one: output channel c
    reads only input channel c (position c % per_group of its group), zeros elsewhere, so every
    product and sum is the depthwise conv's."""
    channels = weights.shape[0]
    grouped = np.zeros((channels, per_group, *weights.shape[2:]), weights.dtype)
    grouped[np.arange(channels), np.arange(channels) % per_group] = weights[:, 0]
    return grouped


def block_diagonal(weights: np.ndarray, groups: int) -> np.ndarray:
    """[O, C / groups, kh, kw] grouped filter -> the [O, C, kh, kw] dense one (zeros off the groups)."""
    out_channels, in_group = weights.shape[:2]
    out_group = out_channels // groups
    dense = np.zeros((out_channels, in_group * groups, *weights.shape[2:]), weights.dtype)
    for group in range(groups):
        rows = slice(group * out_group, (group + 1) * out_group)
        dense[rows, group * in_group:(group + 1) * in_group] = weights[rows]
    return dense


@register("Conv", check=check_conv, int16=_int16_conv)
def lower_conv(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    groups = node_attrs(node).get("group", 1)
    in_channels = ctx.shape(node.input[0])[1]
    weights, bias = _weights_and_bias(ctx, node, ctx.constant(node.input[1]).shape[0])
    in_hw, kernel, strides, dilations = spatial_attrs(ctx, node, weights.shape[2:])
    padding, pads = choose_padding(node, in_hw, kernel, strides, dilations)
    x = ctx.get(node.input[0], dtype, NHWC)
    explicit_pads = onnx_pads(node, in_hw, kernel, strides, dilations)
    group = column_group(in_channels, kernel[1], explicit_pads, strides, dilations, dtype) if groups == 1 else 1
    if group > 1:
        activation, out_name = ctx.fuse_activation(node)
        out = ctx.new_value(out_name, dtype, NHWC)
        _grouped_columns(ctx, node, x, weights, bias, out, explicit_pads, strides, group, activation)
        return
    if pads:
        x = pad_nhwc(ctx, node, x, pads)
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, NHWC)
    options = dict(Padding=padding, StrideH=strides[0], StrideW=strides[1], DilationHFactor=dilations[0],
                   DilationWFactor=dilations[1], FusedActivationFunction=activation)
    if groups == 1:
        _conv2d(ctx, node, x, weights, bias, out, options, dtype)
    elif groups == in_channels and depthwise_group_channels(in_channels, weights.shape[0], kernel, dtype) > 1:
        per_group = depthwise_group_channels(in_channels, weights.shape[0], kernel, dtype)
        _conv2d(ctx, node, x, depthwise_as_grouped(weights, per_group), bias, out, options, dtype)
    elif groups == in_channels:
        filter_index, bias_index = ctx.filter_and_bias(node.name, weights.transpose(1, 2, 3, 0), 3, bias, x, dtype)
        ctx.emit("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], [out], node, "DepthwiseConv2DOptions",
                 DepthMultiplier=weights.shape[0] // in_channels, **options)
    elif dense_pays(in_channels, weights.shape[0], groups):
        _conv2d(ctx, node, x, block_diagonal(weights, groups), bias, out, options, dtype)
    else:
        _conv2d(ctx, node, x, weights, bias, out, options, dtype)  # filter [O, kh, kw, C / groups]


def _column_cost(in_channels: int, kernel_w: int, left_pad: int, group: int, input_tile: int) -> int:
    """Padded multiply-adds per output pixel and filter row when `group` adjacent input columns
    are read as one column of group * C channels (the left pad grows to a multiple of the group,
    which may add one more tap); each tap's channels are padded to `input_tile`."""
    taps = -(-(kernel_w + (-left_pad) % group) // group)
    return taps * _padded(group * in_channels, input_tile)


def column_group(in_channels: int, kernel_w: int, pads, strides, dilations, dtype: str) -> int:
    """How many adjacent input columns a conv on a few channels reads as one (1: the plain conv).
    XNNPACK's int8 GEMM pads each kernel tap's channels to 8, so an image's 3 channels or an audio
    frontend's single sample channel (STFT as a strided Conv1d) waste most of the tile. Viewing g
    adjacent columns (g dividing the stride along W) as one column of g * C channels (a RESHAPE, no
    data moves) gives a conv with stride / g and about kernel / g taps along W whose taps fill the
    tile: the same values with fewer padded multiply-adds. The g with the fewest wins; on a tie the
    widest whose taps fill whole tiles (fewer, longer taps), else the narrowest (a wider padded
    view measured slower). Float pads nothing: it takes the view only where that adds no
    multiply-add (g divides the kernel) and no PAD op (an unpadded conv, as STFT convs and
    patchify stems are), and then runs fewer, longer taps. `pads`: [top, left, bottom, right]."""
    input_tile = GROUPED_GEMM_TILES.get(dtype, (None,))[0]
    if input_tile is None or in_channels >= INT8_INPUT_TILE or list(dilations) != [1, 1] or \
            (dtype != "int8" and any(pads)):
        return 1
    left_pad = pads[1]
    divisors = [g for g in range(2, strides[1] + 1) if strides[1] % g == 0]
    cost = {g: _column_cost(in_channels, kernel_w, left_pad, g, input_tile) for g in [1, *divisors]}
    best = min(divisors, key=lambda g: (cost[g], -g if (g * in_channels) % input_tile == 0 else g), default=1)
    improves = cost[best] < cost[1] if dtype == "int8" else cost[best] == cost[1]
    return best if best > 1 and improves else 1


def _grouped_columns(ctx: Lowering, node, x: int, weights, bias, out: int, pads, strides, group: int,
                     activation: int) -> None:
    """The conv on [N, H', W' / g, g * C]: pad on the [N, H, W * C] view (XNNPACK runs that fast; a
    4-D PAD no conv reads directly runs per pixel) with the left pad grown to a multiple of g, crop
    the trailing columns no window reads, then a RESHAPE grouping the columns; filter tap t of
    channel p * C + c is the original tap g * t + p - shift of channel c (zero outside the kernel)."""
    batch, height, width, channels = ctx.tensor(x).shape
    dtype = ctx.node_dtype(node)
    top, left, bottom, right = pads
    out_w = ctx.tensor(out).shape[2]
    kernel_h, kernel_w = weights.shape[2:]
    shift = (-left) % group
    taps = -(-(kernel_w + shift) // group)
    columns = (out_w - 1) * (strides[1] // group) + taps
    left, right = left + shift, group * columns - width - left - shift
    padded_h = height + top + bottom
    quantization = ctx.tensor(x).quantization
    view = ctx.temp(f"{node.name};rows", [batch, height, width * channels], dtype, quantization)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};rows_shape", ctx.tensor(view).shape)], [view], node)
    if right < 0:  # trailing input columns no window reads: crop them first
        cropped = ctx.temp(f"{node.name};cropped", [batch, height, (width + right) * channels], dtype, quantization)
        ctx.emit("SLICE", [view, ctx.int32_constant(f"{node.name};begin", [0, 0, 0]),
                           ctx.int32_constant(f"{node.name};size", ctx.tensor(cropped).shape)], [cropped], node)
        view, width, right = cropped, width + right, 0
    if top or bottom or left or right:
        padded = ctx.temp(f"{node.name};padded_rows", [batch, padded_h, (width + left + right) * channels], dtype,
                          quantization)
        ctx.emit("PAD", [view, ctx.spec.add_constant(f"{node.name};row_paddings", np.array(
            [[0, 0], [top, bottom], [left * channels, right * channels]], np.int32))], [padded], node)
        view = padded
    grouped = ctx.temp(f"{node.name};grouped", [batch, padded_h, columns, group * channels], dtype, quantization)
    ctx.emit("RESHAPE", [view, ctx.int32_constant(f"{node.name};grouped_shape", ctx.tensor(grouped).shape)],
             [grouped], node)
    grouped_weights = np.zeros((weights.shape[0], group * channels, kernel_h, taps), np.float32)
    for tap in range(taps):
        for part in range(group):
            source = group * tap + part - shift
            if 0 <= source < kernel_w:
                grouped_weights[:, part * channels:(part + 1) * channels, :, tap] = weights[:, :, :, source]
    _conv2d(ctx, node, grouped, grouped_weights, bias, out, dict(
        Padding=VALID, StrideH=strides[0], StrideW=strides[1] // group, DilationHFactor=1, DilationWFactor=1,
        FusedActivationFunction=activation), dtype)


def _conv2d(ctx: Lowering, node, x: int, weights, bias, out: int, options: dict, dtype: str, name=None) -> None:
    filter_index, bias_index = ctx.filter_and_bias(name or node.name, weights.transpose(0, 2, 3, 1), 0, bias, x,
                                                   dtype)
    ctx.emit("CONV_2D", [x, filter_index, bias_index], [out], node, "Conv2DOptions", **options)


def check_conv_transpose(ctx: Lowering, node) -> str | None:
    reason = check_conv(ctx, node)
    if reason:
        return reason
    attrs = node_attrs(node)
    if attrs.get("group", 1) != 1:
        return (f"grouped ConvTranspose (group={attrs['group']}) has no TFLite kernel (TRANSPOSE_CONV takes group 1): "
                "a TensorRT target (jetson, desktop-gpu) runs it, or re-export the upsampler as Resize + Conv "
                "or with group=1")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return "dilated ConvTranspose is not supported"
    if _transpose_padding(ctx, node) is None and _transpose_crop(ctx, node) is None:
        return "output_padding reaches past the transposed convolution's last tap; export with pads >= output_padding"
    return None


def _transpose_crop(ctx: Lowering, node) -> tuple[list[int], list[int]] | None:
    """(begin, full VALID output [H, W]) when the ONNX output is a window of the VALID output:
    explicit pads neither SAME nor VALID describes (waifu2x's 4x4 stride-2 deconv with pads 3,
    output_padding within the end pad). None when the output reaches past it."""
    attrs = node_attrs(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kernel = ctx.constant(node.input[1]).shape[2:]
    in_hw, out_hw = ctx.shape(node.input[0])[2:], ctx.shape(node.output[0])[2:]
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    full = [(in_hw[i] - 1) * strides[i] + kernel[i] for i in range(2)]
    begin = pads[:2]
    if any(begin[i] < 0 or begin[i] + out_hw[i] > full[i] for i in range(2)):
        return None
    return begin, full


def _transpose_padding(ctx: Lowering, node) -> int | None:
    """SAME or VALID when the ONNX output size and pads match one of them, else None."""
    attrs = node_attrs(node)
    weights = ctx.constant(node.input[1])
    in_hw, out_hw = ctx.shape(node.input[0])[2:], ctx.shape(node.output[0])[2:]
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    kernel = weights.shape[2:]
    if not any(pads) and all(out_hw[i] == (in_hw[i] - 1) * strides[i] + kernel[i] for i in range(2)):
        return VALID
    if all(out_hw[i] == in_hw[i] * strides[i] for i in range(2)):
        totals = [max((in_hw[i] - 1) * strides[i] + kernel[i] - out_hw[i], 0) for i in range(2)]
        expected = [totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2]
        if pads == expected or attrs.get("auto_pad", b"") in (b"SAME_UPPER", "SAME_UPPER"):
            return SAME
    return None


@register("ConvTranspose", check=check_conv_transpose, int16=True)
def lower_conv_transpose(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    weights = np.asarray(ctx.constant(node.input[1]), np.float32)  # [I, O, kh, kw]
    weights, bias = weights.transpose(1, 0, 2, 3), _weights_and_bias(ctx, node, weights.shape[1])[1]
    strides = list(node_attrs(node).get("strides", [1, 1]))
    x = ctx.get(node.input[0], dtype, NHWC)
    activation, out_name = ctx.fuse_activation(node)
    out = ctx.new_value(out_name, dtype, NHWC)
    filter_index, bias_index = ctx.filter_and_bias(node.name, weights.transpose(0, 2, 3, 1), 0, bias, x, dtype)
    padding, conv_out = _transpose_padding(ctx, node), out
    if padding is None:  # TRANSPOSE_CONV VALID, then SLICE out the window ONNX's pads leave
        begin, full = _transpose_crop(ctx, node)
        batch, _, _, channels = ctx.tensor(out).shape
        padding = VALID
        conv_out = ctx.temp(f"{node.name};uncropped", [batch, *full, channels], dtype, ctx.tensor(out).quantization)
    shape_index = ctx.int32_constant(f"{node.name};output_shape", ctx.tensor(conv_out).shape)
    ctx.emit("TRANSPOSE_CONV", [shape_index, filter_index, x, bias_index], [conv_out], node, "TransposeConvOptions",
             Padding=padding, StrideH=strides[0], StrideW=strides[1], FusedActivationFunction=activation)
    if conv_out != out:
        ctx.emit("SLICE", [conv_out, ctx.int32_constant(f"{node.name};crop_begin", [0, *begin, 0]),
                           ctx.int32_constant(f"{node.name};crop_size", ctx.tensor(out).shape)], [out], node)
