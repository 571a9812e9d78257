"""Data movement between float islands runs float.

Why: the registry (lower.py) makes a float node ask for float inputs, so two float islands next
to each other need no conversion; but a data-movement node between them (a Squeeze, Transpose or
Reshape between two float LSTMs, a Slice of a float tensor another float node reads) lowers
int8 like any op with an int8 kernel, and the registry then writes QUANTIZE before it and
DEQUANTIZE after it. That pair computes nothing: it only rounds the tensor to 256 steps on its
way from one float node to the next (Resemblyzer's three LSTMs read each other's whole output
sequence through such a round trip). Moving values is exact in any dtype, so such a node runs
float: no conversion is written and the tensor stays as the float islands computed it.

The rule: a data-movement node (MOVEMENT_OPS) runs float when every non-constant float input
it reads is only float (written by a float node, or a float graph input) and every reader of
its outputs runs float (or is a float graph output), and a float node sits next to it or to the
chain it belongs to. Chains of such nodes qualify together: the largest set of candidates that
satisfies the rule with each other's help is kept (start from all candidates, drop those that
fail, repeat). Integer tensors (shapes, indices, masks)
are never touched; a node named in `int16_nodes` keeps the precision it was asked for.
"""

from __future__ import annotations

# ONNX ops that only move, select or repeat values: the same numbers come out in float and int8
MOVEMENT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice",
                          "Gather", "Concat", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"})
SHAPE_READERS = frozenset({"Shape", "Size"})  # read a tensor's shape, not its values


def movement_between_islands(ctx) -> set[str]:
    """Names of the data-movement nodes of the quantized lowering that run float by the rule
    above (reads `ctx.node_dtype`, so run it after the other float-island choices)."""
    if not ctx.quantized:
        return set()
    float_io = ctx.io_dtype() == "float32"
    float_inputs = {i.name for i in ctx.model.graph.input} if float_io else set()
    graph_outputs = set(ctx.graph_outputs)
    chosen = {node.name: node for node in ctx.model.graph.node if _candidate(ctx, node)}
    dtypes = {}  # node_dtype of the nodes outside the candidates, asked once

    def runs_float(node) -> bool:
        if node.name in chosen:
            return True
        if node.name not in dtypes:
            dtypes[node.name] = ctx.node_dtype(node)
        return dtypes[node.name] == "float32"

    def inputs_only_float(node) -> bool:
        sources = [name for name in node.input
                   if name and name not in ctx.constants and ctx.onnx_kind(name) == "float32"]
        for name in sources:
            producer = ctx.producers.get(name)
            if producer is None and name not in float_inputs or producer is not None and not runs_float(producer):
                return False
        return bool(sources)

    def read_only_in_float(node) -> bool:
        for name in node.output:
            if name in graph_outputs and not float_io:
                return False
            readers = [r for r in ctx.consumers.get(name, []) if r.op_type not in SHAPE_READERS]
            if not all(runs_float(reader) for reader in readers):
                return False
        return True

    changed = True
    while changed:
        changed = False
        for name, node in list(chosen.items()):
            if not (inputs_only_float(node) and read_only_in_float(node)):
                del chosen[name]
                changed = True
    return _next_to_islands(ctx, chosen, runs_float)


def _next_to_islands(ctx, chosen: dict, runs_float) -> set[str]:
    """The chosen nodes connected (through chosen nodes) to a float node that is no candidate:
    data movement between the graph's float input and its float output alone has no island to
    serve and keeps its int8 kernel (a one-op model is an int8 model of that op)."""
    def neighbours(node):
        found = [ctx.producers[name] for name in node.input if name in ctx.producers]
        return found + [r for name in node.output for r in ctx.consumers.get(name, [])]

    pending = [node for node in chosen.values()
               if any(n.name not in chosen and runs_float(n) for n in neighbours(node))]
    kept = {node.name for node in pending}
    while pending:
        for n in neighbours(pending.pop()):
            if n.name in chosen and n.name not in kept:
                kept.add(n.name)
                pending.append(n)
    return kept


def _candidate(ctx, node) -> bool:
    """A data-movement node on float values that would otherwise lower int8."""
    if node.op_type not in MOVEMENT_OPS or node.domain not in ("", "ai.onnx") or not node.output:
        return False
    if node.name in ctx.requested_float or node.name in ctx.requested_int16:
        return False
    if any(ctx.onnx_kind(name) != "float32" for name in node.output if name):
        return False
    return ctx.node_dtype(node) in ("int8", "int16")
