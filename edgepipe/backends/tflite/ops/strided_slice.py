"""A Slice with positive steps as RESHAPE + SLICE + RESHAPE, which XNNPACK delegates.

XNNPACK has no STRIDED_SLICE with a step above 1, so YOLOX's Focus stem (x[..., ::2, ::2] and its
three phase-shifted siblings) ran on the builtin kernel and split the int8 graph. Taking every
s-th element of an axis is exact as a reshape: cut a window of s * count elements that starts at
most s - 1 before the first wanted one, view the axis as [count, s], and take one column of the
s. Dims taken whole are merged into the dim before them (still one contiguous run), so a step on
H and W of an NHWC tensor is a 3-D SLICE, which the builtin kernel (up to 5-D) also runs. Slices
this cannot express (negative steps, windows past the end, more than 5 dims) keep STRIDED_SLICE.
"""

from __future__ import annotations


from edgepipe.backends.tflite.lower import Lowering

MAX_SLICE_DIMS = 5  # LiteRT's builtin SLICE kernel


def _plan(shape: list[int], bounds: list[tuple[int, int, int]]):
    """(window begins, window sizes, block shape, SLICE begin, SLICE size) or None."""
    window_begin, window_size, dims = [], [], []  # dims: (size, begin, taken) of the block view
    for dim, (start, stop, step) in zip(shape, bounds):
        count = len(range(start, stop, step))
        if step < 1 or count == 0:
            return None
        first = start if step == 1 else min(start, dim - step * count)
        if first < 0:
            return None
        window_begin.append(first)
        window_size.append(step * count if step > 1 else count)
        dims.append((count, 0, count))
        if step > 1:
            dims.append((step, start - first, 1))
    merged = [dims[0]]
    for size, begin, taken in dims[1:]:
        if begin == 0 and taken == size:  # a dim taken whole joins the one before: still one contiguous run
            last_size, last_begin, last_taken = merged[-1]
            merged[-1] = (last_size * size, last_begin * size, last_taken * size)
        else:
            merged.append((size, begin, taken))
    if len(merged) > MAX_SLICE_DIMS:
        return None
    return window_begin, window_size, [d[0] for d in merged], [d[1] for d in merged], [d[2] for d in merged]


def emit_strided_slice(ctx: Lowering, node, x: int, out: int, bounds: list[tuple[int, int, int]]) -> bool:
    """Write `out` = `x` sliced by `bounds` (TFLite dim order) without STRIDED_SLICE; False when
    the slice needs it."""
    source = ctx.tensor(x)
    plan = _plan(list(source.shape), bounds)
    if plan is None:
        return False
    window_begin, window_size, blocks_shape, begin, size = plan
    quant = source.quantization
    current = x
    if window_begin != [0] * len(window_begin) or window_size != list(source.shape):
        current = ctx.temp(f"{node.name};window", window_size, source.dtype, quant)
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};window/begin", window_begin),
                           ctx.int32_constant(f"{node.name};window/size", window_size)], [current], node,
                 "SliceOptions")
    blocks = ctx.temp(f"{node.name};blocks", blocks_shape, source.dtype, quant)
    ctx.emit("RESHAPE", [current, ctx.int32_constant(f"{node.name};blocks/shape", blocks_shape)], [blocks], node)
    picked = ctx.temp(f"{node.name};phase", size, source.dtype, quant)
    ctx.emit("SLICE", [blocks, ctx.int32_constant(f"{node.name};phase/begin", begin),
                       ctx.int32_constant(f"{node.name};phase/size", size)], [picked], node, "SliceOptions")
    ctx.emit("RESHAPE", [picked, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)
    return True
