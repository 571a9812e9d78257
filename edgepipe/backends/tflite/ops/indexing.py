"""Gather (constant indices) -> GATHER or SLICE, Gather of computed indices (token ids) -> GATHER, Slice -> SLICE / STRIDED_SLICE, Split -> SPLIT / SLICEs.

All three move int8 values without requantizing, so every output keeps the input's quantization.
Axes map to TFLite dims through the input's layout (`perm.index(axis)`), so slicing or splitting
channels of an NHWC tensor needs no transpose. Slice bounds are resolved at convert time with
Python's slice semantics (negative and out-of-range starts/ends clamp as in ONNX); unit steps use
SLICE, which XNNPACK delegates; positive steps RESHAPE + SLICE, steps of -1 (torch.flip) reversed
copies (ops/strided_slice.py), others STRIDED_SLICE (with end_mask for a negative step that runs
past index 0). Split sizes are read from the inferred output shapes (attribute, input or
num_outputs all agree there); equal parts use SPLIT, unequal ones one SLICE per part (XNNPACK
delegates SPLIT and SLICE, not SPLIT_V or GATHER; a Gather of a contiguous index run is a SLICE).

A Gather whose indices are computed (an embedding lookup: a constant table read at the model's
token ids) is one GATHER with int32 indices. In int8 models the table is int8 on a grid of its
own range (per tensor: every row a token can pick, not only those the calibration data picked),
so the lookup is exact on that grid and the rows keep it (GATHER moves values); the output's
calibrated grid is not used for it. Token ids must lie in [0, rows): TFLite's GATHER refuses others
at run time, and the build checks the calibration and eval data for them (edgepipe/token_ids.py).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import NHWC, Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.ops.strided_slice import emit_reversed_slice, emit_strided_slice


def check_gather(ctx: Lowering, node) -> str | None:
    if ctx.constant(node.input[1]) is None:
        return None if ctx.onnx_kind(node.input[1]) == "int32" else "indices must be integers"
    if ctx.constant(node.input[0]) is not None:
        return "gathering from a constant with constant indices: constant-fold the model (onnxsim) first"
    return None


def lower_lookup(ctx: Lowering, node) -> None:
    """GATHER at computed int32 indices, in the ONNX order of data and indices."""
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.input[0])
    axis = int(node_attrs(node).get("axis", 0)) % rank
    indices = ctx.get(node.input[1], "int32", identity(ctx.rank(node.input[1])))
    table = ctx.constant(node.input[0])
    if table is None:
        data = ctx.get(node.input[0], dtype, identity(rank))
    elif dtype == "float32" or ctx.onnx_kind(node.input[0]) != "float32":
        data = ctx.constant_input(node.input[0], dtype)
    else:  # int8 / int16 table on its own range: exact lookups of every row
        data = ctx.add_weight_constant(f"{node.input[0]};{dtype}", table, dtype)
    out = ctx.new_value(node.output[0], dtype, identity(ctx.rank(node.output[0])), ctx.tensor(data).quantization)
    ctx.emit("GATHER", [data, indices], [out], node, "GatherOptions", Axis=axis, BatchDims=0)


@register("Gather", check=check_gather)
def lower_gather(ctx: Lowering, node) -> None:
    if ctx.constant(node.input[1]) is None:
        lower_lookup(ctx, node)
        return
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    rank = ctx.rank(name)
    axis = int(node_attrs(node).get("axis", 0)) % rank
    indices = np.asarray(ctx.constant(node.input[1]), np.int64)
    indices = np.where(indices < 0, indices + ctx.shape(name)[axis], indices).astype(np.int32)
    perm = ctx.layout(name) if indices.ndim <= 1 else identity(rank)
    x = ctx.get(name, dtype, perm)
    out_perm = perm if indices.ndim <= 1 else identity(ctx.rank(node.output[0]))
    if indices.ndim == 0:  # the axis disappears: renumber the remaining dims
        out_perm = tuple(p - (p > axis) for p in perm if p != axis)
    out = ctx.new_value(node.output[0], dtype, out_perm, ctx.tensor(x).quantization)
    gathered_shape = [1 if p == axis else d for p, d in zip(perm, ctx.tensor(x).shape)]
    target = out if indices.ndim else ctx.temp(f"{node.name};kept_axis", gathered_shape, dtype,
                                               ctx.tensor(x).quantization)
    flat = indices.reshape(-1)
    if indices.ndim <= 1 and flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
        # a contiguous run (the class token x[:, 0], a channel range): SLICE, which XNNPACK delegates
        begin = [int(flat[0]) if p == axis else 0 for p in perm]
        extent = [flat.size if p == axis else d for p, d in zip(perm, ctx.tensor(x).shape)]
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};begin", begin),
                           ctx.int32_constant(f"{node.name};size", extent)], [target], node, "SliceOptions")
    else:
        ctx.emit("GATHER", [x, ctx.int32_constant(f"{node.name};indices", flat if not indices.ndim else indices)],
                 [target], node, "GatherOptions", Axis=perm.index(axis), BatchDims=0)
    if target != out:  # scalar index: gather one slice, then drop the size-1 axis (XNNPACK fails on rank drop)
        ctx.emit("RESHAPE", [target, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)


def slice_bounds(ctx: Lowering, node) -> list[tuple[int, int, int]] | None:
    """(start, stop, step) per ONNX axis, clamped like Python slices; None if not constant."""
    shape = ctx.shape(node.input[0])
    attrs = node_attrs(node)
    if "starts" in attrs:  # opset < 10
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        values = [ctx.constant(n) if n else None for n in list(node.input[1:]) + [""] * (5 - len(node.input))]
        if any(v is None for v, n in zip(values, list(node.input[1:])) if n):
            return None
        starts, ends, axes, steps = values
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    bounds = [(0, d, 1) for d in shape]
    for start, end, axis, step in zip(np.ravel(starts), np.ravel(ends), np.ravel(axes), np.ravel(steps)):
        axis = int(axis) % len(shape)
        if int(step) == 0:  # invalid in ONNX; slice().indices() would raise (check_slice names it)
            bounds[axis] = (0, 0, 0)
            continue
        clamp = lambda v: int(max(min(int(v), 2**62), -2**62))  # noqa: E731  (INT64_MAX means "to the end")
        bounds[axis] = slice(clamp(start), clamp(end), int(step)).indices(shape[axis])
    return bounds


def check_slice(ctx: Lowering, node) -> str | None:
    bounds = slice_bounds(ctx, node)
    if bounds is None:
        return "starts, ends, axes and steps must be constants"
    if any(step == 0 for _, _, step in bounds):
        return "a step of 0 is invalid"
    return None


@register("Slice", check=check_slice, int16=True)
def lower_slice(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], dtype, perm)
    bounds = [slice_bounds(ctx, node)[p] for p in perm]
    out = ctx.new_value(node.output[0], dtype, perm, ctx.tensor(x).quantization)
    begin = [start for start, _, _ in bounds]
    if all(step == 1 for _, _, step in bounds):
        size = [max(stop - start, 0) for start, stop, _ in bounds]
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};begin", begin),
                           ctx.int32_constant(f"{node.name};size", size)], [out], node, "SliceOptions")
        return
    if emit_strided_slice(ctx, node, x, out, bounds) or emit_reversed_slice(ctx, node, x, out, bounds):
        return
    end_mask = sum(1 << i for i, (_, stop, _) in enumerate(bounds) if stop < 0)
    ctx.emit("STRIDED_SLICE", [x, ctx.int32_constant(f"{node.name};begin", begin),
                               ctx.int32_constant(f"{node.name};end", [max(stop, 0) for _, stop, _ in bounds]),
                               ctx.int32_constant(f"{node.name};strides", [s for _, _, s in bounds])],
             [out], node, "StridedSliceOptions", BeginMask=0, EndMask=end_mask, EllipsisMask=0, NewAxisMask=0,
             ShrinkAxisMask=0)


MAX_DELEGATED_SPLITS = 4  # XNNPACK has 2-, 3- and 4-way splits; a wider SPLIT stays on the builtin kernel


@register("Split")
def lower_split(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    name = node.input[0]
    perm = ctx.layout(name)
    if perm not in (identity(len(perm)), NHWC):
        perm = identity(len(perm))  # one TRANSPOSE here, not one per output (q, k, v of attention)
    axis = int(node_attrs(node).get("axis", 0)) % ctx.rank(name)
    x = ctx.get(name, dtype, perm)
    outputs = [ctx.new_value(o, dtype, perm, ctx.tensor(x).quantization) for o in node.output]
    sizes = [ctx.shape(o)[axis] for o in node.output]
    tflite_axis = ctx.int32_constant(f"{node.name};axis", perm.index(axis))
    if len(set(sizes)) == 1 and len(sizes) <= MAX_DELEGATED_SPLITS:
        ctx.emit("SPLIT", [tflite_axis, x], outputs, node, "SplitOptions", NumSplits=len(sizes))
        return
    full = ctx.tensor(x).shape
    for k, (out, size) in enumerate(zip(outputs, sizes)):  # SPLIT_V is not delegated: one SLICE per part
        begin = [sum(sizes[:k]) if p == axis else 0 for p in perm]
        extent = [size if p == axis else d for p, d in zip(perm, full)]
        ctx.emit("SLICE", [x, ctx.int32_constant(f"{node.name};begin{k}", begin),
                           ctx.int32_constant(f"{node.name};size{k}", extent)], [out], node, "SliceOptions")
