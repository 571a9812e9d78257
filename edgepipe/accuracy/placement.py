"""A target's int8 placement as one switchable ONNX Runtime model: which tensors carry an int8
grid, which weights are quantized, and a session that turns each of them on or off per run.

Why: the planner and sensitivity score hundreds of variants ("these nodes float"). Building a
Q/DQ model and an ONNX Runtime session per variant costs more than running it; here the model is
built once with a fake-quant switch on every quantized tensor (x + s * (DQ(Q(x)) - x), the switch
s a scalar graph input of 0 or 1; cheaper in ONNX Runtime than Where) and on every int8 weight (a
twin of the node on the int8-grid weights, so both keep constant, prepacked weights), and a
variant is only a different feed. Grids come from the target (`Target.int8_placement`): for
arm-cpu the scale and zero point the .tflite lowering gives every tensor
(edgepipe/backends/tflite/placement.py), so elementwise and activation tensors (Add, Mul,
HardSwish, Softmax, the decomposed LayerNorm) are quantized where the file quantizes them, not
only the inputs of weighted ops as in TensorRT's placement.

What a float node changes (TFLite's float islands): a tensor stays on its int8 grid when its
producer or any reader still runs in int8 (the other side dequantizes it); a weighted node's
weights are int8 unless the node is float. Kernel arithmetic inside an op (look-up tables,
integer requantization) is not emulated: the planner confirms on the real backend.

16x8 (`Target.int16_placement`: the int8 placement plus the int16 grids of the whole-model 16x8
lowering) gives a tensor a second switch, so one session mixes the levels: int16 grids are
symmetric, scale = observed max |x| / 32767, as the lowering writes them; a tensor is int8 while
any int8 node (or one asked for int16 without an int16 kernel) touches it, int16 when only
int16 nodes do; weights stay per-channel int8. ONNX QuantizeLinear has int16 only from opset
21, so an int16 point is the same arithmetic spelled out (round-half-even of x / s, clamped to
int16, times s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph

SWITCH_SUFFIX = "::int8"
INT16_SUFFIX = "::int16"


@dataclass
class Placement:
    """Where a target quantizes when no node is kept float."""

    grids: dict[str, tuple[float, int]]  # tensor -> (scale, zero point) of its int8 representation
    int8_nodes: frozenset[str]  # nodes that compute in int8
    weights: dict[str, dict[int, np.ndarray]]  # node -> {input index: the weight on its int8 grid}
    fused: dict[str, str] = field(default_factory=dict)  # node <-> the activation fused with it
    description: str = ""
    int16_grids: dict[str, float] = field(default_factory=dict)  # tensor -> its symmetric int16 scale (16x8)
    int16_nodes: frozenset[str] = frozenset()  # nodes with an int16 kernel
    # float islands the target runs as an int8 lookup table when both ends are int8 (XNNPACK's
    # DEQUANTIZE, MUL, ADD, QUANTIZE of one tensor): one entry per island, its nodes
    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def partners(self, nodes) -> set[str]:
        """`nodes` plus the activations fused with them (a fused pair is float or int8 together)."""
        result = set(nodes)
        result |= {self.fused[n] for n in nodes if n in self.fused}
        return result

    def quantized(self, model_index: "ModelIndex", float_nodes, int16_nodes=()) -> tuple[set[str], set[str]]:
        """(switches on, nodes with int8 weights) when `float_nodes` stay float and `int16_nodes`
        run 16x8 (those with an int16 kernel; the others stay int8)."""
        int16 = (set(int16_nodes) & self.int16_nodes) - set(float_nodes)
        int8 = self.int8_nodes - set(float_nodes) - int16
        switches = set()
        for tensor in set(self.grids) | set(self.int16_grids):
            touching = {model_index.producer.get(tensor), *model_index.readers.get(tensor, ())}
            if touching & int8 and tensor in self.grids:
                switches.add(tensor_switch(tensor))
            elif touching & int16:
                switches.add(int16_switch(tensor) if tensor in self.int16_grids else tensor_switch(tensor))
        return switches, {node for node in self.weights if node in int8 | int16}

    def as_int16(self, model_index: "ModelIndex", switches) -> set[str]:
        """A group's int8 switches at int16 (weights stay int8; a tensor that a node without an
        int16 kernel touches stays int8)."""
        result = set()
        for switch in switches:
            tensor = switch[:-len(SWITCH_SUFFIX)]
            touching = {model_index.producer.get(tensor), *model_index.readers.get(tensor, ())} & self.int8_nodes
            result.add(int16_switch(tensor) if tensor in self.int16_grids and touching <= self.int16_nodes
                       else switch)
        return result


def tensor_switch(tensor: str) -> str:
    return tensor + SWITCH_SUFFIX


def int16_switch(tensor: str) -> str:
    return tensor + INT16_SUFFIX


def weight_switch(node: str) -> str:
    return node + "/weights" + SWITCH_SUFFIX


class ModelIndex:
    """Producer and readers of every tensor (node names), computed once per model."""

    def __init__(self, model: onnx.ModelProto):
        self.producer = {out: node.name for node in model.graph.node for out in node.output if out}
        self.readers: dict[str, list[str]] = {}
        for node in model.graph.node:
            for name in node.input:
                if name:
                    self.readers.setdefault(name, []).append(node.name)


class SwitchableQdq:
    """One ONNX Runtime session of `model` with every quantization point of `placement` switchable."""

    def __init__(self, model: onnx.ModelProto, placement: Placement, output_names: list[str]):
        self.placement, self.index = placement, ModelIndex(model)
        self.switched = _switchable_model(model, placement)
        self.session = graph.make_session(self.switched, threads=1)  # variants run one after another
        self.output_names = output_names
        self.switches = {i.name for i in self.switched.graph.input if i.name.endswith((SWITCH_SUFFIX, INT16_SUFFIX))}

    def switches_for(self, float_nodes, int16_nodes=()) -> set[str]:
        """The switches that are on when `float_nodes` stay float and `int16_nodes` run 16x8."""
        tensors, weights = self.placement.quantized(self.index, float_nodes, int16_nodes)
        return tensors | {weight_switch(n) for n in weights}

    def run(self, samples: list[dict], on: set[str]) -> list[np.ndarray]:
        """Outputs (concatenated over samples) with only the switches `on` quantizing."""
        switches = {name: np.array(1.0 if name in on else 0.0, np.float32) for name in self.switches}
        per_output: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for feed in samples:
            for store, value in zip(per_output, self.session.run(self.output_names, {**feed, **switches})):
                store.append(np.asarray(value, np.float32))
        return [np.concatenate(values, axis=0) for values in per_output]


def _switchable_model(model: onnx.ModelProto, placement: Placement) -> onnx.ModelProto:
    """Copy of `model` where each grid tensor and int8 weight passes through a switched fake-quant."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    g = result.graph
    taken = graph.taken_names(result)

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def switch(name: str) -> str:
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
        return name

    def mix(name: str, on: str, off: str, out: str) -> list[onnx.NodeProto]:
        """out = off + switch * (on - off): a scalar switch of 0 or 1 picks one (cheaper than Where)."""
        delta, scaled = fresh(f"{out}/delta"), fresh(f"{out}/scaled")
        return [helper.make_node("Sub", [on, off], [delta], name=fresh(f"{out}/Sub")),
                helper.make_node("Mul", [delta, switch(name)], [scaled], name=fresh(f"{out}/Mul")),
                helper.make_node("Add", [off, scaled], [out], name=fresh(f"{out}/Add"))]

    def fake_quant(tensor: str, source: str, out: str) -> list[onnx.NodeProto]:
        """`source` (the float value of grid tensor `tensor`) through its switched Q/DQ into `out`."""
        nodes = []
        if tensor in placement.int16_grids:  # the int16 point first: its mix feeds the int8 one
            dq16, mixed = fresh(f"{tensor}/dq16"), fresh(f"{tensor}/int16_mixed")
            nodes += [*int16_fake_quant(tensor, source, placement.int16_grids[tensor], dq16),
                      *mix(int16_switch(tensor), dq16, source, mixed if tensor in placement.grids else out)]
            if tensor not in placement.grids:
                return nodes
            source = mixed  # both switches are never on together: the int8 point reads the float value
        scale, zero_point = placement.grids[tensor]
        s = fresh(f"{tensor}/scale")
        z = fresh(f"{tensor}/zero_point")
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s),
                              numpy_helper.from_array(np.array(zero_point, np.int8), z)])
        q, dq = fresh(f"{tensor}/q"), fresh(f"{tensor}/dq")
        return nodes + [helper.make_node("QuantizeLinear", [source, s, z], [q], name=fresh(f"{tensor}/Quantize")),
                helper.make_node("DequantizeLinear", [q, s, z], [dq], name=fresh(f"{tensor}/Dequantize")),
                *mix(tensor_switch(tensor), dq, source, out)]

    def int16_fake_quant(tensor: str, source: str, scale: float, dq: str) -> list[onnx.NodeProto]:
        """`dq` = clamp(round(source / s), -32768, 32767) * s (Round is half-to-even, as Q)."""
        s = fresh(f"{tensor}/int16_scale")
        low, high = fresh(f"{tensor}/int16_min"), fresh(f"{tensor}/int16_max")
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s),
                              numpy_helper.from_array(np.array(-32768.0, np.float32), low),
                              numpy_helper.from_array(np.array(32767.0, np.float32), high)])
        steps = [fresh(f"{tensor}/{step}") for step in ("div", "round", "min", "max")]
        return [helper.make_node("Div", [source, s], [steps[0]], name=fresh(f"{tensor}/Div")),
                helper.make_node("Round", [steps[0]], [steps[1]], name=fresh(f"{tensor}/Round")),
                helper.make_node("Min", [steps[1], high], [steps[2]], name=fresh(f"{tensor}/Min")),
                helper.make_node("Max", [steps[2], low], [steps[3]], name=fresh(f"{tensor}/Max")),
                helper.make_node("Mul", [steps[3], s], [dq], name=fresh(f"{tensor}/Mul"))]

    inputs = {i.name for i in g.input}
    renamed: dict[str, str] = {}  # graph-input grid tensors: readers take the switched copy
    ordered: list[onnx.NodeProto] = []
    points = set(placement.grids) | set(placement.int16_grids)
    for name in [i.name for i in g.input if i.name in points]:
        renamed[name] = fresh(f"{name}/switched")
        ordered.extend(fake_quant(name, name, renamed[name]))
    for node in list(g.node):
        for position, name in enumerate(node.input):
            if name in renamed:
                node.input[position] = renamed[name]
        outputs = list(node.output)
        ordered.append(node)
        if node.name in placement.weights:  # a twin on int8-grid weights; the switch picks its output
            twin = onnx.NodeProto()
            twin.CopyFrom(node)
            twin.name = fresh(f"{node.name}/int8_weights")
            for position, value in placement.weights[node.name].items():
                twin.input[position] = fresh(f"{node.input[position]}/int8_grid")
                g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), twin.input[position]))
            raw = fresh(f"{node.output[0]}/float_weights")
            twin.output[0] = fresh(f"{node.output[0]}/int8_weights")
            final = node.output[0]
            node.output[0] = raw
            ordered.extend([twin, *mix(weight_switch(node.name), twin.output[0], raw, final)])
        for name in outputs:
            if name in points and name not in inputs:
                writer = next(n for n in reversed(ordered) if name in n.output)
                raw = fresh(f"{name}/float")
                writer.output[list(writer.output).index(name)] = raw
                ordered.extend(fake_quant(name, raw, name))
    del g.node[:]
    g.node.extend(ordered)
    return result


__all__ = ["Placement", "ModelIndex", "SwitchableQdq", "tensor_switch", "weight_switch"]
