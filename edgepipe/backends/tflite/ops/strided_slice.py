"""A Slice with positive steps as RESHAPE + SLICE + RESHAPE, which XNNPACK delegates.

XNNPACK has no STRIDED_SLICE with a step above 1, so YOLOX's Focus stem (x[..., ::2, ::2] and its
three phase-shifted siblings) ran on the builtin kernel and split the int8 graph. Taking every
s-th element of an axis is exact as a reshape: cut a window of s * count elements that starts at
most s - 1 before the first wanted one, view the axis as [count, s], and take one column of the
s. Dims taken whole are merged into the dim before them (still one contiguous run), so a step on
H and W of an NHWC tensor is a 3-D SLICE, which the builtin kernel (up to 5-D) also runs. Slices
this cannot express (windows past the end, more than 5 dims) keep STRIDED_SLICE; steps of -1 (a
flip) are reversed copies (`emit_reversed_slice`), other negative steps keep STRIDED_SLICE.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops.concatenation import emit_concatenation

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


MAX_ROW_COPIES = 64  # one reversal pass: this many one-row SLICEs at most
MAX_REVERSAL_MATRIX = 2048  # a reversed innermost axis: an L x L 0/1 matrix


def row_factors(length: int) -> list[int] | None:
    """Factors of `length`, each <= MAX_ROW_COPIES, fewest first-fit (640 -> [64, 10]); None for a
    length with a prime factor above it. Reversing an axis viewed as [f1, f2, ...] is reversing
    each of those axes: index i1 * f2 + i2 goes to (f1 - 1 - i1) * f2 + (f2 - 1 - i2)."""
    factors, rest = [], length
    while rest > 1:
        factor = next((f for f in range(min(rest, MAX_ROW_COPIES), 1, -1) if rest % f == 0), None)
        if factor is None:
            return None
        factors.append(factor)
        rest //= factor
    return factors


def emit_reversed_slice(ctx: Lowering, node, x: int, out: int, bounds: list[tuple[int, int, int]]) -> bool:
    """Write `out` = `x` sliced by `bounds` with steps of +1 / -1 (torch.flip, `x[..., ::-1]`)
    without STRIDED_SLICE, which XNNPACK does not delegate: SLICE the window, then reverse each
    flipped axis, the innermost by FULLY_CONNECTED with an anti-diagonal 0/1 matrix, an outer one by
    one-row SLICEs concatenated in reverse order (a long one viewed as [f1, f2, ...], each factor
    reversed the same way: an image's 640 columns are 64 + 10 slices). Both copy values exactly
    (int8: weights 127 at scale 1/127, the output on the input's grid). False when the slice needs
    STRIDED_SLICE."""
    source = ctx.tensor(x)
    shape, rank, quant = list(source.shape), len(source.shape), source.quantization
    if any(step not in (1, -1) for _, _, step in bounds) or all(step == 1 for _, _, step in bounds):
        return False
    begin, size = [], []
    for start, stop, step in bounds:
        count = len(range(start, stop, step))
        begin.append(start if step == 1 else start - count + 1)
        size.append(count)
    flipped = [axis for axis, (_, _, step) in enumerate(bounds) if step == -1 and size[axis] > 1]
    if 0 in size or (rank - 1 in flipped and size[-1] > MAX_REVERSAL_MATRIX):
        return False
    if any(row_factors(size[a]) is None for a in flipped if a != rank - 1):
        return False
    current = x
    if begin != [0] * rank or size != shape or not flipped:
        current = out if not flipped else ctx.temp(f"{node.name};window", size, source.dtype, quant)
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};window/begin", begin),
                           ctx.int32_constant(f"{node.name};window/size", size)], [current], node, "SliceOptions")
    for position, axis in enumerate(flipped):
        target = out if position == len(flipped) - 1 else ctx.temp(f"{node.name};flipped{axis}", size,
                                                                    source.dtype, quant)
        if axis == rank - 1:
            matrix = np.eye(size[axis], dtype=np.float32)[::-1].copy()
            filter_index, bias_index = ctx.filter_and_bias(f"{node.name};reversal", matrix, 0,
                                                           np.zeros(size[axis], np.float32), current, source.dtype)
            ctx.emit("FULLY_CONNECTED", [current, filter_index, bias_index], [target], node,
                     "FullyConnectedOptions", FusedActivationFunction=0, KeepNumDims=rank > 2)
        elif len(row_factors(size[axis])) == 1:
            _reverse_rows(ctx, node, current, axis, target, f"axis{axis}")
        else:
            _reverse_factored(ctx, node, current, axis, target)
        current = target
    return True


def _reverse_factored(ctx: Lowering, node, x: int, axis: int, out: int) -> None:
    """Reverse a long outer axis on the [outer, f1, f2, ..., inner] view, one factor at a time."""
    source = ctx.tensor(x)
    shape = list(source.shape)
    factors = row_factors(shape[axis])
    view = [int(np.prod(shape[:axis])), *factors, int(np.prod(shape[axis + 1:]))]
    current = ctx.temp(f"{node.name};axis{axis}_factored", view, source.dtype, source.quantization)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};axis{axis}_factored_shape", view)], [current], node)
    for k in range(1, len(factors) + 1):
        target = ctx.temp(f"{node.name};axis{axis}_factor{k}", view, source.dtype, source.quantization)
        _reverse_rows(ctx, node, current, k, target, f"axis{axis}_factor{k}")
        current = target
    ctx.emit("RESHAPE", [current, ctx.int32_constant(f"{node.name};axis{axis}_shape", shape)], [out], node)


def _reverse_rows(ctx: Lowering, node, x: int, axis: int, out: int, label: str) -> None:
    """`out` = `x` with the rows of `axis` in reverse order: one-row SLICEs, then CONCATENATION."""
    source = ctx.tensor(x)
    shape, rank = list(source.shape), len(source.shape)
    row = [1 if a == axis else d for a, d in enumerate(shape)]
    rows = []
    for index in reversed(range(shape[axis])):
        piece = ctx.temp(f"{node.name};{label}_row{index}", row, source.dtype, source.quantization)
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};{label}_begin{index}",
                                                 [index if a == axis else 0 for a in range(rank)]),
                           ctx.int32_constant(f"{node.name};{label}_size", row)], [piece], node, "SliceOptions")
        rows.append(piece)
    emit_concatenation(ctx, rows, out, node, axis)
