"""Token ids in the calibration and eval data must index the model's embedding tables.

Why check before anything runs: an id past the table (a tokenizer with a larger vocabulary than
the model, a pad id of -1) makes ONNX Runtime fail inside calibration and LiteRT's GATHER refuse
the sample at run time, both far from the cause. PyTorch's nn.Embedding refuses such ids too, so
the build does the same, naming the input, the sample and the table, instead of clamping them
(a clamped id reads another token's row: a silently different model). ONNX would count a
negative id from the end; no tokenizer means that, so negative ids are refused as well.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe import graph
from edgepipe.errors import UserError


def embedding_tables(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """{integer graph input: (Gather node, rows)} for inputs read directly as the indices of a
    Gather (an embedding table, or any tensor of static shape; the smallest when several Gathers
    read the same input)."""
    inputs = {i.name for i in graph.graph_inputs(model)
              if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)}
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    infos = graph.value_infos(model)
    tables: dict[str, tuple[str, int]] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in inputs:
            continue
        dims = shapes.get(node.input[0])
        if dims is None:
            value = graph.constant_value(model, node.input[0])
            declared = graph.declared_shape(infos[node.input[0]]) if node.input[0] in infos else None
            dims = list(value.shape) if value is not None else list(declared) if graph.is_static(declared) else None
        if not dims:
            continue
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0) % len(dims)
        if node.input[1] not in tables or dims[axis] < tables[node.input[1]][1]:
            tables[node.input[1]] = (node.name, int(dims[axis]))
    return tables


def check_token_ids(model: onnx.ModelProto, dataset, what: str) -> None:
    """Raise one UserError for the first sample of `dataset` whose token ids fall outside a table."""
    tables = embedding_tables(model)
    if not tables or dataset is None:
        return
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        for name, (node, rows) in tables.items():
            ids = np.asarray(sample.get(name, ()))
            if ids.size and (ids.min() < 0 or ids.max() >= rows):
                bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
                raise UserError(f"{what} sample {index}: input '{name}' holds token id {bad}, outside the embedding "
                                f"table of '{node}' (ids 0..{rows - 1}); use the tokenizer this model was trained "
                                "with, or drop that sample")
