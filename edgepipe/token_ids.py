"""Token ids in the calibration and eval data must index the model's embedding tables.

Why check before anything runs: an id past the table (a tokenizer with a larger vocabulary than
the model, a pad id of -1) makes ONNX Runtime fail inside calibration and LiteRT's GATHER refuse
the sample at run time, both far from the cause. PyTorch's nn.Embedding refuses such ids too, so
the build does the same, naming the input, the sample and the table, instead of clamping them
(a clamped id reads another token's row: a silently different model). ONNX would count a
negative id from the end; no tokenizer means that, so negative ids are refused as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from edgepipe import graph
from edgepipe.errors import UserError


# ops whose first input's values reach their output unchanged (only rearranged or repeated)
VALUE_PRESERVING = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose"}


@dataclass
class IdRange:
    """The ids an integer graph input may hold: `low..high`, bound by the Gather `node` (`rows` rows)
    read at `offset` (an Add/Sub of a constant between the input and the Gather)."""

    node: str
    rows: int
    low: int
    high: int

    def describe(self) -> str:
        if self.low == 0 and self.high == self.rows - 1:
            return f"the embedding table of '{self.node}' (ids 0..{self.rows - 1})"
        return (f"the embedding table of '{self.node}' ({self.rows} rows, read after the graph adds a constant to "
                f"the ids: ids {self.low}..{self.high})")


def _table_rows(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict, infos: dict) -> int | None:
    dims = shapes.get(node.input[0])
    if dims is None:
        value = graph.constant_value(model, node.input[0])
        declared = graph.declared_shape(infos[node.input[0]]) if node.input[0] in infos else None
        dims = list(value.shape) if value is not None else list(declared) if graph.is_static(declared) else None
    if not dims:
        return None
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0) % len(dims)
    return int(dims[axis])


def _constant_bounds(model: onnx.ModelProto, name: str) -> tuple[int, int] | None:
    value = graph.constant_value(model, name)
    if value is None or value.size == 0 or not np.issubdtype(value.dtype, np.integer):
        return None
    return int(value.min()), int(value.max())


def _next_offsets(model: onnx.ModelProto, node: onnx.NodeProto, tensor: str, low: int, high: int):
    """(low, high) offsets of `node`'s output from the graph input, or None if it does not keep ids."""
    if node.op_type == "Concat":  # every id reaches the output (a [CLS] id prepended by the graph)
        return low, high
    # not Where, Slice, Gather, Clip or Max: they may drop or replace an id (a -1 pad masked to 0),
    # so an id the table never sees would be refused
    if node.op_type in VALUE_PRESERVING and node.input[0] == tensor:
        if node.op_type == "Cast" and helper.get_attribute_value(node.attribute[0]) == onnx.TensorProto.BOOL:
            return None
        return low, high
    if node.op_type in ("Add", "Sub") and len(node.input) == 2 and tensor in node.input:
        other = node.input[1] if node.input[0] == tensor else node.input[0]
        bounds = _constant_bounds(model, other) if other != tensor else None
        if bounds is None:
            return None
        if node.op_type == "Add":
            return low + bounds[0], high + bounds[1]
        if node.input[0] == tensor:  # ids - c
            return low - bounds[1], high - bounds[0]
    return None


def embedding_tables(model: onnx.ModelProto) -> dict[str, IdRange]:
    """{integer graph input: the ids it may hold} for inputs that reach the indices of a Gather
    (an embedding table, or any tensor of static shape) directly or through value-preserving ops:
    Cast (int32 ids cast to int64, as exporters write), Reshape/Unsqueeze/Squeeze/Flatten/Expand/
    Transpose/Identity, Concat, and an Add or Sub of an integer constant (a padding offset). When several
    Gathers read one input, its range is the intersection."""
    inputs = [i.name for i in graph.graph_inputs(model)
              if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)]
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    infos = graph.value_infos(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tables: dict[str, IdRange] = {}
    for source in inputs:
        frontier, seen = [(source, 0, 0)], {source}
        while frontier:
            tensor, low, high = frontier.pop()
            for node in consumers.get(tensor, ()):
                if node.op_type == "Gather" and len(node.input) >= 2 and node.input[1] == tensor:
                    rows = _table_rows(model, node, shapes, infos)
                    if rows is None:
                        continue
                    found = IdRange(node.name, rows, -low, rows - 1 - high)
                    known = tables.get(source)
                    if known is None or found.high - found.low < known.high - known.low:
                        tables[source] = found
                    continue
                offsets = _next_offsets(model, node, tensor, low, high)
                if offsets is not None and node.output and node.output[0] not in seen:
                    seen.add(node.output[0])
                    frontier.append((node.output[0], *offsets))
    return tables


def check_token_ids(model: onnx.ModelProto, dataset, what: str) -> None:
    """Raise one UserError for the first sample of `dataset` whose token ids fall outside a table."""
    tables = embedding_tables(model)
    if not tables or dataset is None:
        return
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        for name, allowed in tables.items():
            ids = np.asarray(sample.get(name, ()))
            if ids.size and (ids.min() < allowed.low or ids.max() > allowed.high):
                bad = int(ids.min()) if ids.min() < allowed.low else int(ids.max())
                raise UserError(f"{what} sample {index}: input '{name}' holds token id {bad}, outside "
                                f"{allowed.describe()}; use the tokenizer this model was trained with, or drop "
                                "that sample")
