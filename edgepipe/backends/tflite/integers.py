"""Integer and boolean tensors in the TFLite lowering: token ids, attention masks, comparisons.

Why a module of their own: int64 / int32 ONNX tensors (graph inputs included) are int32 in
TFLite, as LiteRT's index kernels want them, and bools stay bool; none of them is ever quantized.
XNNPACK has no kernel for any of their ops, so where they are emitted decides whether they split
the delegated int8 graph (`emission_order`).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe import graph

# ONNX element types held as TFLite int32 (int64 values must fit int32: token ids do)
INTEGER_ELEMENTS = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
                    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16}
NUMPY_OF = {"int32": np.int32, "bool": np.bool_}


def onnx_kind(ctx, name: str) -> str:
    """"int32" for an integer ONNX tensor, "bool" for a boolean one, "float32" otherwise."""
    if name in ctx.constants:
        kind = np.asarray(ctx.constants[name]).dtype
        return "bool" if kind == np.bool_ else "int32" if kind.kind in "iu" else "float32"
    info = ctx.infos.get(name)
    elem = info.type.tensor_type.elem_type if info is not None else 0
    return "bool" if elem == onnx.TensorProto.BOOL else "int32" if elem in INTEGER_ELEMENTS else "float32"


def integer_constant(value, dtype: str) -> np.ndarray:
    """An ONNX constant as int32 (saturated: INT64_MAX as "to the end" stays large) or bool."""
    value = np.asarray(value)
    if value.dtype.kind in "iu":
        value = np.clip(value, np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    return value.astype(NUMPY_OF[dtype])


def emission_order(ctx, quantized_dtypes) -> list[onnx.NodeProto]:
    """Graph order, except that the mask prologue comes first: nodes that read only integer or
    boolean graph inputs, constants and other prologue nodes, and that compute in int32 / bool /
    float32 (comparisons, selects, casts, the additive mask's reshapes). Emitted where the graph
    has them (inside the encoder), each would split the delegated int8 graph."""
    nodes = list(ctx.model.graph.node)
    ready = {info.name for info in graph.graph_inputs(ctx.model) if onnx_kind(ctx, info.name) != "float32"}
    if not ready or not ctx.quantized:
        return nodes
    prologue = []
    for node in nodes:
        sources = [name for name in node.input if name and name not in ctx.constants]
        if node.op_type != "Constant" and sources and all(name in ready for name in sources) and \
                ctx.lowering_for(node) is not None and ctx.node_dtype(node) not in quantized_dtypes:
            prologue.append(node)
            ready.update(o for o in node.output if o)
    first = {id(node) for node in prologue}
    return prologue + [node for node in nodes if id(node) not in first]
