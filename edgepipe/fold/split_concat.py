"""Move a Split in front of the Concat (and Reshape) that built its input, exact in float.

Why: a detector head concatenates branches with very different ranges and splits them apart
again later; YOLOv8's head concatenates each level's box logits (64 channels) with its class
logits, flattens, concatenates the levels and only then splits boxes from classes. In an int8
graph every tensor has one grid, so the box logits live on a grid sized for class logits near
-20 and lose most of their steps before the DFL softmax reads them. Split first, then Concat
per piece: each piece's Concat holds only like ranges, and a Split that undoes a Concat on the
same axis disappears (its outputs are the Concat's inputs). Only Splits with constant sizes
whose input feeds nothing else are moved, so no tensor is computed twice.

Rewrites, repeated until none applies (Split axis a, sizes s):
- Split(Concat(x1..xn, axis a)) whose boundaries fall on the inputs' boundaries: each output is
  the Concat of the inputs it covers (or the input itself);
- Split(Concat(x1..xn, axis b != a)): Split each xi along a, Concat the i-th pieces along b;
- Split(Reshape(x)) where the Reshape keeps axis a and every axis before it: Split x, Reshape each
  piece (axis a of the target shape set to the piece's size).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe.graph import (
    add_initializer,
    constant_value,
    consumers,
    fresh_name,
    infer_shapes,
    node_attributes,
    producers,
    remove_unused_initializers,
    value_infos,
)


def _static_shape(infos: dict, name: str) -> list[int] | None:
    info = infos.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    return None if any(d is None for d in dims) else dims


def _split_sizes(model: onnx.ModelProto, node: onnx.NodeProto, shape: list[int]) -> tuple[int, list[int]] | None:
    """(axis, sizes) of a Split with known sizes (attribute, constant input or even split)."""
    attrs = node_attributes(node)
    axis = int(attrs.get("axis", 0)) % len(shape)
    if len(node.input) > 1 and node.input[1]:
        value = constant_value(model, node.input[1])
        sizes = None if value is None else [int(v) for v in np.ravel(value)]
    elif "split" in attrs:
        sizes = [int(v) for v in attrs["split"]]
    elif "num_outputs" not in attrs and shape[axis] % len(node.output) == 0:
        sizes = [shape[axis] // len(node.output)] * len(node.output)
    else:
        return None
    if sizes is None or len(sizes) != len(node.output) or sum(sizes) != shape[axis]:
        return None
    return axis, sizes


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.infos = value_infos(model)
        self.producers = producers(model)
        self.consumers = consumers(model)
        self.outputs = {o.name for o in model.graph.output}
        self.renames: dict[str, str] = {}  # Split outputs replaced by an existing tensor

    def single_use(self, tensor: str) -> bool:
        return tensor not in self.outputs and len(self.consumers.get(tensor, [])) == 1

    def split_node(self, source: str, axis: int, sizes: list[int], outputs: list[str], base: str) -> onnx.NodeProto:
        sizes_name = add_initializer(self.model, f"{base}_sizes", np.asarray(sizes, np.int64))
        return helper.make_node("Split", [source, sizes_name], outputs, name=fresh_name(self.model, base), axis=axis)

    def rewrite(self, split: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """Nodes replacing `split` (and its producer), or None when no rule applies."""
        source = split.input[0]
        producer = self.producers.get(source)
        shape = _static_shape(self.infos, source)
        if producer is None or shape is None or not self.single_use(source) or "" in split.output:
            return None
        known = _split_sizes(self.model, split, shape)
        if known is None:
            return None
        axis, sizes = known
        if producer.op_type == "Concat":
            return self._through_concat(split, producer, axis, sizes, shape)
        if producer.op_type == "Reshape":
            return self._through_reshape(split, producer, axis, sizes, shape)
        return None

    def _through_concat(self, split, concat, axis, sizes, shape):
        inputs = list(concat.input)
        in_shapes = [_static_shape(self.infos, t) for t in inputs]
        if any(s is None or len(s) != len(shape) for s in in_shapes):
            return None
        concat_axis = int(node_attributes(concat)["axis"]) % len(shape)
        if concat_axis == axis:
            edges = np.cumsum([0] + [s[axis] for s in in_shapes])
            cuts = np.cumsum([0] + sizes)
            if not set(cuts.tolist()) <= set(edges.tolist()):
                return None
            nodes = []
            for out, lo, hi in zip(split.output, cuts[:-1], cuts[1:]):
                group = [t for t, a, b in zip(inputs, edges[:-1], edges[1:]) if a >= lo and b <= hi]
                if len(group) == 1 and out not in self.outputs:
                    self.renames[out] = group[0]  # the piece is that input: its readers read it directly
                    continue
                op = "Concat" if len(group) > 1 else "Identity"
                attrs = {"axis": axis} if op == "Concat" else {}
                nodes.append(helper.make_node(op, group, [out], name=fresh_name(self.model, f"{split.name}_{op}"), **attrs))
            return nodes
        nodes, pieces = [], []
        for index, tensor in enumerate(inputs):
            names = [fresh_name(self.model, f"{tensor}_part{k}") for k in range(len(sizes))]
            nodes.append(self.split_node(tensor, axis, sizes, names, f"{split.name}_in{index}"))
            pieces.append(names)
        for k, out in enumerate(split.output):
            nodes.append(helper.make_node("Concat", [p[k] for p in pieces], [out],
                                          name=fresh_name(self.model, f"{concat.name}_part{k}"), axis=concat_axis))
        return nodes

    def _through_reshape(self, split, reshape, axis, sizes, shape):
        source = reshape.input[0]
        in_shape = _static_shape(self.infos, source)
        target = constant_value(self.model, reshape.input[1]) if len(reshape.input) > 1 else None
        if in_shape is None or target is None or len(in_shape) <= axis or node_attributes(reshape).get("allowzero"):
            return None
        target = [int(v) for v in np.ravel(target)]
        if in_shape[: axis + 1] != shape[: axis + 1] or len(target) != len(shape):
            return None
        pieces = [fresh_name(self.model, f"{source}_part{k}") for k in range(len(sizes))]
        nodes = [self.split_node(source, axis, sizes, pieces, f"{split.name}_before_reshape")]
        for k, (piece, out) in enumerate(zip(pieces, split.output)):
            piece_target = list(shape)  # the static output shape with this piece's size: no -1 or 0 left
            piece_target[axis] = sizes[k]
            target_name = add_initializer(self.model, f"{reshape.name}_part{k}_shape", np.asarray(piece_target, np.int64))
            nodes.append(helper.make_node("Reshape", [piece, target_name], [out],
                                          name=fresh_name(self.model, f"{reshape.name}_part{k}")))
        return nodes


def split_before_concat(model: onnx.ModelProto, max_rounds: int = 64) -> tuple[onnx.ModelProto, dict]:
    """(model with Splits moved in front of Concats / Reshapes, report {"moved": [split names]})."""
    model = infer_shapes(model)
    original = {n.name for n in model.graph.node if n.op_type == "Split"}
    moved: list[str] = []
    for _ in range(max_rounds):
        rewriter = _Rewriter(model)
        done = False
        for position, node in enumerate(model.graph.node):
            if node.op_type != "Split":
                continue
            replacement = rewriter.rewrite(node)
            if replacement is None:
                continue
            producer = rewriter.producers[node.input[0]]
            nodes = list(model.graph.node)
            # inputs of the new nodes are all produced before the producer: insert where the Split was
            nodes[position : position + 1] = replacement
            nodes.remove(producer)
            for reader in nodes:
                reader.input[:] = [rewriter.renames.get(t, t) for t in reader.input]
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            if node.name in original:
                moved.append(node.name)
            done = True
            break
        if not done:
            break
        model = infer_shapes(remove_unused_initializers(model))
    return model, {"moved": moved}
