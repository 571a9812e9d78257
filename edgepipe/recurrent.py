"""ONNX LSTM / GRU / RNN unrolled over their static sequence length into primitive ONNX nodes.

Why unroll in ONNX, not in one backend: every per-step tensor (gate pre-activations, each cell
state c_t and hidden state h_t) must have an int8 range, and ranges come from running the ONNX
graph on the calibration set. `calibrate()` runs the unrolled graph (`unrolled`), so the
calibration holds a range for every tensor the TFLite rewrite (backends/tflite/ops/recurrent.py)
creates later under the same deterministic names; the primitives (Gemm/MatMul -> FULLY_CONNECTED
with per-channel int8 weights, Add, Sigmoid, Tanh, Mul, Split, Concat, Reshape) are lowered by
their own families, so a recurrent network stays inside one XNNPACK partition.

The input projection X·W^T + biases runs once for the whole sequence (one Gemm over [S*B, I]);
each step adds h_{t-1}·R^T. Directions forward / reverse / bidirectional, layout 0 and 1,
initial_h / initial_c inputs, LSTM peepholes (madmom's converted LSTMs carry them), GRU
linear_before_reset and the outputs Y / Y_h / Y_c are supported; what the equations here do not
compute (clip, input_forget, other activations, sequence_lens shorter than the sequence) is
refused by `unroll_problem`.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph

RECURRENT = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
MAX_STEPS = 1024  # per direction: each step is ~10 ops in the deployed graph
STEP_TENSOR = re.compile(r"^(?P<direction>.+/unrolled/d\d+)t\d+/(?P<role>\w+)$")  # "<Y>/unrolled/d0t3/c"


def _attrs(node: onnx.NodeProto) -> dict:
    values = graph.node_attributes(node)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _at(names, index: int) -> str:
    """An optional input / output name ("" when absent)."""
    return names[index] if len(names) > index else ""


def _sequence_dims(node: onnx.NodeProto, dims) -> tuple[int, int, int]:
    """(sequence length, batch, input size) of X."""
    seq, batch, size = dims
    return (batch, seq, size) if _attrs(node).get("layout", 0) else (seq, batch, size)


def unroll_problem(node: onnx.NodeProto, constant: Callable[[str], np.ndarray | None],
                   dims: Callable[[str], list | None]) -> str | None:
    """Why `node` (LSTM / GRU / RNN) cannot be unrolled, or None. `constant(name)` gives a
    constant's value, `dims(name)` a static shape (or raises / returns None when unknown)."""
    attrs = _attrs(node)
    if any(constant(name) is None for name in (_at(node.input, 1), _at(node.input, 2))) or (
            _at(node.input, 3) and constant(_at(node.input, 3)) is None):
        return "W, R and B must be constant initializers (weights computed at run time cannot be unrolled)"
    if node.op_type == "LSTM" and _at(node.input, 7) and constant(_at(node.input, 7)) is None:
        return "peephole weights (input P) must be a constant initializer (computed at run time they cannot be unrolled)"
    for name, default in (("clip", None), ("input_forget", 0)):
        if attrs.get(name, default) != default:
            return f"attribute {name}={attrs[name]} is not supported; export with the default"
    directions = 2 if attrs.get("direction", "forward") == "bidirectional" else 1
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations") or []]
    if activations and activations != DEFAULT_ACTIVATIONS[node.op_type] * directions:
        return (f"activations {', '.join(activations)} are not supported; only the defaults "
                f"({', '.join(DEFAULT_ACTIVATIONS[node.op_type])}) unroll")
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        return "activation_alpha / activation_beta are not supported"
    shape = dims(node.input[0])
    if shape is None or len(shape) != 3:
        return f"input X '{node.input[0]}' needs a static 3-D shape; pass --input-shape for the model inputs"
    seq, batch, _ = _sequence_dims(node, shape)
    if _at(node.input, 4):
        lengths = constant(_at(node.input, 4))
        if lengths is None or np.any(np.asarray(lengths) != seq):
            return ("sequence_lens shorter than the sequence (or computed at run time) is not supported; "
                    "feed full-length sequences and drop the sequence_lens input")
    if seq > MAX_STEPS:
        return f"sequence length {seq} is above {MAX_STEPS} steps; pass --input-shape with a shorter sequence"
    return None


class _Builder:
    """Nodes and initializers of one unrolled recurrent node, named under `base`."""

    def __init__(self, opset: int, base: str):
        self.opset, self.base = opset, base
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._shared: set[str] = set()

    def constant(self, tag: str, value: np.ndarray) -> str:
        name = f"{self.base}/{tag}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def shared(self, tag: str, make: Callable[[], np.ndarray]) -> str:
        """One initializer for a value every step of a direction reads (recurrent weights)."""
        name = f"{self.base}/{tag}"
        if name not in self._shared:
            self._shared.add(name)
            self.constant(tag, make())
        return name

    def op(self, op_type: str, inputs: list[str], tag: str, outputs: int = 1, output: str | None = None,
           **attrs) -> list[str]:
        names = [output] if output else [f"{self.base}/{tag}" + (f"_{k}" if outputs > 1 else "") for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{self.base}/{tag}", **attrs))
        return names

    def reshape(self, x: str, shape, tag: str, output: str | None = None) -> str:
        return self.op("Reshape", [x, self.constant(f"{tag}/shape", np.array(shape, np.int64))], tag,
                       output=output)[0]

    def split(self, x: str, axis: int, sizes: list[int], tag: str) -> list[str]:
        if len(sizes) == 1:
            return [x]
        if self.opset < 13:
            return self.op("Split", [x], tag, len(sizes), axis=axis, split=sizes)
        return self.op("Split", [x, self.constant(f"{tag}/split", np.array(sizes, np.int64))], tag, len(sizes),
                       axis=axis)

    def concat(self, parts: list[str], axis: int, tag: str, output: str | None = None) -> str:
        return self.op("Concat", parts, tag, output=output, axis=axis)[0]


def _state(b: _Builder, name: str, layout: int, directions: int, batch: int, hidden: int,
           constant: Callable[[str], np.ndarray | None], tag: str) -> list[str | None]:
    """initial_h / initial_c as one [B, H] tensor per direction (None: zeros, the default)."""
    if not name:
        return [None] * directions
    value = constant(name)
    if value is not None:
        value = np.asarray(value, np.float32)
        value = value.transpose(1, 0, 2) if layout else value
        return [None if not np.any(value[d]) else b.constant(f"{tag}{d}", value[d]) for d in range(directions)]
    if layout:
        name = b.op("Transpose", [name], f"{tag}/to_seq_major", perm=[1, 0, 2])[0]
    parts = b.split(name, 0, [1] * directions, f"{tag}/directions")
    return [b.reshape(p, [batch, hidden], f"{tag}{d}") for d, p in enumerate(parts)]


def _step(b: _Builder, op_type: str, x_part: str, h: str | None, c: str | None, r: np.ndarray,
          recurrent_bias: np.ndarray, linear_before_reset: int, tag: str, direction: str,
          peephole: np.ndarray | None = None) -> tuple[str, str | None]:
    """One time step: (h_t, c_t) from the input projection x_part = x_t·W^T + biases. Weights
    are initializers shared by the steps of `direction`. `peephole`: the LSTM's P row [Pi, Po, Pf]
    (i and f see c_{t-1}, o sees c_t), or None."""
    hidden = r.shape[1]

    def weight(name: str, make: Callable[[], np.ndarray]) -> str:
        return b.shared(f"{direction}/{name}", make)

    if op_type == "RNN":
        pre = x_part if h is None else b.op("Add", [x_part, b.op("MatMul", [h, weight(
            "R", lambda: r.T.copy())], f"{tag}/hr")[0]], f"{tag}/pre")[0]
        return b.op("Tanh", [pre], f"{tag}/h")[0], None
    if op_type == "LSTM":
        gates = x_part if h is None else b.op("Add", [x_part, b.op("MatMul", [h, weight(
            "R", lambda: r.T.copy())], f"{tag}/hr")[0]], f"{tag}/gates")[0]
        i, o, f, g = b.split(gates, 1, [hidden] * 4, f"{tag}/gate")

        def peek(pre: str, state: str | None, gate: int, name: str) -> str:
            """pre + P_gate * state (ONNX order of P: i, o, f)."""
            if peephole is None or state is None or not np.any(peephole[gate * hidden:(gate + 1) * hidden]):
                return pre
            p = weight(f"P_{name}", lambda: peephole[gate * hidden:(gate + 1) * hidden].copy())
            return b.op("Add", [pre, b.op("Mul", [state, p], f"{tag}/p{name}")[0]], f"{tag}/pre_{name}")[0]

        i = b.op("Sigmoid", [peek(i, c, 0, "i")], f"{tag}/i")[0]
        o_late = peephole is not None and np.any(peephole[hidden:2 * hidden])  # o sees c_t: after it
        o = o if o_late else b.op("Sigmoid", [o], f"{tag}/o")[0]
        ig = b.op("Mul", [i, b.op("Tanh", [g], f"{tag}/g")[0]], f"{tag}/ig")[0]
        if c is None:  # zero initial cell state: the forget gate multiplies zeros, so it is not computed
            c_new = ig
        else:
            f = b.op("Sigmoid", [peek(f, c, 2, "f")], f"{tag}/f")[0]
            c_new = b.op("Add", [b.op("Mul", [f, c], f"{tag}/fc")[0], ig], f"{tag}/c")[0]
        o = b.op("Sigmoid", [peek(o, c_new, 1, "o")], f"{tag}/o")[0] if o_late else o
        return b.op("Mul", [o, b.op("Tanh", [c_new], f"{tag}/tanh_c")[0]], f"{tag}/h")[0], c_new
    # GRU, gates z, r, h
    xz, xr, xh = b.split(x_part, 1, [hidden] * 3, f"{tag}/x_gate")
    if h is None:
        z, reset = (b.op("Sigmoid", [v], f"{tag}/{n}")[0] for v, n in ((xz, "z"), (xr, "r")))
        candidate = xh if not linear_before_reset else b.op("Add", [xh, b.op("Mul", [reset, weight(
            "rb_h", lambda: recurrent_bias[2 * hidden:])], f"{tag}/r_hh")[0]], f"{tag}/pre_h")[0]
        h_tilde = b.op("Tanh", [candidate], f"{tag}/h_tilde")[0]
        return b.op("Sub", [h_tilde, b.op("Mul", [z, h_tilde], f"{tag}/z_h")[0]], f"{tag}/h")[0], None
    if linear_before_reset:
        hr = b.op("Gemm", [h, weight("R", lambda: r), weight("rb", lambda: np.concatenate(
            [np.zeros(2 * hidden, np.float32), recurrent_bias[2 * hidden:]]))], f"{tag}/hr", transB=1)[0]
        hz, hrr, hh = b.split(hr, 1, [hidden] * 3, f"{tag}/h_gate")
    else:
        hz, hrr = b.split(b.op("MatMul", [h, weight("R_zr", lambda: r[:2 * hidden].T.copy())], f"{tag}/hr")[0],
                          1, [hidden] * 2, f"{tag}/h_gate")
    z = b.op("Sigmoid", [b.op("Add", [xz, hz], f"{tag}/pre_z")[0]], f"{tag}/z")[0]
    reset = b.op("Sigmoid", [b.op("Add", [xr, hrr], f"{tag}/pre_r")[0]], f"{tag}/r")[0]
    if linear_before_reset:
        recurrent = b.op("Mul", [reset, hh], f"{tag}/r_hh")[0]
    else:
        recurrent = b.op("MatMul", [b.op("Mul", [reset, h], f"{tag}/r_h")[0],
                                    weight("R_h", lambda: r[2 * hidden:].T.copy())], f"{tag}/hh")[0]
    h_tilde = b.op("Tanh", [b.op("Add", [xh, recurrent], f"{tag}/pre_h")[0]], f"{tag}/h_tilde")[0]
    keep = b.op("Mul", [z, b.op("Sub", [h, h_tilde], f"{tag}/h_delta")[0]], f"{tag}/z_delta")[0]
    return b.op("Add", [h_tilde, keep], f"{tag}/h")[0], None


def _unroll_node(model: onnx.ModelProto, node: onnx.NodeProto, dims, constant, used: set[str]) -> tuple[list, list]:
    """(nodes, initializers) computing `node`'s outputs that something reads under their own names."""
    attrs = _attrs(node)
    base = next(o for o in node.output if o) + "/unrolled"
    b = _Builder(graph.opset_version(model), base)
    layout = int(attrs.get("layout", 0))
    seq, batch, size = _sequence_dims(node, dims(node.input[0]))
    w = np.asarray(constant(node.input[1]), np.float32)
    r = np.asarray(constant(node.input[2]), np.float32)
    directions, gates = w.shape[0], GATES[node.op_type]
    hidden = r.shape[2]
    biases = np.asarray(constant(_at(node.input, 3)), np.float32) if _at(node.input, 3) else \
        np.zeros((directions, 2 * gates * hidden), np.float32)
    lbr = int(attrs.get("linear_before_reset", 0))
    peepholes = (np.asarray(constant(_at(node.input, 7)), np.float32).reshape(directions, 3 * hidden)
                 if node.op_type == "LSTM" and _at(node.input, 7) else None)
    x = node.input[0] if not layout else b.op("Transpose", [node.input[0]], "x_seq_major", perm=[1, 0, 2])[0]
    x = b.reshape(x, [seq * batch, size], "x_rows")
    h0 = _state(b, _at(node.input, 5), layout, directions, batch, hidden, constant, "initial_h")
    c0 = _state(b, _at(node.input, 6), layout, directions, batch, hidden, constant, "initial_c")
    reverse = attrs.get("direction", "forward") == "reverse"
    hs, last_h, last_c = [], [], []
    for d in range(directions):
        w_bias, r_bias = biases[d][:gates * hidden], biases[d][gates * hidden:]
        x_bias = w_bias + r_bias
        if node.op_type == "GRU" and lbr:  # R_bh stays inside r * (h·R_h^T + R_bh)
            x_bias = w_bias + np.concatenate([r_bias[:2 * hidden], np.zeros(hidden, np.float32)])
        projected = b.op("Gemm", [x, b.constant(f"W{d}", w[d]), b.constant(f"B{d}", x_bias)], f"x_proj{d}",
                         transB=1)[0]
        steps = b.split(projected, 0, [batch] * seq, f"x_steps{d}")
        h, c = h0[d], c0[d]
        per_step = [None] * seq
        order = range(seq - 1, -1, -1) if reverse or d == 1 else range(seq)
        for t in order:
            h, c = _step(b, node.op_type, steps[t], h, c, r[d], r_bias, lbr, f"d{d}t{t}", f"d{d}",
                         None if peepholes is None else peepholes[d])
            per_step[t] = h
        hs.append(per_step)
        last_h.append(h)
        last_c.append(c)
    _outputs(b, node, layout, seq, batch, hidden, hs, last_h, last_c, used)
    return b.nodes, b.initializers


def _outputs(b: _Builder, node, layout, seq, batch, hidden, hs, last_h, last_c, used: set[str]) -> None:
    """Y [S, D, B, H] (layout 1: [B, S, D, H]), Y_h and Y_c [D, B, H] (layout 1: [B, D, H]); an
    output nothing reads (exporters name Y even when only Y_h is used) is not built."""
    directions = len(hs)
    y, y_h, y_c = (name if name in used else "" for name in (_at(node.output, k) for k in range(3)))
    y_c = y_c if node.op_type == "LSTM" else ""
    if y:
        per_direction = []
        for d in range(directions):
            rows = [b.reshape(hs[d][t], [1, 1, batch, hidden], f"y_d{d}t{t}") for t in range(seq)]
            per_direction.append(rows[0] if seq == 1 else b.concat(rows, 0, f"y_d{d}"))
        stacked = per_direction[0] if directions == 1 else b.concat(per_direction, 1, "y_directions")
        if layout:
            b.op("Transpose", [stacked], "y_batch_major", output=y, perm=[2, 0, 1, 3])
        else:
            b.op("Identity", [stacked], "y", output=y)
    for name, states, tag in ((y_h, last_h, "y_h"), (y_c, last_c, "y_c")):
        if not name:
            continue
        states = [s if s is not None else b.constant(f"{tag}_zero{d}", np.zeros((batch, hidden), np.float32))
                  for d, s in enumerate(states)]
        shape = [batch, 1, hidden] if layout else [1, batch, hidden]
        parts = [b.reshape(s, shape, f"{tag}{d}", output=name if directions == 1 else None)
                 for d, s in enumerate(states)]
        if directions > 1:
            b.concat(parts, 1 if layout else 0, tag, output=name)


def unroll(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Replace, in place, every LSTM / GRU / RNN of the main graph that `unroll_problem` accepts
    by its unrolled nodes (shapes are inferred again); returns {replaced node: its unrolled nodes}."""
    if not any(n.op_type in RECURRENT and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return {}
    inferred = graph.infer_shapes(model)
    infos = graph.value_infos(inferred)
    initializers = graph.initializers(model)
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        return graph.constant_value(model, name) if name in constants else None

    def dims(name: str):
        shape = graph.declared_shape(infos[name]) if name in infos else None
        return [int(d) for d in shape] if graph.is_static(shape) else None

    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    rewritten, replaced, added = [], {}, []
    for node in model.graph.node:
        if node.op_type in RECURRENT and node.domain in ("", "ai.onnx") and unroll_problem(node, constant, dims) is None:
            nodes, tensors = _unroll_node(model, node, dims, constant, used)
            rewritten.extend(nodes)
            added.extend(tensors)
            replaced[node.name or node.op_type] = [n.name for n in nodes]
        else:
            rewritten.append(node)
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(rewritten)
        model.graph.initializer.extend(added)
        del model.graph.value_info[:]
        model.graph.value_info.extend(graph.infer_shapes(model).graph.value_info)
    return replaced


def unrolled(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when it has nothing to unroll, else an unrolled copy (for calibration)."""
    if not any(n.op_type in RECURRENT for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy if unroll(copy) else model


def share_step_ranges(calibration) -> None:
    """One range per direction and role (gates, c, h, ...): the union over the steps, written to
    every step's tensor. A state is the same quantity at every step, so it gets one int8 grid (as
    a fused LSTM kernel has), and the first steps from a zero state, whose own ranges may be tiny,
    do not get a grid whose ADD / MUL scale ratios the kernels refuse."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in calibration.tensors:
        match = STEP_TENSOR.match(name)
        if match:
            groups[(match["direction"], match["role"])].append(name)
    for names in groups.values():
        entries = [calibration.tensors[name] for name in names]
        union = {"min": min(e.min for e in entries), "max": max(e.max for e in entries),
                 "amax": max(e.amax for e in entries), "lo": min(e.lo for e in entries),
                 "hi": max(e.hi for e in entries)}
        for name in names:
            calibration.tensors[name] = dataclasses.replace(calibration.tensors[name], **union)
