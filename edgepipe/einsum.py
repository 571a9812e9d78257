"""Einsum as Transpose / Reshape / MatMul / ReduceSum: the ops every target runs and quantizes.

Why: attention blocks exported from einsum code (`torch.einsum('bid,bjd->bij', q, k)`) reach the
graph as one Einsum node. TFLite has no such builtin, and a TensorRT Q/DQ placement that quantizes
MatMul inputs does not see one inside an Einsum. Every one- and two-operand equation without a
repeated index in one operand (a diagonal) is a batched matrix product of reshaped, transposed
operands, exact in float:

    A -> [batch..., left..., contracted...] -> [batch..., L, K]
    B -> [batch..., contracted..., right...] -> [batch..., K, R]
    MatMul -> [batch..., L, R] -> [batch..., left..., right...] -> the output's index order

Batch dims stay separate dims, so MatMul's broadcasting covers a size-1 batch dim on one side. An
index only one operand has and the output lacks is summed first (ReduceSum). Equations with three
or more operands, diagonals, or operands of unknown shape are left alone: the target names them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph


def parse(equation: str, ranks: list[int]) -> tuple[list[str], str, str] | None:
    """Operand index strings and the output's, with '...' expanded to capital letters (einsum
    indices are lowercase or uppercase letters; capitals not used by the equation stand in), and
    those stand-ins: the only indices whose sizes broadcast (numpy's rule)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    spare = [c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in equation]
    ellipsis_rank = max((rank - len(term.replace("...", "")) for term, rank in zip(terms, ranks) if "..." in term),
                        default=0)
    if ellipsis_rank > len(spare) or ellipsis_rank < 0:
        return None
    fill = "".join(spare[:ellipsis_rank])[::-1]
    expanded = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            own = rank - len(term.replace("...", ""))
            term = term.replace("...", fill[len(fill) - own:] if own else "")
        if len(term) != rank or not term.isalpha():
            return None
        expanded.append(term)
    if arrow:
        output = rhs.replace("...", fill)
    else:  # implicit output: the ellipsis dims, then indices seen once, alphabetically
        counts = {c: "".join(expanded).count(c) for c in "".join(expanded)}
        output = fill + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in fill))
    if not output.isalpha() and output:
        return None
    return expanded, output, fill


class _Writer:
    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto, opset: int, taken: set[str]):
        self.model, self.node, self.opset, self.nodes, self.count, self.taken = model, node, opset, [], 0, taken

    def _name(self, tag: str) -> str:
        """Unique in the graph: node names may be empty or repeated, so the node's name alone is not."""
        self.count += 1
        name = graph.fresh_name(self.model, f"{self.node.name}/einsum_{tag}{self.count}", self.taken)
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._name(op_type), **attrs))
        return out

    def constant(self, values) -> str:
        name = self._name("const")
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def transpose(self, x: str, have: str, want: str) -> str:
        perm = [have.index(c) for c in want]
        return x if perm == sorted(perm) else self.op("Transpose", [x], perm=perm)

    def reshape(self, x: str, shape: list[int], out: str | None = None) -> str:
        return self.op("Reshape", [x, self.constant(shape)], out)

    def reduce_sum(self, x: str, have: str, drop: str) -> tuple[str, str]:
        if not drop:
            return x, have
        axes = [have.index(c) for c in drop]
        if self.opset >= 13:
            x = self.op("ReduceSum", [x, self.constant(axes)], keepdims=0)
        else:
            x = self.op("ReduceSum", [x], axes=axes, keepdims=0)
        return x, "".join(c for c in have if c not in drop)


def _decompose(writer: _Writer, names: list[str], terms: list[str], shapes: list[list[int]], output: str,
               broadcast: str = "") -> bool:
    size = {}
    for term, shape in zip(terms, shapes):
        for c, d in zip(term, shape):
            size[c] = d if size.get(c, 1) == 1 else size[c]
    if any(len(set(term)) != len(term) for term in terms) or len(set(output)) != len(output):
        return False  # a diagonal, or a repeated output index
    if any(c not in "".join(terms) for c in output):
        return False
    final = writer.node.output[0]
    if len(terms) == 1:
        x, have = writer.reduce_sum(names[0], terms[0], "".join(c for c in terms[0] if c not in output))
        if have == output:
            writer.op("Identity", [x], final)
        else:
            writer.op("Transpose", [x], final, perm=[have.index(c) for c in output])
        return True
    (a, b), (ta, tb) = names, terms
    a_size = dict(zip(ta, shapes[0]))
    b_size = dict(zip(tb, shapes[1]))
    shared = [c for c in ta if c in tb]
    if any(a_size[c] != b_size[c] for c in shared if c not in broadcast or c not in output):
        return False  # labeled dims must agree (numpy); a broadcast contracted dim is no matrix product
    # checked before anything is written: a refusal leaves the model as it was
    a, ta = writer.reduce_sum(a, ta, "".join(c for c in ta if c not in tb and c not in output))
    b, tb = writer.reduce_sum(b, tb, "".join(c for c in tb if c not in ta and c not in output))
    batch = "".join(c for c in output if c in ta and c in tb)
    contracted = "".join(c for c in ta if c in tb and c not in output)
    left = "".join(c for c in ta if c not in tb)
    right = "".join(c for c in tb if c not in ta)
    prod = lambda term, sizes: int(np.prod([sizes[c] for c in term], dtype=np.int64))  # noqa: E731
    a_t = writer.transpose(a, ta, batch + left + contracted)
    b_t = writer.transpose(b, tb, batch + contracted + right)
    a_m = writer.reshape(a_t, [a_size[c] for c in batch] + [prod(left, a_size), prod(contracted, a_size)])
    b_m = writer.reshape(b_t, [b_size[c] for c in batch] + [prod(contracted, b_size), prod(right, b_size)])
    product = writer.op("MatMul", [a_m, b_m])
    have = batch + left + right
    unflat = [max(a_size[c], b_size[c]) for c in batch] + [size[c] for c in left] + [size[c] for c in right]
    if have == output:
        writer.reshape(product, unflat, final)
    else:
        writer.op("Transpose", [writer.reshape(product, unflat)], final, perm=[have.index(c) for c in output])
    return True


def decompose_einsums(model: onnx.ModelProto) -> int:
    """Replace, in place, every Einsum of the main graph that `_decompose` can express; returns how
    many. Shapes come from ONNX shape inference (the build's graphs are static by then)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    einsums = [n for n in model.graph.node if n.op_type == "Einsum" and n.domain in ("", "ai.onnx")]
    if not einsums:
        return 0
    infos = graph.value_infos(graph.infer_shapes(model))
    initializers = {t.name: list(t.dims) for t in model.graph.initializer}
    nodes, done, taken = [], 0, graph.taken_names(model)
    for node in model.graph.node:
        if node not in einsums:
            nodes.append(node)
            continue
        shapes = []
        for name in node.input:
            dims = initializers.get(name)
            if dims is None and name in infos:
                dims = graph.declared_shape(infos[name])
            shapes.append(list(dims) if dims is not None and graph.is_static(dims) else None)
        equation = helper.get_attribute_value(next(a for a in node.attribute if a.name == "equation"))
        parsed = parse(equation.decode() if isinstance(equation, bytes) else equation,
                       [len(s) if s is not None else -1 for s in shapes]) if all(s is not None for s in shapes) else None
        writer = _Writer(model, node, opset, taken)
        if parsed is None or len(node.input) > 2:
            nodes.append(node)
            continue
        terms, output, broadcast = parsed
        if not _decompose(writer, list(node.input), terms, shapes, output, broadcast):
            nodes.append(node)
            continue
        nodes.extend(writer.nodes)
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done
