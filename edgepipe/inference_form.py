"""The inference form of a graph: Dropout removed, Einsum as MatMul, variadic Sum / Mean / Max / Min as binary chains.

Why here (the simplify stage, every target) and not in onnxsim or one backend: onnxsim's optimizer
removes a Dropout only when its ratio is 0, so the Dropout(ratio=0.5) of model-zoo files (and of
users' old exports) reached the targets' op check; and a Sum of three tensors lowered as two
additions needs an int8 range for the partial sum, which only exists when calibration runs the
graph that has it. Rewritten before fold and calibration, every target sees the same graph and
every partial sum / maximum is calibrated under its own name.

- Dropout at inference (no `training_mode` input, or a constant false one; any ratio) is the
  identity. One whose `training_mode` is true or computed is refused naming the node: its result
  would depend on what it does in training. One whose mask output is read stays (the mask is all
  true at inference: TensorRT's parser runs it, arm-cpu refuses it naming the node).
- Einsum -> Transpose / Reshape / MatMul / ReduceSum (edgepipe/einsum.py): one- and two-operand
  equations without diagonals, so the attention products are MatMuls every target quantizes.
- Sum(a, b, c) -> Add(Add(a, b), c); Max / Min the same with Max / Min; Mean -> the Sum chain,
  then Div by N. Pairwise broadcasting composes to ONNX's multidirectional broadcasting (opset 8
  on; the older forms neither broadcast nor have binary ops ONNX Runtime runs, so they stay). A
  one-input form is the identity.
An identity is removed by reading its input wherever its output was read; where the output is a
graph output (its name is part of the model's interface) an Identity node keeps the name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.einsum import decompose_einsums
from edgepipe.errors import UserError

VARIADIC = {"Sum": "Add", "Max": "Max", "Min": "Min", "Mean": "Add"}
DROPOUT_SINCE = 7  # earlier Dropouts carry `is_test`: not rewritten, left to the targets' op check
VARIADIC_SINCE = 8  # multidirectional broadcasting, and binary Add / Max / Min that ONNX Runtime runs


def training_problem(node: onnx.NodeProto, constant) -> str | None:
    """Why this Dropout may not run in inference mode, or None. `constant(name)` gives a constant's
    value (None when computed)."""
    training = node.input[2] if len(node.input) > 2 else ""
    if training:
        value = constant(training)
        if value is None:
            return (f"its training_mode input '{training}' is computed at run time; export the model for inference "
                    "(training_mode absent or a constant false)")
        if bool(np.asarray(value).reshape(-1)[0]):
            return f"its training_mode input '{training}' is true; export the model for inference (model.eval())"
    return None


def dropout_problem(node: onnx.NodeProto, constant, used) -> str | None:
    """Why this Dropout is not simply the identity at inference, or None; `used(name)` says
    whether a node or the graph reads a tensor."""
    problem = training_problem(node, constant)
    if problem:
        return problem
    mask = node.output[1] if len(node.output) > 1 else ""
    if mask and used(mask):
        return f"its mask output '{mask}' is read; export the model for inference without the mask output"
    return None


def inference_form(model: onnx.ModelProto, strict: bool = True) -> tuple[onnx.ModelProto, dict]:
    """(rewritten copy, report {dropouts_removed, variadic_split}). `strict`: a Dropout in training
    mode is a UserError naming it; else it is left in the graph for the op check to name, like a
    Dropout whose mask is read."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    report = {"dropouts_removed": 0, "variadic_split": 0, "einsums_decomposed": decompose_einsums(result)}
    opset = next((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not any(n.op_type == "Dropout" or _variadic(n, opset) for n in result.graph.node if n.domain in ("", "ai.onnx")):
        return result, report
    graph.ensure_node_names(result)
    constants = {t.name: t for t in result.graph.initializer}
    for node in result.graph.node:
        if node.op_type == "Constant" and node.output:
            constants[node.output[0]] = node
    outputs = {o.name for o in result.graph.output}
    readers = graph.consumers(result)

    def constant(name):
        return graph.constant_value(result, name) if name in constants else None

    def used(name):
        return name in outputs or bool(readers.get(name))

    nodes, renamed = [], {}
    for node in result.graph.node:
        if node.domain not in ("", "ai.onnx"):
            nodes.append(node)
        elif node.op_type == "Dropout" and opset >= DROPOUT_SINCE:
            training = training_problem(node, constant)
            if training and strict:
                raise UserError(f"node '{node.name}' (Dropout): {training}")
            if dropout_problem(node, constant, used):
                nodes.append(node)
                continue
            report["dropouts_removed"] += 1
            _identity(nodes, renamed, node, node.input[0], node.output[0], outputs)
        elif _variadic(node, opset):
            report["variadic_split"] += 1
            _split(nodes, renamed, node, result, outputs)
        else:
            nodes.append(node)
    for node in nodes:
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    stale = [info for info in result.graph.value_info if info.name in renamed]
    for info in stale:
        result.graph.value_info.remove(info)
    return result, report


def _variadic(node: onnx.NodeProto, opset: int) -> bool:
    """Sum and Mean of any count; Max / Min of other than two inputs (two is the binary op)."""
    if opset < VARIADIC_SINCE:
        return False
    return node.op_type in ("Sum", "Mean") or node.op_type in ("Max", "Min") and len(node.input) != 2


def _resolve(renamed: dict, name: str) -> str:
    while name in renamed:
        name = renamed[name]
    return name


def _identity(nodes: list, renamed: dict, node, source: str, target: str, outputs: set) -> None:
    if target in outputs:
        nodes.append(helper.make_node("Identity", [_resolve(renamed, source)], [target], name=node.name))
    else:
        renamed[target] = _resolve(renamed, source)


def _split(nodes: list, renamed: dict, node, model: onnx.ModelProto, outputs: set) -> None:
    """Binary chain for a variadic node; Mean ends with a Div by the input count."""
    inputs, out = [_resolve(renamed, name) for name in node.input], node.output[0]
    if len(inputs) == 1:
        _identity(nodes, renamed, node, inputs[0], out, outputs)
        return
    binary = VARIADIC[node.op_type]
    mean = node.op_type == "Mean"
    total = inputs[0]
    for position, name in enumerate(inputs[1:], 1):
        last = position == len(inputs) - 1 and not mean
        partial = out if last else f"{out}/partial{position}"
        nodes.append(helper.make_node(binary, [total, name], [partial], name=f"{node.name}/{binary.lower()}{position}"))
        total = partial
    if mean:
        count = f"{out}/count"
        dtype = _element_type(model, inputs[0])
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(len(inputs), dtype), count))
        nodes.append(helper.make_node("Div", [total, count], [out], name=f"{node.name}/div"))


def _element_type(model: onnx.ModelProto, name: str) -> np.dtype:
    info = graph.value_infos(model).get(name)
    if info is None or not info.type.tensor_type.elem_type:
        initializer = next((t for t in model.graph.initializer if t.name == name), None)
        return numpy_helper.to_array(initializer).dtype if initializer is not None else np.dtype(np.float32)
    return np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
