"""Which ONNX nodes a backend can take, keyed the way ONNX defines an operator: (domain, op type, opset).

An op type alone does not name an operator: `com.example::Relu` is not ONNX's Relu, and
Softmax-11 and Softmax-13 normalize over different axes. Both backends and every target plugin
therefore look nodes up in an `OpTable` by (domain, op type, opset of that domain in the model),
and share the checks no table can express:

- nodes of a domain the table does not know (custom ops) are refused by domain and name;
- control flow (`If`, `Loop`, `Scan`) is refused naming the control-flow node unless the table
  registers it (TensorRT's parser imports all three: the main graph is calibrated and quantized,
  the subgraphs stay float); the TFLite lowering works on one flat graph;
- `walk_nodes` also visits the nodes inside subgraphs, so a report (`edgepipe inspect`) shows what
  hides inside a branch or a loop body, named `<control node>/<attribute>/<node>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

import onnx

from edgepipe.qoperator import QOPERATOR_OP_TYPES

ONNX_DOMAIN = ""
DOMAIN_ALIASES = {"ai.onnx": ONNX_DOMAIN}
CONTROL_FLOW = ("If", "Loop", "Scan")
LATEST = 10**6  # "until" of a registration with no upper opset bound

Problem = tuple[str, str, str]  # (node name, op type as shown to users, reason)
T = TypeVar("T")


def canonical_domain(domain: str) -> str:
    return DOMAIN_ALIASES.get(domain, domain)


def qualified(domain: str, op_type: str) -> str:
    """`Relu` for ONNX ops, `com.example::Relu` for any other domain."""
    domain = canonical_domain(domain)
    return op_type if domain == ONNX_DOMAIN else f"{domain}::{op_type}"


@dataclass(frozen=True)
class OpKey:
    """An operator and the opset versions [since, until] of its domain one entry covers."""

    domain: str
    op_type: str
    since: int = 1
    until: int = LATEST

    def covers(self, domain: str, op_type: str, opset: int) -> bool:
        return (canonical_domain(domain), op_type) == (self.domain, self.op_type) and self.since <= opset <= self.until

    def describe(self) -> str:
        versions = f"opset {self.since}+" if self.until == LATEST else f"opsets {self.since}-{self.until}"
        return f"{qualified(self.domain, self.op_type)} ({versions})"


class OpTable(Generic[T]):
    """Entries keyed by `OpKey`; registering two entries whose opset ranges overlap is an error."""

    def __init__(self, name: str):
        self.name = name
        self._entries: dict[tuple[str, str], list[tuple[OpKey, T]]] = {}

    def add(self, key: OpKey, value: T) -> None:
        key = OpKey(canonical_domain(key.domain), key.op_type, key.since, key.until)
        entries = self._entries.setdefault((key.domain, key.op_type), [])
        for other, _ in entries:
            if key.since <= other.until and other.since <= key.until:
                raise ValueError(f"{self.name}: {key.describe()} overlaps {other.describe()}")
        entries.append((key, value))

    def find(self, domain: str, op_type: str, opset: int) -> T | None:
        for key, value in self._entries.get((canonical_domain(domain), op_type), ()):
            if key.since <= opset <= key.until:
                return value
        return None

    def keys(self, domain: str, op_type: str) -> list[OpKey]:
        return [key for key, _ in self._entries.get((canonical_domain(domain), op_type), ())]

    def domains(self) -> set[str]:
        return {domain for domain, _ in self._entries}

    def op_types(self, domain: str = ONNX_DOMAIN) -> set[str]:
        return {op for d, op in self._entries if d == canonical_domain(domain)}

    def __contains__(self, item: tuple[str, str, int]) -> bool:
        return self.find(*item) is not None


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Opset version of every domain the model imports (ONNX's own under "")."""
    return {canonical_domain(entry.domain): int(entry.version) for entry in model.opset_import}


def walk_nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto, bool]]:
    """(display name, node, inside a subgraph) for every node, subgraph nodes after their owner."""

    def visit(nodes, prefix: str, nested: bool):
        for node in nodes:
            name = f"{prefix}{node.name or node.op_type}"
            yield name, node, nested
            for attribute in node.attribute:
                subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
                for subgraph in subgraphs:
                    yield from visit(subgraph.node, f"{name}/{attribute.name}/", True)

    yield from visit(model.graph.node, "", False)


# what to do about post-processing ops that detectors are often exported with: the part before
# them is what a target accelerates, and the app (or a target that has the op) can finish the job
_OUTSIDE = ("; export the model without it (its inputs as outputs, e.g. Ultralytics `export(nms=False)`) and "
            "run {what} in the app, or build for a TensorRT target, which has it")
POST_PROCESSING_HINTS = {
    (ONNX_DOMAIN, "NonMaxSuppression"): _OUTSIDE.format(what="non-maximum suppression"),
    (ONNX_DOMAIN, "RoiAlign"): _OUTSIDE.format(what="the RoI pooling stage"),
}


# export rewrites QOperator ops into their float ops (edgepipe/qoperator.py); one still here did not have the form
QOPERATOR_LEFT = ("a quantized (QOperator) node edgepipe cannot rewrite into its float op (that needs float32 "
                  "scales and zero points that are constants, constant integer weights and bias, a per-tensor "
                  "output grid); ship the float model or one quantized with "
                  "quantize_static(quant_format=QuantFormat.QDQ)")


def operator_problem(node: onnx.NodeProto, versions: dict[str, int], table: OpTable, target: str) -> str | None:
    """Why a node's operator is not in `table` (custom domain, unknown op, opset outside the
    registered ranges), or None when an entry covers it."""
    domain = canonical_domain(node.domain)
    if node.op_type in QOPERATOR_OP_TYPES and not table.keys(domain, node.op_type):
        return QOPERATOR_LEFT
    if node.op_type in CONTROL_FLOW and domain == ONNX_DOMAIN and not table.keys(domain, node.op_type):
        if node.op_type == "If":
            return ("control flow (If) is not supported: pin the inputs its condition reads with input_values "
                    "(--input-value NAME=VALUE, e.g. a sample rate) to deploy one branch, or export the model "
                    "with the branch resolved")
        return (f"control flow ({node.op_type}) is not supported: export the model with the loop resolved "
                "(unrolled) or split it into separate models")
    if domain not in table.domains():
        return (f"custom domain '{domain}' has no implementation on {target}; replace the node with standard "
                "ONNX ops")
    opset = versions.get(domain)
    if opset is None:
        return f"the model imports no opset for domain '{domain or 'ai.onnx'}'"
    if table.find(domain, node.op_type, opset) is not None:
        return None
    keys = table.keys(domain, node.op_type)
    if keys:
        ranges = ", ".join(key.describe() for key in keys)
        return f"{qualified(domain, node.op_type)} at opset {opset} is not supported on {target} (supported: {ranges})"
    return f"no {table.name} for this op type" + POST_PROCESSING_HINTS.get((domain, node.op_type), "")


def unsupported_operators(model: onnx.ModelProto, table: OpTable, target: str,
                          skip: tuple[str, ...] = ("Constant",)) -> list[Problem]:
    """Problems of every node (subgraphs included) whose operator `table` does not cover; control
    flow first (the nodes computing an If's condition are refused only because the If is)."""
    versions = opsets(model)
    problems = []
    for name, node, _ in walk_nodes(model):
        if node.op_type in skip and canonical_domain(node.domain) == ONNX_DOMAIN:
            continue
        reason = operator_problem(node, versions, table, target)
        if reason:
            problems.append((name, qualified(node.domain, node.op_type), reason))
    problems.sort(key=lambda problem: problem[1] not in CONTROL_FLOW)
    return problems
