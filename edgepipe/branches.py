"""Inputs pinned to a constant (`input_values`) and If nodes folded into the branch they take.

Why: exporters keep run-time switches the deployed model never flips. Silero VAD ships its whole
network inside `If(sr == 16000)`, and PyTorch exports `if x.shape[0] == 1` as an If on Shape
arithmetic. No target runs control flow, but once the switch is a constant (an input pinned by
the user, shapes fixed by --input-shape) the If is just the nodes of one branch. onnxsim does not
fold such Ifs (and fails on nested ones), so the export stage does it here: constants are
propagated through Shape / Size and small constant ops, each If whose condition becomes constant
is replaced by its branch (nested Ifs the next round), the rest is left to the target's check.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.errors import UserError

MAX_ROUNDS = 64  # nesting depth of Ifs inlined one level per round
MAX_FOLDED_ELEMENTS = 1 << 16  # constants propagated while deciding conditions stay small


def pin_inputs(model: onnx.ModelProto, values: dict, source: str) -> onnx.ModelProto:
    """`model` with each input named in `values` replaced by a constant of the input's dtype."""
    if not values:
        return model
    inputs = {i.name: i for i in graph.graph_inputs(model)}
    for name, value in values.items():
        info = inputs.get(name)
        if info is None:
            raise UserError(f"input_values: {source} has no input '{name}' (inputs: {', '.join(inputs) or 'none'}); "
                            "fix the name")
        model.graph.initializer.append(numpy_helper.from_array(_typed_value(info, value, source), name))
    kept = [i for i in model.graph.input if i.name not in values]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # initializers that are not graph inputs
    return model


def _typed_value(info: onnx.ValueInfoProto, value, source: str) -> np.ndarray:
    dtype = graph.tensor_dtype(info)
    where = f"input_values.{info.name} for input '{info.name}' of {source}"
    try:
        numbers = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        numbers = np.asarray(np.nan)
    if not np.all(np.isfinite(numbers)):
        raise UserError(f"{where}: expected finite numbers, got {str(value)[:60]!r}")
    if dtype.kind in "iub" and not np.array_equal(numbers, np.round(numbers)):
        raise UserError(f"{where}: the input is {dtype}, got the non-integer {str(value)[:60]}")
    if dtype.kind in "iu" and numbers.size and (numbers.min() < np.iinfo(dtype).min or numbers.max() > np.iinfo(dtype).max):
        raise UserError(f"{where}: {str(value)[:60]} does not fit the input's type {dtype}")
    array = np.asarray(value).astype(dtype) if dtype.kind in "iu" else numbers.astype(dtype)
    declared = graph.declared_shape(info)
    if declared is not None and (len(declared) != array.ndim or any(
            graph.is_static_dim(d) and d != n for d, n in zip(declared, array.shape))):
        shown = [d if graph.is_static_dim(d) else "?" for d in declared]
        raise UserError(f"{where}: the input has shape {shown}, got a value of shape {list(array.shape)}")
    return array.astype(dtype)


class _Constants:
    """Values of tensors known without running the model: initializers, Constant nodes, Shape /
    Size of statically shaped tensors, and small ops all of whose inputs are known."""

    def __init__(self, model: onnx.ModelProto):
        self.infos = graph.value_infos(model)  # shapes refreshed by the caller (graph.refresh_shapes)
        self.opset = graph.opset_version(model)
        self.values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producers = graph.producers(model)
        self.inputs = {i.name for i in graph.graph_inputs(model)}

    def value(self, name: str, seen: frozenset = frozenset()):
        if name in self.values or not name or name in seen:
            return self.values.get(name)
        node = self.producers.get(name)
        if node is None or node.op_type in ("If", "Loop", "Scan") or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in ("Shape", "Size"):
            dims = graph.declared_shape(self.infos[node.input[0]]) if node.input[0] in self.infos else None
            if not graph.is_static(dims):
                return None
            result = _shape_value(node, [int(d) for d in dims])
        else:
            inputs = [self.value(i, seen | {name}) if i else None for i in node.input]
            if any(i and v is None for i, v in zip(node.input, inputs)) or any(
                    v is not None and v.size > MAX_FOLDED_ELEMENTS for v in inputs):
                return None
            result = self._evaluate(node, inputs)
        if result is not None:
            self.values.update(result)
        return self.values.get(name)

    def _evaluate(self, node: onnx.NodeProto, inputs: list) -> dict | None:
        from onnx.reference import ReferenceEvaluator

        try:
            outputs = ReferenceEvaluator(node, opsets={"": self.opset}).run(
                None, {i: v for i, v in zip(node.input, inputs) if i})
        except Exception:  # an op the reference cannot evaluate: the condition stays unknown
            return None
        return {o: np.asarray(v) for o, v in zip(node.output, outputs) if o}

    def data_inputs(self, name: str) -> set[str]:
        """Graph inputs whose values (not shapes) `name` depends on."""
        found, stack, seen = set(), [name], set()
        while stack:
            current = stack.pop()
            if current in seen or current in self.values:
                continue
            seen.add(current)
            if current in self.inputs:
                found.add(current)
                continue
            node = self.producers.get(current)
            if node is not None and node.op_type not in ("Shape", "Size"):
                stack.extend(i for i in node.input if i)
        return found


def _shape_value(node: onnx.NodeProto, dims: list[int]) -> dict:
    if node.op_type == "Size":
        return {node.output[0]: np.array(int(np.prod(dims)), np.int64)}
    attrs = graph.node_attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return {node.output[0]: np.array(dims[start:end], np.int64)}


def _branch_nodes(model: onnx.ModelProto, node: onnx.NodeProto, taken: bool) -> list[onnx.NodeProto]:
    """The nodes of the branch `taken` (then / else) computing the If's outputs under their names;
    its Constant nodes become initializers (what exporters write at the top level, and what
    rewrites such as the 1-D conv lift look for)."""
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
    model.graph.initializer.extend(branch.initializer)
    nodes = []
    for inner in branch.node:
        value = next((a.t for a in inner.attribute if a.name == "value"), None) if inner.op_type == "Constant" else None
        if value is not None and len(inner.attribute) == 1:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value), inner.output[0]))
        else:
            nodes.append(inner)
    for position, (inner, outer) in enumerate(zip(branch.output, node.output)):
        if outer:
            nodes.append(helper.make_node("Identity", [inner.name], [outer], name=f"{node.name}/output{position}"))
    return nodes


def fold_constant_ifs(model: onnx.ModelProto, pinned: dict | None = None) -> onnx.ModelProto:
    """Replace every If whose condition is a constant by its branch, nested Ifs included. With
    `pinned` inputs (input_values), an If left over is an error naming what its condition reads."""
    for _ in range(MAX_ROUNDS):
        if not any(n.op_type == "If" for n in model.graph.node):
            return model
        model = graph.refresh_shapes(model)  # the branch inlined last round: its Shape inputs get static dims
        constants = _Constants(model)
        rewritten, changed = [], False
        for node in model.graph.node:
            condition = constants.value(node.input[0]) if node.op_type == "If" else None
            if condition is None or condition.size != 1:
                rewritten.append(node)
                continue
            rewritten.extend(_branch_nodes(model, node, bool(condition.reshape(-1)[0])))
            changed = True
        if not changed:
            break
        del model.graph.node[:]
        model.graph.node.extend(rewritten)
        graph.ensure_node_names(model)
    left = [n for n in model.graph.node if n.op_type == "If"]
    if left and pinned:
        node, constants = left[0], _Constants(model)
        reads = sorted(constants.data_inputs(node.input[0]) - set(pinned))
        cause = (f"reads input{'s' if len(reads) > 1 else ''} {', '.join(repr(r) for r in reads)}" if reads
                 else "is not a constant after the inputs were pinned and the shapes fixed")
        raise UserError(f"node '{node.name}' (If): its condition '{node.input[0]}' {cause}; pin "
                        f"{'them' if len(reads) > 1 else 'it'} with input_values (--input-value NAME=VALUE) to "
                        "deploy one branch")
    return model
