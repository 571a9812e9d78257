"""ai.onnx.ml operators that are plain arithmetic, written as the standard ops they compute.

Why: skl2onnx writes a scikit-learn StandardScaler / MinMaxScaler in front of a model as one
`ai.onnx.ml::Scaler` node (y = (x - offset) * scale, one offset and scale per feature or one for
all). No target implements the ai.onnx.ml domain, so an MLPRegressor pipeline whose every other
node is MatMul / Add / Relu was refused for its first node (the surfaces-onnx-files surrogates on
PyPI). As Sub and Mul by constants it is the same arithmetic in float32 and quantizes like any
input scaling. Export and inspect rewrite it; tree ensembles and the other ML ops stay refused.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe import graph

ML_DOMAIN = "ai.onnx.ml"
REWRITTEN_ML_OPS = ("Scaler",)


def _float_input(model: onnx.ModelProto, name: str) -> bool:
    info = graph.value_infos(model).get(name)
    return info is None or info.type.tensor_type.elem_type in (0, onnx.TensorProto.FLOAT)


def standard_from_ml(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(model with each main-graph Scaler as [Cast to float ->] Sub -> Mul, how many were rewritten);
    the model itself when it has none."""
    if not any(n.op_type in REWRITTEN_ML_OPS and n.domain == ML_DOMAIN for n in model.graph.node):
        return model, 0
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    taken = graph.taken_names(rewritten)
    nodes, count = [], 0
    for node in rewritten.graph.node:
        if node.op_type != "Scaler" or node.domain != ML_DOMAIN:
            nodes.append(node)
            continue
        attrs = graph.node_attributes(node)
        base = node.name or node.output[0]
        x = node.input[0]
        if not _float_input(rewritten, x):  # int32 / int64 / double features: Scaler outputs float
            cast = graph.fresh_name(rewritten, f"{base};float", taken)
            taken.add(cast)
            nodes.append(helper.make_node("Cast", [x], [cast], name=cast, to=onnx.TensorProto.FLOAT))
            x = cast
        offset = np.asarray(attrs.get("offset", [0.0]), np.float32)
        scale = np.asarray(attrs.get("scale", [1.0]), np.float32)
        offset_name = graph.add_initializer(rewritten, f"{base};offset", offset, taken)
        scale_name = graph.add_initializer(rewritten, f"{base};scale", scale, taken)
        centred = graph.fresh_name(rewritten, f"{base};centred", taken)
        taken.add(centred)
        nodes.append(helper.make_node("Sub", [x, offset_name], [centred], name=f"{base};sub"))
        nodes.append(helper.make_node("Mul", [centred, scale_name], [node.output[0]], name=base))
        count += 1
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    if not any(n.domain == ML_DOMAIN for _, n in _all_nodes(rewritten)):
        kept = [o for o in rewritten.opset_import if o.domain != ML_DOMAIN]
        del rewritten.opset_import[:]
        rewritten.opset_import.extend(kept)
    return rewritten, count


def _all_nodes(model: onnx.ModelProto):
    from edgepipe.backends.support import walk_nodes

    return ((name, node) for name, node, _ in walk_nodes(model))
