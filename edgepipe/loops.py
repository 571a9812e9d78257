"""Loop nodes with a constant trip count unrolled into their body's nodes, once per iteration.

Why: tf2onnx writes a Keras LSTM / GRU it cannot map to the ONNX LSTM op as a `Loop` over the
time steps (a TensorFlow while_loop: counter, condition `i < steps`, the states carried, one
scan output per step). With the input shapes fixed (--input-shape) the trip count is Shape
arithmetic, and every iteration's condition is a constant, so the loop is just its body written
out `steps` times - what the arm-cpu lowering and the calibration can run. The build does it right
after the export stage for a target whose op table has no Loop (`unroll_for`; TensorRT targets run
the Loop as written): a Loop whose trip count or conditions are not provably constant, whose body
holds control flow of its own, or that would unroll past MAX_NODES is left to the target's check.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.branches import _Constants

MAX_ITERATIONS = 1024
MAX_NODES = 20000  # body nodes x iterations: beyond this an unrolled graph is no deployable model


def _body(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")


def _trip_count(node: onnx.NodeProto, constants: _Constants) -> int | None:
    """The iterations a Loop runs when its trip count and its initial condition are constants."""
    if not node.input or not node.input[0]:
        return None
    count = constants.value(node.input[0])
    if count is None or count.size != 1:
        return None
    if len(node.input) > 1 and node.input[1]:
        condition = constants.value(node.input[1])
        if condition is None or condition.size != 1:
            return None
        if not bool(condition.reshape(-1)[0]):
            return 0
    return int(count.reshape(-1)[0])


def _unrollable(node: onnx.NodeProto, iterations: int | None) -> bool:
    body = _body(node)
    nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in body.node
                 for a in n.attribute)
    return (iterations is not None and 0 <= iterations <= MAX_ITERATIONS and not nested
            and len(body.node) * iterations <= MAX_NODES)


def _unrolled_nodes(model: onnx.ModelProto, node: onnx.NodeProto, iterations: int) -> tuple[list, list[str]]:
    """(nodes computing the Loop's outputs under their names, each iteration's condition output)."""
    body, opset = _body(node), graph.opset_version(model)
    base = node.name or node.output[0]
    carried_count = len(node.input) - 2
    carried = list(node.input[2:])
    scans: list[list[str]] = [[] for _ in range(len(body.output) - 1 - carried_count)]
    nodes, conditions = [], []
    for tensor in body.initializer:  # once per loop: every iteration reads the same constant
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = f"{base}/body/{tensor.name}"
        model.graph.initializer.append(copy)
    for step in range(iterations):
        prefix = f"{base}/iter{step}/"
        names = {t.name: f"{base}/body/{t.name}" for t in body.initializer}
        iteration = body.input[0].name
        names[iteration] = prefix + "iteration"
        model.graph.initializer.append(numpy_helper.from_array(np.array(step, np.int64), names[iteration]))
        if len(body.input) > 1:
            names[body.input[1].name] = prefix + "condition_in"
            model.graph.initializer.append(numpy_helper.from_array(np.array(True), names[body.input[1].name]))
        for inner, outer in zip(body.input[2:], carried):
            names[inner.name] = outer
        for inner in body.node:
            for output in inner.output:
                if output:
                    names[output] = prefix + output
            renamed = onnx.NodeProto()
            renamed.CopyFrom(inner)
            renamed.name = prefix + (inner.name or inner.op_type)
            renamed.input[:] = [names.get(i, i) if i else "" for i in inner.input]
            renamed.output[:] = [names[o] if o else "" for o in inner.output]
            nodes.append(renamed)
        outputs = [names.get(o.name, o.name) for o in body.output]
        conditions.append(outputs[0])
        carried = outputs[1:1 + carried_count]
        for k, value in enumerate(outputs[1 + carried_count:]):
            scans[k].append(value)
    for position, value in enumerate(carried):
        if position < len(node.output) and node.output[position]:
            nodes.append(helper.make_node("Identity", [value], [node.output[position]], name=f"{base}/final{position}"))
    for k, values in enumerate(scans):
        position = carried_count + k
        if position >= len(node.output) or not node.output[position]:
            continue
        rows = []
        for step, value in enumerate(values):
            name = f"{base}/scan{k}/row{step}"
            if opset >= 13:
                axes = f"{base}/scan{k}/axes"
                if step == 0:
                    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
                nodes.append(helper.make_node("Unsqueeze", [value, axes], [name], name=name))
            else:
                nodes.append(helper.make_node("Unsqueeze", [value], [name], name=name, axes=[0]))
            rows.append(name)
        nodes.append(helper.make_node("Concat", rows, [node.output[position]], name=f"{base}/scan{k}", axis=0))
    return nodes, conditions


def unroll_for(model: onnx.ModelProto, target) -> onnx.ModelProto:
    """`model` with its constant Loops unrolled when `target` cannot run a Loop, else `model`."""
    if target is None or not any(n.op_type == "Loop" for n in model.graph.node) or target.operators().keys("", "Loop"):
        return model
    return graph.refresh_shapes(unroll_constant_loops(model))


def unroll_constant_loops(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each Loop whose trip count and per-iteration conditions are constants written
    out iteration by iteration (outer Loops first; the rest stay for the target's check)."""
    model, kept = graph.ensure_node_names(model), set()
    for _ in range(MAX_ITERATIONS):
        loops = [n for n in model.graph.node
                 if n.op_type == "Loop" and n.domain in ("", "ai.onnx") and n.name not in kept]
        if not loops:
            return model
        model = graph.refresh_shapes(model)
        constants = _Constants(model)
        node = next((n for n in loops if _unrollable(n, _trip_count(n, constants))), None)
        if node is None:
            return model
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        index = [n.name for n in candidate.graph.node].index(node.name)
        nodes, conditions = _unrolled_nodes(candidate, node, _trip_count(node, constants))
        rewritten = list(candidate.graph.node[:index]) + nodes + list(candidate.graph.node[index + 1:])
        del candidate.graph.node[:]
        candidate.graph.node.extend(rewritten)
        candidate = graph.refresh_shapes(candidate)
        known = _Constants(candidate)
        decided = [known.value(c) for c in conditions[:-1]]  # the last one only says "stop"
        if any(v is None or v.size != 1 or not bool(v.reshape(-1)[0]) for v in decided):
            kept.add(node.name)  # it may stop early: the target's check refuses it by name
            continue
        model = graph.ensure_node_names(candidate)
    return model
