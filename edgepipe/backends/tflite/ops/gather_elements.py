"""GatherElements -> GATHER_ND at full coordinates (constant, or built from constant index grids).

TFLite has no GatherElements kernel. out[i0, .., ik, .., in] = data[i0, .., idx[i0, .., in], .., in]
is GATHER_ND of data at coordinates whose components are the output position everywhere but
along `axis`, where they are the index. With constant indices the coordinates are one constant.
With computed indices (SwiftF0 reads the nine pitch bins around its ArgMax) each non-axis
component is a constant grid (arange broadcast over the index shape) concatenated with the
indices in int32; a FLOOR_MOD by the axis length first makes ONNX's negative indices (counted from
the end) the positive ones GATHER_ND takes (it refuses out-of-range ones at run time; FLOOR_MOD
leaves a valid index unchanged).

GATHER_ND moves values, so int8 data keeps its grid and the output takes the data's quantization.
XNNPACK delegates neither GATHER_ND nor the int32 index arithmetic: the op and its coordinates run
on LiteRT's builtin kernels (as GATHER does for Gather of computed indices).
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register


def _axis(ctx: Lowering, node) -> int:
    return int(node_attrs(node).get("axis", 0)) % ctx.rank(node.input[0])


def check_gather_elements(ctx: Lowering, node) -> str | None:
    if ctx.onnx_kind(node.input[1]) != "int32":
        return "indices must be integers"
    indices = ctx.constant(node.input[1])
    if indices is not None:
        length = ctx.shape(node.input[0])[_axis(ctx, node)]
        if np.any((indices < -length) | (indices >= length)):
            return f"constant indices outside [-{length}, {length}) along the gathered axis"
    return None


def _grids(shape: list[int]) -> list[np.ndarray]:
    """Per dim, the position along it at every point of `shape` (np.indices), each [*shape, 1]."""
    return [grid[..., None].astype(np.int32) for grid in np.indices(shape, dtype=np.int32)]


@register("GatherElements", check=check_gather_elements)
def lower_gather_elements(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    rank, axis = ctx.rank(node.input[0]), _axis(ctx, node)
    length = ctx.shape(node.input[0])[axis]
    shape = ctx.shape(node.input[1])
    data = ctx.get(node.input[0], dtype, identity(rank))
    out = ctx.new_value(node.output[0], dtype, identity(rank), ctx.tensor(data).quantization)
    grids = _grids(shape)
    constant = ctx.constant(node.input[1])
    if constant is not None:
        grids[axis] = (np.asarray(constant, np.int64) % length).astype(np.int32)[..., None]
        coordinates = ctx.int32_constant(f"{node.name};coordinates", np.concatenate(grids, axis=-1))
    else:
        indices = ctx.get(node.input[1], "int32", identity(rank))
        wrapped = ctx.temp(f"{node.name};wrapped", shape, "int32")
        ctx.emit("FLOOR_MOD", [indices, ctx.int32_constant(f"{node.name};length", np.int32(length))], [wrapped], node)
        column = ctx.temp(f"{node.name};column", [*shape, 1], "int32")
        ctx.emit("RESHAPE", [wrapped, ctx.int32_constant(f"{node.name};column_shape", [*shape, 1])], [column], node)
        parts = [column if d == axis else ctx.int32_constant(f"{node.name};grid{d}", grids[d]) for d in range(rank)]
        coordinates = ctx.temp(f"{node.name};coordinates", [*shape, rank], "int32")
        ctx.emit("CONCATENATION", parts, [coordinates], node, "ConcatenationOptions", Axis=rank,
                 FusedActivationFunction=0)
    ctx.emit("GATHER_ND", [data, coordinates], [out], node)
