"""Where the int8 .tflite puts its grids, read from the lowering itself (for the planner).

Why: the mixed-precision planner emulates the target's int8 in ONNX Runtime
(edgepipe.accuracy.placement); for TFLite that is every tensor an int8 kernel reads or writes,
with the exact scale and zero point the file gets, plus per-channel int8 weights. Asking the
lowering (all int8, nothing written) gives those without a second copy of its rules.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe import graph, quantmath
from edgepipe.backends.qdq import WEIGHTED_OPS, weight_channel_axis
from edgepipe.backends.tflite.build import lower_model
from edgepipe.backends.tflite.fusion import fusable_activation


# the backend.* settings that change which tensors the int8 lowering puts on a grid
PLACEMENT_OPTIONS = ("target", "keep_layout", "int8_io", "share_concat_scales", "float_output_concats",
                     "wide_range_float", "float_long_recurrences")


def int8_grids(model: onnx.ModelProto, calibration, options: dict | None = None,
               activations: str = "int8") -> dict:
    """{"grids": {tensor: (scale, zero point)}, "int16": tensors whose grid is int16, "int8_nodes":
    set (every integer node), "int16_nodes": set, "weights": {node: {input: grid values}}, "fused":
    {node: partner}, "tables": {owner: nodes of a float island XNNPACK tabulates}} of the all-int8 lowering of `model`, or (`activations="int16"`) of its
    whole-model 16x8 lowering: int16 grids where LiteRT has an int16 kernel, int8 elsewhere."""
    options = {k: v for k, v in (options or {}).items() if k in PLACEMENT_OPTIONS}
    ctx = lower_model(model, calibration, {**options, "float_nodes": set(), "activations": activations},
                      quantized=True)
    known = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    grids, int16 = {}, set()
    for name, values in ctx.values.items():
        value = next((v for dtype in ("int16", "int8") for v in values if v.dtype == dtype), None)
        quant = ctx.tensor(value.index).quantization if value is not None else None
        if name in known and quant is not None and quant.scale.size == 1:
            grids[name] = (float(quant.scale[0]), int(quant.zero_point[0]))
            if value.dtype == "int16":
                int16.add(name)
    nodes = {n.name: n for n in ctx.model.graph.node}
    dtypes = {n.name: ctx.node_dtype(nodes[n.name]) for n in model.graph.node
              if n.op_type != "Constant" and n.name in nodes}
    # nodes a rewrite folded into another compute in its precision (and go float with it)
    dtypes.update({member: dtypes[owner] for member, owner in ctx.absorbed.items() if owner in dtypes})
    for owner, members in ctx.expanded.items():  # a node a rewrite replaced by several: as its members run
        kinds = {ctx.node_dtype(nodes[m]) for m in members if m in nodes}
        dtypes[owner] = next((k for k in ("int8", "int16") if k in kinds), "float32")
    int8 = {name for name, dtype in dtypes.items() if dtype in ("int8", "int16")}
    tables = {}  # float islands XNNPACK runs as an int8 lookup table: owner -> the nodes it computes
    for name, node in nodes.items():
        entry = ctx.lowering_for(node)
        if dtypes.get(name) == "float32" and entry is not None and entry.tabulated(ctx, node):
            tables[name] = tuple(sorted({name, *(m for m, owner in ctx.absorbed.items() if owner == name)}))
    fused = {}
    for node in model.graph.node:
        readers = ctx.consumers.get(node.output[0], []) if node.output else []
        if node.name in ctx.consumed or len(readers) != 1 or readers[0].name not in ctx.consumed:
            continue
        if fusable_activation(ctx, readers[0]) is not None:
            fused[node.name], fused[readers[0].name] = readers[0].name, node.name
    # the original node's weight (a rewrite may have folded constants into a copy: the same grid
    # up to the per-channel scale) as the emulation runs the original graph
    sources = {**nodes, **{n.name: n for n in model.graph.node}}
    ranges = getattr(calibration, "weight_ranges", "minmax")
    weights = {name: _int8_weights(model, sources[name], ranges) for name in int8
               if name in sources and sources[name].op_type in WEIGHTED_OPS}
    return {"grids": grids, "int16": int16, "int8_nodes": int8,
            "int16_nodes": {name for name, dtype in dtypes.items() if dtype == "int16"},
            "weights": {k: v for k, v in weights.items() if v}, "fused": fused, "tables": tables}


def _int8_weights(model: onnx.ModelProto, node: onnx.NodeProto, ranges: str) -> dict[int, np.ndarray]:
    """The constant weight of a weighted node on its per-output-channel symmetric int8 grid."""
    if len(node.input) < 2:
        return {}
    value = graph.constant_value(model, node.input[1])
    if value is None or value.dtype.kind != "f" or value.ndim < 1:
        return {}
    axis = weight_channel_axis(node, value.ndim)
    q, scales = quantmath.per_channel_symmetric(value, axis=axis, min_ratio=2.0**-20, ranges=ranges)
    shape = [1] * value.ndim
    shape[axis] = -1
    return {1: quantmath.dequantize(q, scales.reshape(shape))}


__all__ = ["int8_grids"]
