"""float64 ONNX tensors -> float32 for targets without float64 kernels (arm-cpu: TFLite has none).

Why: exporters leave float64 where the framework computed in double: a decoding tail after a
`.double()` (SwiftF0's pitch Softmax / Exp), numpy constants that defaulted to float64. LiteRT has
no float64 CAST, SOFTMAX or EXP, so the model would be refused for arithmetic that float32 does
as well for a network's outputs; converters for these runtimes (onnx2tf, ai-edge-torch) do the
same. The model is retyped before calibration, so an int8 model calibrates and quantizes those
tensors exactly as it would their float32 twins.

A float64 graph input becomes a float32 input, as a float16 one does: the bundle's run.py and its
eval data cast float64 data to float32 (`double_inputs` names them in the build's warning).
Refused only where float32 changes an integer-valued result: a float64 constant holding integers
beyond 2**24 that float32 cannot represent (a sample count, a hash), named with its node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgepipe.errors import UserError
from edgepipe.stages.float16 import all_nodes, retype_graph

DOUBLE = (onnx.TensorProto.DOUBLE,)
EXACT_FLOAT32_INTEGERS = 2 ** 24  # every integer up to this magnitude is a float32


def _double_constants(model: onnx.ModelProto):
    """(constant name, node name or "", value) of every float64 initializer and Constant tensor."""
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.DOUBLE:
            yield tensor.name, "", numpy_helper.to_array(tensor)
    for node in all_nodes(model.graph):
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == onnx.TensorProto.DOUBLE:
                yield (node.output[0] if node.output else attribute.t.name), node.name, numpy_helper.to_array(attribute.t)


def _inexact_integer(value: np.ndarray) -> float | None:
    """The first integer-valued element float32 would change (beyond 2**24), or None."""
    flat = np.asarray(value, np.float64).reshape(-1)
    large = flat[np.isfinite(flat) & (np.abs(flat) > EXACT_FLOAT32_INTEGERS) & (flat == np.round(flat))]
    changed = large[large.astype(np.float32).astype(np.float64) != large]
    return float(changed[0]) if changed.size else None


def _double_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.DOUBLE}
    names |= {info.name for info in (*graph.input, *graph.output, *graph.value_info)
              if info.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE}
    for node in all_nodes(graph):
        attrs = {a.name: a for a in node.attribute}
        if (node.op_type == "Cast" and "to" in attrs and attrs["to"].i == onnx.TensorProto.DOUBLE) or \
                ("value" in attrs and attrs["value"].t.data_type == onnx.TensorProto.DOUBLE):
            names.update(node.output)
    return names


def double_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs declared float64 (the bundle takes them as float32)."""
    return [i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]


def first_float64_node(model: onnx.ModelProto) -> str:
    names = _double_names(model)
    return next((node.name or node.op_type for node in all_nodes(model.graph)
                 if names.intersection([*node.input, *node.output])), "(graph inputs / outputs)")


def to_float32(model: onnx.ModelProto, source: str, target: str) -> tuple[onnx.ModelProto, int, str]:
    """(model with every float64 tensor, type and cast made float32, how many changed, the first
    node touching one). UserError for a float64 constant whose integers float32 would change."""
    if not retype_graph(model.graph, DOUBLE, apply=False):
        return model, 0, ""
    for name, node, value in _double_constants(model):
        bad = _inexact_integer(value)
        if bad is not None:
            where = f"node '{node}', " if node else ""
            raise UserError(f"{source}: float64 constant '{name}' ({where}value {bad:.0f}) holds an integer float32 "
                            f"cannot represent and {target} has no float64 kernels: compute it in int64 (or "
                            "export it in float32) and rebuild")
    first = first_float64_node(model)
    single = onnx.ModelProto()
    single.CopyFrom(model)
    return single, retype_graph(single.graph, DOUBLE), first
