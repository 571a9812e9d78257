"""Node order of an ONNX graph as loaded from a file."""

from __future__ import annotations

import heapq

import onnx


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put nodes in topological order, keeping the file's order wherever it already is one.

    Why: ONNX requires the order, ONNX Runtime does not, and tools users run (ONNX Runtime's own
    float16 converter among them) append nodes at the end. A cycle is left for the checker."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    needs = [{produced_by[name] for name in node.input if name in produced_by} - {i}
             for i, node in enumerate(graph.node)]
    if all(max(deps, default=-1) < i for i, deps in enumerate(needs)):
        return
    users: list[list[int]] = [[] for _ in graph.node]
    for i, deps in enumerate(needs):
        for dep in deps:
            users[dep].append(i)
    missing = [len(deps) for deps in needs]
    ready = [i for i, count in enumerate(missing) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users[i]:
            missing[user] -= 1
            if missing[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(graph.node):
        return  # a cycle: the checker names it
    nodes = [onnx.NodeProto() for _ in order]
    for node, i in zip(nodes, order):
        node.CopyFrom(graph.node[i])
    del graph.node[:]
    graph.node.extend(nodes)
