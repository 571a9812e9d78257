"""TensorRT's rules for the control flow its ONNX parser imports, beyond the operator table.

Why: onnx-tensorrt (`docs/operators.md`, TensorRT 10) builds `Loop` and `Scan` as an ILoop and
`If` as an IIfConditional, with restrictions the table cannot express; a model that breaks one
fails in the parser on the device, so it is refused here, naming the node:

- a Loop's scan outputs (per-iteration values stacked) need a trip count `M`: TensorRT sizes them
  by the trip count, so a loop ended by its condition alone has no length it can allocate;
- a Loop-carried value must keep its shape across iterations (its body output's declared shape
  equal to its body input's where both are known);
- an If's branches must yield outputs of the same rank under different names.

Sequence and optional ops inside a body are refused by the operator table like anywhere else.
"""

from __future__ import annotations

import onnx

from edgepipe.backends.support import Problem, walk_nodes

PIN = "pin the inputs its condition reads with input_values, --input-value NAME=VALUE, to deploy one branch"


def _subgraph(node: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == name and a.type == onnx.AttributeProto.GRAPH), None)


def _rank(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def _dims(value: onnx.ValueInfoProto) -> tuple | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def loop_problem(node: onnx.NodeProto) -> str | None:
    body = _subgraph(node, "body")
    if body is None:
        return None
    carried = len(node.input) - 2
    scan_outputs = len(body.output) - 1 - carried
    if scan_outputs > 0 and not (node.input and node.input[0]):
        return ("TensorRT sizes a Loop's scan outputs by its trip count, and this loop has none (it ends on its "
                "condition alone): export the loop with a maximum trip count M, or unroll it")
    for inner, outer in zip(body.input[2:], body.output[1:1 + carried]):
        before, after = _dims(inner), _dims(outer)
        if before is not None and after is not None and (len(before) != len(after) or any(
                a is not None and b is not None and a != b for a, b in zip(before, after))):
            return (f"loop-carried value '{inner.name}' changes shape across iterations ({list(before)} -> "
                    f"{list(after)}); TensorRT's loops carry fixed shapes: export it with a fixed-size buffer")
    return None


def if_problem(node: onnx.NodeProto) -> str | None:
    then_branch, else_branch = _subgraph(node, "then_branch"), _subgraph(node, "else_branch")
    if then_branch is None or else_branch is None:
        return None
    for index, (then_out, else_out) in enumerate(zip(then_branch.output, else_branch.output)):
        if then_out.name == else_out.name:
            return (f"both branches name output {index} '{then_out.name}'; TensorRT needs different names "
                    f"(re-export the model, or {PIN})")
        ranks = _rank(then_out), _rank(else_out)
        if None not in ranks and ranks[0] != ranks[1]:
            return (f"output {index} has rank {ranks[0]} in then_branch and {ranks[1]} in else_branch; "
                    f"TensorRT needs equal ranks ({PIN})")
    return None


RULES = {"Loop": loop_problem, "If": if_problem}


def control_flow_problems(model: onnx.ModelProto) -> list[Problem]:
    """(node, op type, reason) for each If / Loop (subgraphs included) TensorRT's parser would reject."""
    problems = []
    for name, node, _ in walk_nodes(model):
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        reason = rule(node) if rule else None
        if reason:
            problems.append((name, node.op_type, reason))
    return problems
