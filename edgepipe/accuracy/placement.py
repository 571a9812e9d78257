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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph

SWITCH_SUFFIX = "::int8"


@dataclass
class Placement:
    """Where a target quantizes when no node is kept float."""

    grids: dict[str, tuple[float, int]]  # tensor -> (scale, zero point) of its int8 representation
    int8_nodes: frozenset[str]  # nodes that compute in int8
    weights: dict[str, dict[int, np.ndarray]]  # node -> {input index: the weight on its int8 grid}
    fused: dict[str, str] = field(default_factory=dict)  # node <-> the activation fused with it
    description: str = ""

    def partners(self, nodes) -> set[str]:
        """`nodes` plus the activations fused with them (a fused pair is float or int8 together)."""
        result = set(nodes)
        result |= {self.fused[n] for n in nodes if n in self.fused}
        return result

    def quantized(self, model_index: "ModelIndex", float_nodes) -> tuple[set[str], set[str]]:
        """(tensors on their int8 grid, nodes with int8 weights) when `float_nodes` stay float."""
        int8 = self.int8_nodes - set(float_nodes)
        tensors = set()
        for tensor in self.grids:
            producer = model_index.producer.get(tensor)
            if producer in int8 or any(reader in int8 for reader in model_index.readers.get(tensor, ())):
                tensors.add(tensor)
        return tensors, {node for node in self.weights if node in int8}


def tensor_switch(tensor: str) -> str:
    return tensor + SWITCH_SUFFIX


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
        self.switches = {i.name for i in self.switched.graph.input if i.name.endswith(SWITCH_SUFFIX)}

    def switches_for(self, float_nodes) -> set[str]:
        """The switches that are on when `float_nodes` stay float (every point still quantized)."""
        tensors, weights = self.placement.quantized(self.index, float_nodes)
        return {tensor_switch(t) for t in tensors} | {weight_switch(n) for n in weights}

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
        scale, zero_point = placement.grids[tensor]
        s = fresh(f"{tensor}/scale")
        z = fresh(f"{tensor}/zero_point")
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s),
                              numpy_helper.from_array(np.array(zero_point, np.int8), z)])
        q, dq = fresh(f"{tensor}/q"), fresh(f"{tensor}/dq")
        return [helper.make_node("QuantizeLinear", [source, s, z], [q], name=fresh(f"{tensor}/Quantize")),
                helper.make_node("DequantizeLinear", [q, s, z], [dq], name=fresh(f"{tensor}/Dequantize")),
                *mix(tensor_switch(tensor), dq, source, out)]

    inputs = {i.name for i in g.input}
    renamed: dict[str, str] = {}  # graph-input grid tensors: readers take the switched copy
    ordered: list[onnx.NodeProto] = []
    for name in [i.name for i in g.input if i.name in placement.grids]:
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
            if name in placement.grids and name not in inputs:
                writer = next(n for n in reversed(ordered) if name in n.output)
                raw = fresh(f"{name}/float")
                writer.output[list(writer.output).index(name)] = raw
                ordered.extend(fake_quant(name, raw, name))
    del g.node[:]
    g.node.extend(ordered)
    return result


__all__ = ["Placement", "ModelIndex", "SwitchableQdq", "tensor_switch", "weight_switch"]
