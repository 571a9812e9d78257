"""Subgraphs (If branches, Loop / Scan bodies) and the names they read from the enclosing graph.

Why: a subgraph reads tensors of the graph around it by name (outer scope), not through its
node's inputs, so passes that index readers by `node.input` alone would rename, fuse or drop a
tensor a loop body still needs. `graph.consumers` counts those reads.
"""

from __future__ import annotations

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by a node's attributes (If branches, Loop / Scan bodies)."""
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append(attribute.g)
        found.extend(attribute.graphs)
    return found


def outer_scope_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (nested ones included) read without defining them: tensors of
    the enclosing graph, looked up by name when the subgraph runs."""
    reads: set[str] = set()

    def visit(sub: onnx.GraphProto, defined: set[str]) -> None:
        defined = defined | {v.name for v in sub.input} | {t.name for t in sub.initializer}
        for inner in sub.node:
            reads.update(name for name in inner.input if name and name not in defined)
            for nested in subgraphs(inner):
                visit(nested, defined)
            defined |= set(inner.output)
        reads.update(o.name for o in sub.output if o.name not in defined)

    for sub in subgraphs(node):
        visit(sub, set())
    return reads
