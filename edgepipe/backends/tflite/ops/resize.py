"""Resize / Upsample (2-D, NCHW) -> RESIZE_NEAREST_NEIGHBOR or RESIZE_BILINEAR on NHWC.

TFLite resize kernels know two flags, `align_corners` and `half_pixel_centers`, where ONNX has a
coordinate_transformation_mode and (for nearest) a nearest_mode. Instead of a table of which
combinations agree (they do for some scale factors only: asymmetric + round_prefer_floor equals
TFLite's floor for 2x but not for 4x), the lowering computes, at convert time, the source
coordinate of every output row and column both ways in float64 and picks the first TFLite flag
pair that gives the same sampling; no match is reported as unsupported. Kernel rules:
- int8 resize kernels interpolate raw integers: the output quantization is the input's.
- align_corners with a scale whose product with the input size is not an integer is refused:
  the ONNX spec divides by the unrounded output length there, ONNX Runtime by the rounded one.
- The size input is an int32 [new_height, new_width] constant; the output size comes from ONNX
  shape inference, so scales and sizes inputs (or Upsample's attribute) need no decoding.
- XNNPACK (LiteRT 2.3) delegates no RESIZE_NEAREST_NEIGHBOR: integer nearest upscaling (FPN and
  U-Net decoders) is written as CONCATENATION + RESHAPE instead (`repeat_pixels`).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register

OPCODES = {"nearest": "RESIZE_NEAREST_NEIGHBOR", "linear": "RESIZE_BILINEAR"}
OPTIONS = {"nearest": "ResizeNearestNeighborOptions", "linear": "ResizeBilinearOptions"}
FLAGS = [(False, False), (False, True), (True, False)]  # (align_corners, half_pixel_centers)
NEAREST = {
    "round_prefer_floor": lambda x: np.ceil(x - 0.5),
    "round_prefer_ceil": lambda x: np.floor(x + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _text(value, default: str) -> str:
    value = default if value is None else value
    return value.decode() if isinstance(value, bytes) else value


def _scales(ctx: Lowering, node) -> list[float] | None:
    """ONNX per-axis scales (N, C, H, W) when given as a constant, else None (sizes given)."""
    attrs = node_attrs(node)
    if "scales" in attrs:  # Upsample-7
        return list(attrs["scales"])
    position = 1 if node.op_type == "Upsample" or len(node.input) == 2 else 2
    if len(node.input) > position and node.input[position]:
        value = ctx.constant(node.input[position])
        if value is not None and value.size == ctx.rank(node.input[0]):
            return [float(v) for v in value.ravel()]
    return None


def _onnx_sampling(kind: str, mode: str, rounding, out_size: int, in_size: int, scale: float) -> np.ndarray:
    """What ONNX samples for each output index: a source index (nearest) or coordinate (linear)."""
    out = np.arange(out_size, dtype=np.float32)
    scale = np.float32(scale)
    if mode == "asymmetric":
        x = out / scale
    elif mode == "align_corners":
        x = out * np.float32((in_size - 1) / max(out_size - 1, 1))
    elif mode == "pytorch_half_pixel" and out_size == 1:
        x = out * 0
    elif mode == "tf_half_pixel_for_nn":
        x = (out + np.float32(0.5)) / scale
    else:  # half_pixel, pytorch_half_pixel
        x = (out + np.float32(0.5)) / scale - np.float32(0.5)
    return np.clip(x if kind == "linear" else rounding(x), 0, in_size - 1)


def _tflite_sampling(kind: str, align_corners: bool, half_pixel: bool, out_size: int, in_size: int) -> np.ndarray:
    """The same for TFLite's kernels (float32 arithmetic, as in reference_ops)."""
    out = np.arange(out_size, dtype=np.float32)
    scale = np.float32((in_size - 1) / (out_size - 1) if align_corners and out_size > 1 else in_size / out_size)
    half = np.float32(0.5 if half_pixel else 0.0)
    if kind == "linear":
        return np.clip((out + half) * scale - half, 0, in_size - 1)
    x = (out + half) * scale
    index = np.sign(x) * np.floor(np.abs(x) + np.float32(0.5)) if align_corners else np.floor(x)  # std::round
    return np.clip(index, 0, in_size - 1)


def resize_plan(ctx: Lowering, node) -> tuple[str, tuple[bool, bool] | None]:
    """(mode, TFLite (align_corners, half_pixel_centers) sampling exactly as ONNX, or None)."""
    attrs = node_attrs(node)
    kind = _text(attrs.get("mode"), "nearest")
    legacy = node.op_type == "Upsample" or len(node.input) == 2
    transform = _text(attrs.get("coordinate_transformation_mode"), "asymmetric" if legacy else "half_pixel")
    rounding = NEAREST.get(_text(attrs.get("nearest_mode"), "floor" if legacy else "round_prefer_floor"))
    in_hw, out_hw = ctx.shape(node.input[0])[2:], ctx.shape(node.output[0])[2:]
    scales = _scales(ctx, node)
    scales = scales[2:] if scales else [o / i for o, i in zip(out_hw, in_hw)]
    if kind not in OPCODES or rounding is None:
        return kind, None
    for flags in FLAGS:
        if all(np.allclose(_onnx_sampling(kind, transform, rounding, o, i, s), _tflite_sampling(kind, *flags, o, i),
                           rtol=0, atol=1e-5) for i, o, s in zip(in_hw, out_hw, scales)):
            return kind, flags
    return kind, None


def check_resize(ctx: Lowering, node) -> str | None:
    attrs = node_attrs(node)
    if ctx.rank(node.input[0]) != 4:
        return "only 2-D resizing of 4-D NCHW tensors is supported"
    if ctx.shape(node.input[0])[:2] != ctx.shape(node.output[0])[:2]:
        return "resizing the batch or channel axis is not supported"
    if attrs.get("antialias", 0):
        return "antialias=1 has no TFLite kernel"
    for position in range(1, len(node.input)):
        if node.input[position] and ctx.constant(node.input[position]) is None:
            return "roi, scales and sizes must be constants"
    transform = _text(attrs.get("coordinate_transformation_mode"), "half_pixel")
    if transform == "tf_crop_and_resize":
        return "tf_crop_and_resize has no TFLite kernel"
    in_hw, out_hw, scales = ctx.shape(node.input[0])[2:], ctx.shape(node.output[0])[2:], _scales(ctx, node)
    if transform == "align_corners" and scales:
        for size, scale, out in zip(in_hw, scales[2:], out_hw):
            if abs(size * scale - out) > 1e-6 * max(out, 1):
                return (f"align_corners with scale {scale:g}: {size} x {scale:g} = {size * scale:g} is not an integer, "
                        "and ONNX samples with that unrounded length where ONNX Runtime uses the rounded "
                        f"{out}; give sizes instead of scales")
    kind, flags = resize_plan(ctx, node)
    if kind not in OPCODES:
        return f"mode '{kind}' has no TFLite kernel; use nearest or linear"
    if flags is None:
        return (f"{transform} sampling (nearest_mode {_text(attrs.get('nearest_mode'), 'round_prefer_floor')}) "
                "at this scale matches no TFLite align_corners/half_pixel_centers setting")
    return None


def repeat_factors(ctx: Lowering, node, flags) -> tuple[int, int] | None:
    """(fh, fw) when this nearest resize samples source index i // f on both axes (integer
    upscaling), else None."""
    in_hw, out_hw = ctx.shape(node.input[0])[2:], ctx.shape(node.output[0])[2:]
    if any(o % i for i, o in zip(in_hw, out_hw)):
        return None
    factors = tuple(o // i for i, o in zip(in_hw, out_hw))
    for i, o, f in zip(in_hw, out_hw, factors):
        if not np.array_equal(_tflite_sampling("nearest", *flags, o, i), np.arange(o) // f):
            return None
    return factors


def _prime_factors(value: int) -> list[int]:
    factors, divisor = [], 2
    while value > 1:
        while value % divisor == 0:
            factors.append(divisor)
            value //= divisor
        divisor += 1
    return factors


def repeat_pixels(ctx: Lowering, node, x: int, out: int, factors: tuple[int, int]) -> None:
    """Integer nearest upscaling as CONCATENATION + RESHAPE (XNNPACK delegates both; it takes no
    RESIZE_NEAREST_NEIGHBOR, int8 or float): k copies side by side along channels reshape to k
    repeats of every pixel along the width; the height is repeated the same way one level up.
    Factors go in prime steps (concatenations of at most a few inputs)."""
    quant = ctx.tensor(x).quantization
    dtype = ctx.tensor(x).dtype
    n, h, w, c = ctx.tensor(x).shape
    current, step = x, 0

    def emit(opcode, inputs, shape, options_type=None, **options):
        nonlocal step
        step += 1
        target = ctx.temp(f"{node.name};repeat{step}", shape, dtype, quant)
        ctx.emit(opcode, inputs, [target], node, options_type, **options)
        return target

    def reshape(index, shape):
        return emit("RESHAPE", [index, ctx.int32_constant(f"{node.name};repeat{step + 1}/shape", shape)], shape)

    for k in _prime_factors(factors[1]):
        tiled = emit("CONCATENATION", [current] * k, [n, h, w, k * c], "ConcatenationOptions", Axis=3,
                     FusedActivationFunction=0)
        w *= k
        current = reshape(tiled, [n, h, w, c])
    for k in _prime_factors(factors[0]):
        rows = reshape(current, [n, h, 1, w * c])
        tiled = emit("CONCATENATION", [rows] * k, [n, h, k, w * c], "ConcatenationOptions", Axis=2,
                     FusedActivationFunction=0)
        h *= k
        current = reshape(tiled, [n, h, w, c])
    ctx.emit("RESHAPE", [current, ctx.int32_constant(f"{node.name};shape", [n, h, w, c])], [out], node)


@register("Resize", "Upsample", check=check_resize, int16=True)
def lower_resize(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    kind, (align_corners, half_pixel) = resize_plan(ctx, node)
    x = ctx.get(node.input[0], dtype, NHWC)
    out = ctx.new_value(node.output[0], dtype, NHWC, ctx.tensor(x).quantization)
    factors = repeat_factors(ctx, node, (align_corners, half_pixel)) if kind == "nearest" else None
    if factors is not None and factors != (1, 1):
        repeat_pixels(ctx, node, x, out, factors)
        return
    size = ctx.int32_constant(f"{node.name};size", ctx.shape(node.output[0])[2:])
    ctx.emit(OPCODES[kind], [x, size], [out], node, OPTIONS[kind], AlignCorners=align_corners,
             HalfPixelCenters=half_pixel)

