"""Q/DQ ONNX: insert QuantizeLinear/DequantizeLinear pairs into FP32 ONNX.

Shared by backends, so it lives beside them rather than in one: the TensorRT backend deploys this
model (explicit quantization), and every target's `Target.qdq_model` uses it to simulate its int8
arithmetic in ONNX Runtime for the accuracy tools (sensitivity, mixed precision, finetune), with
asymmetric activation ranges for targets that quantize activations asymmetrically (TFLite).

Placement follows TensorRT, the model's deployed consumer. TensorRT (8.0+, and the only INT8 path in 11.x) reads INT8 intent from Q/DQ nodes: it runs a layer
in INT8 when its inputs arrive through DequantizeLinear, fuses the Q/DQ scales into the kernel and
runs everything else in FP16/FP32. Where the pairs go therefore decides speed *and* accuracy, so
placement follows NVIDIA's recommendations (TensorRT developer guide, "Working with Quantized
Types" -> "Q/DQ Layer-Placement Recommendations"; pytorch-quantization / Model Optimizer):

- weighted ops (Conv, ConvTranspose, Gemm, MatMul): quantize every *input* - the activation
  per-tensor, the weight per output channel (Conv axis 0, ConvTranspose axis 1, Gemm/MatMul the
  output-feature axis); the bias stays float (TensorRT quantizes it itself); outputs are NOT
  quantized (the next consumer decides);
- residual Add fed by a weighted op: quantize only the *other* (skip) input, which lets TensorRT
  fuse the add (and a following ReLU) into the convolution's epilogue;
- pooling (MaxPool, AveragePool, GlobalAveragePool): quantize the input so pooling runs in INT8;
- anything else (activations, Concat, Resize, Softmax, ...) gets no Q/DQ of its own: TensorRT
  propagates Q/DQ across commuting layers and runs the rest in FP16.

Every decision is per node, and `keep_float` names nodes that stay un-quantized (mixed precision:
TensorRT runs them in FP16). One Q/DQ pair per tensor is shared by all quantized consumers.

Weight storage (the `int8_weights` switch): by default weights stay float *rounded onto the int8
grid* followed by Q -> DQ (the form pytorch-quantization exports). Every TensorRT from 8.0 to 11
parses it, which matters for JetPack boards that lag desktop releases (TensorRT 8.x rejects INT8
initializers: "invalid weights type of Int8"). `int8_weights=True` stores int8 initializers + DQ
only (4x smaller, the Model Optimizer "dq_only" form), for TensorRT >= 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.backends.support import CONTROL_FLOW
from edgepipe.calibrate.bias_correction import apply_bias_corrections
from edgepipe.calibrate.result import CalibrationResult
from edgepipe.errors import UserError

MIN_OPSET = 13  # QuantizeLinear/DequantizeLinear with `axis` (per-channel)
MIN_IR_VERSION = 7  # the IR version that opset 13 came with
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
RESIDUAL_OPS = ("Add",)
# Trailing outputs that are optional in ONNX and that exporters name even when nothing reads them
# (training statistics, dropout masks, pooling indices); TensorRT's parser implements only the first.
# A tensor whose calibrated |max| is below this is constantly zero (a conv after a zero-initialised
# BatchNorm gamma, a Relu that never fires): it gets the scale of [-1, 1] instead of ~1e-14, which
# is below what FP16 (TensorRT's fallback precision) can even represent. Any scale holds 0 exactly.
DEGENERATE_AMAX = 1e-10
DEAD_CHANNEL_RATIO = 2.0**-20  # dead weight channels' scale floor, relative to the largest channel
OPTIONAL_OUTPUTS = ("LayerNormalization", "BatchNormalization", "Dropout", "MaxPool")


@dataclass
class QdqReport:
    """Which nodes got Q/DQ and why; serialized into the manifest's precision section."""

    quantized: dict[str, dict] = field(default_factory=dict)  # node -> {op, inputs, reason}
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stays float
    activation_pairs: int = 0
    weight_pairs: int = 0  # Q/DQ (float storage) or DQ-only (int8 storage) on weights
    weight_storage: str = "float-qdq"
    per_channel: bool = True

    def to_dict(self) -> dict:
        return {
            "qdq_pairs": self.activation_pairs + self.weight_pairs,
            "activation_pairs": self.activation_pairs,
            "weight_pairs": self.weight_pairs,
            "weight_storage": self.weight_storage,
            "per_channel": self.per_channel,
            "quantized_nodes": {k: self.quantized[k] for k in sorted(self.quantized)},
            "float_nodes": {k: self.float_nodes[k] for k in sorted(self.float_nodes)},
        }


def simulated_int8_model(model: onnx.ModelProto, calibration: CalibrationResult, *, symmetric: bool,
                         keep_float=frozenset(), per_channel: bool = True) -> tuple[onnx.ModelProto, dict]:
    """The Q/DQ model (and its report) that simulates int8 inference in ONNX Runtime; `symmetric`
    False rewrites the activation pairs to the calibration's asymmetric (lo, hi) ranges."""
    qdq, report = write_qdq_model(model, calibration, keep_float=keep_float, per_channel=per_channel)
    return (qdq if symmetric else asymmetric_activations(qdq, calibration)), report


def asymmetric_activations(qdq: onnx.ModelProto, calibration: CalibrationResult) -> onnx.ModelProto:
    """Rewrite per-tensor activation Q/DQ of a symmetric Q/DQ model to the asymmetric (lo, hi) ranges."""
    inits = {t.name: t for t in qdq.graph.initializer}
    done: set[str] = set()
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in calibration or node.input[1] in done:
            continue
        scale, zero_point = calibration.asymmetric_params(node.input[0])
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.array(zero_point, np.int8), node.input[2]))
        done.add(node.input[1])
    return qdq


def with_activation_ranges(qdq: onnx.ModelProto, calibration: CalibrationResult, names, *,
                           symmetric: bool) -> onnx.ModelProto:
    """Copy of `simulated_int8_model(model, c0, symmetric=...)` (`qdq`) with the activation Q/DQ
    pairs of `names` set to `calibration`'s ranges: the model `simulated_int8_model(model,
    calibration)` builds when `calibration` differs from `c0` only in those tensors' ranges.

    Why: the placement depends on which tensors have ranges, never on their values, so checks
    that try other thresholds on a few tensors (stability.output_effect) need not build the
    whole model again; each pair's scale and zero point are computed exactly as the builder does
    (`_Inserter.activation`, `asymmetric_activations`)."""
    names = set(names)
    result = onnx.ModelProto()
    result.CopyFrom(qdq)
    inits = {t.name: t for t in result.graph.initializer}
    done: set[str] = set()
    for node in result.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in names or node.input[1] in done:
            continue
        tensor = node.input[0]
        if symmetric:
            amax = calibration.tensors[tensor].amax
            scale, zero_point = quantmath.symmetric_scale(amax if abs(amax) >= DEGENERATE_AMAX else 1.0), 0
        else:
            scale, zero_point = calibration.asymmetric_params(tensor)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.asarray(np.array(scale, np.float32)), node.input[1]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.asarray(np.array(zero_point, np.int8)), node.input[2]))
        done.add(node.input[1])
    return result


def weight_channel_axis(node: onnx.NodeProto, weight_rank: int) -> int:
    """Axis of a weight tensor that indexes the node's output channels/features."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if graph.node_attributes(node).get("transB", 0) else 1
    return weight_rank - 1  # MatMul: B is [..., K, N]


def per_channel_weight(node: onnx.NodeProto, weight_rank: int, per_channel: bool) -> bool:
    """Per-channel scales for this weight? A MatMul B above 2-D (a batched [..., K, N] constant)
    stays per-tensor: ONNX Runtime's fused integer MatMul and TensorRT take per-column scales
    on a 2-D B only ("b zero point is not valid")."""
    return per_channel and weight_rank >= 2 and not (node.op_type == "MatMul" and weight_rank > 2)


class _Inserter:
    """Adds Q/DQ nodes to one model; remembers what it already quantized so pairs are shared."""

    def __init__(self, model: onnx.ModelProto, calibration: CalibrationResult, per_channel: bool,
                 int8_weights: bool):
        self.model, self.calibration = model, calibration
        self.per_channel, self.int8_weights = per_channel, int8_weights
        self.taken = graph.taken_names(model)
        self.constants: dict[str, onnx.TensorProto] = {}  # the model's constants by name, looked up once
        for tensor in model.graph.initializer:
            self.constants.setdefault(tensor.name, tensor)  # the first of a name, as graph.constant_value
        self.constant_nodes = {n.output[0] for n in model.graph.node if n.op_type == "Constant" and n.output}
        self.not_float32 = _non_float32_tensors(model)  # float16/float64 tensors: Q/DQ's scales are float32
        self.dequantized: dict[str, str] = {}  # float tensor -> its DQ output
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert before index, node)
        self.report = QdqReport(weight_storage="int8-dq" if int8_weights else "float-qdq",
                                per_channel=per_channel)

    def constant_value(self, name: str) -> np.ndarray | None:
        """graph.constant_value of an original tensor, without scanning the graph for each one
        (the constants this inserter adds get fresh names no original node reads)."""
        if name in self.constants:
            return numpy_helper.to_array(self.constants[name])
        return graph.constant_value(self.model, name) if name in self.constant_nodes else None

    def is_constant(self, name: str) -> bool:
        return name in self.constants or (name in self.constant_nodes and self.constant_value(name) is not None)

    def name(self, base: str) -> str:
        candidate, index = base, 1
        while candidate in self.taken:
            candidate, index = f"{base}_{index}", index + 1
        self.taken.add(candidate)
        return candidate

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def activation(self, tensor: str, position: int) -> str:
        """DQ output for an activation (created once, placed before its first quantized reader)."""
        if tensor in self.dequantized:
            return self.dequantized[tensor]
        amax = self.calibration.tensors[tensor].amax
        value = quantmath.symmetric_scale(amax if abs(amax) >= DEGENERATE_AMAX else 1.0)
        scale = self.constant(f"{tensor}_scale", np.array(value, np.float32))
        zero = self.constant(f"{tensor}_zero_point", np.array(0, np.int8))
        quantized, dequantized = self.name(f"{tensor}_quantized"), self.name(f"{tensor}_dequantized")
        self.new_nodes.append((position, helper.make_node(
            "QuantizeLinear", [tensor, scale, zero], [quantized], name=self.name(f"{tensor}_QuantizeLinear"))))
        self.new_nodes.append((position, helper.make_node(
            "DequantizeLinear", [quantized, scale, zero], [dequantized],
            name=self.name(f"{tensor}_DequantizeLinear"))))
        self.dequantized[tensor] = dequantized
        self.report.activation_pairs += 1
        return dequantized

    def weight(self, node: onnx.NodeProto, tensor: str, value: np.ndarray, position: int) -> str:
        """DQ output for a constant weight: per-channel (or per-tensor) symmetric int8, zero point 0."""
        key = f"{tensor}@{node.op_type}"
        if key in self.dequantized:
            return self.dequantized[key]
        axis = weight_channel_axis(node, value.ndim)
        if per_channel_weight(node, value.ndim, self.per_channel):
            all_zero = not np.any(np.abs(value) >= DEGENERATE_AMAX)
            q, scales = quantmath.per_channel_symmetric(value, axis=axis, min_ratio=DEAD_CHANNEL_RATIO,
                                                        min_scales=quantmath.symmetric_scale(1.0) if all_zero else None,
                                                        ranges=self.calibration.weight_ranges)
            attrs = {"axis": axis}
            zeros = np.zeros(scales.shape, np.int8)
            shape = [1] * value.ndim
            shape[axis] = -1
            grid = quantmath.dequantize(q, scales.reshape(shape))
        else:
            amax = float(np.max(np.abs(value))) if value.size else 0.0
            scalar = quantmath.symmetric_scale(amax if amax >= DEGENERATE_AMAX else 1.0)
            q = quantmath.quantize(value, scalar, 0, narrow=True)
            scales, zeros, attrs = np.array(scalar, np.float32), np.array(0, np.int8), {}
            grid = quantmath.dequantize(q, scalar)
        scale = self.constant(f"{tensor}_scale", scales.astype(np.float32))
        zero = self.constant(f"{tensor}_zero_point", zeros)
        dequantized = self.name(f"{tensor}_dequantized")
        if self.int8_weights:
            stored = self.constant(f"{tensor}_int8", q)
        else:
            stored = self.name(f"{tensor}_quantized")
            self.new_nodes.append((position, helper.make_node(
                "QuantizeLinear", [self.constant(f"{tensor}_on_grid", grid), scale, zero], [stored],
                name=self.name(f"{tensor}_QuantizeLinear"), **attrs)))
        self.new_nodes.append((position, helper.make_node(
            "DequantizeLinear", [stored, scale, zero], [dequantized],
            name=self.name(f"{tensor}_DequantizeLinear"), **attrs)))
        self.dequantized[key] = dequantized
        self.report.weight_pairs += 1
        return dequantized


def write_qdq_model(
    model: onnx.ModelProto,
    calibration: CalibrationResult,
    keep_float: set[str] | frozenset[str] = frozenset(),
    per_channel: bool = True,
    int8_weights: bool = False,
) -> tuple[onnx.ModelProto, dict]:
    """Copy of `model` with explicit Q/DQ where TensorRT can use INT8; returns (model, report dict).

    Graph input and output names are unchanged; activation scales are
    `calibration.symmetric_scale(name)` with int8 zero point 0.
    """
    qdq = onnx.ModelProto()
    qdq.CopyFrom(apply_bias_corrections(model, calibration.bias_corrections, skip=set(keep_float)))
    graph.ensure_node_names(qdq)
    unknown = sorted(set(keep_float) - {n.name for n in qdq.graph.node})
    if unknown:
        raise UserError(f"float node '{unknown[0]}' is not a node of the model; check the node names "
                        "in float_nodes (see calibration.json or Netron)")
    qdq = _ensure_opset(qdq)
    _drop_unused_optional_outputs(qdq)
    inserter = _Inserter(qdq, calibration, per_channel, int8_weights)
    producers = graph.producers(qdq)
    consumers = graph.consumers(qdq)
    for position, node in enumerate(qdq.graph.node):
        if node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx"):
            inserter.report.float_nodes[node.name] = (f"control flow ({node.op_type}): its subgraphs run float "
                                                      "(FP16 on TensorRT), no Q/DQ inside")
            continue
        if node.name in keep_float:
            if node.op_type in WEIGHTED_OPS + POOLING_OPS + RESIDUAL_OPS:
                inserter.report.float_nodes[node.name] = "kept float on request (TensorRT runs it in FP16)"
            continue
        if node.op_type in WEIGHTED_OPS:
            _quantize_weighted(inserter, node, position)
        elif node.op_type in POOLING_OPS:
            _quantize_inputs(inserter, node, position, [0], "pooling input: runs in INT8")
        elif node.op_type in RESIDUAL_OPS:
            _quantize_residual(inserter, node, position, producers, consumers, keep_float)
    _insert_nodes(qdq, inserter.new_nodes)
    graph.remove_unused_initializers(qdq)
    try:
        onnx.checker.check_model(qdq)
    except onnx.checker.ValidationError as exc:  # a bug here, not a user problem: keep the trace
        raise RuntimeError(f"Q/DQ model failed the ONNX checker: {exc}") from exc
    return qdq, inserter.report.to_dict()


def _drop_unused_optional_outputs(model: onnx.ModelProto) -> None:
    used = set(graph.consumers(model)) | {o.name for o in model.graph.output}  # subgraph reads included
    for node in model.graph.node:
        if node.op_type in OPTIONAL_OUTPUTS and node.domain in ("", "ai.onnx"):
            outputs = [node.output[0]] + [name if name in used else "" for name in node.output[1:]]
            while len(outputs) > 1 and not outputs[-1]:
                outputs.pop()
            del node.output[:]
            node.output.extend(outputs)


def _ensure_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if graph.opset_version(model) >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise UserError(f"model opset {graph.opset_version(model)} cannot be converted to opset {MIN_OPSET} "
                        f"for Q/DQ ({type(exc).__name__}); re-export the model with opset >= 13") from exc
    # the converter keeps the IR version; IR < 4 requires every initializer (our scales) to be a graph input
    converted.ir_version = max(converted.ir_version, MIN_IR_VERSION)
    return converted


def _non_float32_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """{tensor: dtype name} of the float tensors that are not float32 (they stay float: a float32
    scale on a float16 tensor is a model ONNX Runtime and TensorRT refuse to load)."""
    others = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64",
              onnx.TensorProto.BFLOAT16: "bfloat16"}
    infos = graph.value_infos(graph.infer_shapes(model))
    types = {name: info.type.tensor_type.elem_type for name, info in infos.items()}
    types.update({tensor.name: tensor.data_type for tensor in model.graph.initializer})
    return {name: others[kind] for name, kind in types.items() if kind in others}


def _activation_inputs(inserter: _Inserter, node: onnx.NodeProto, indices: list[int]) -> list[int]:
    return [i for i in indices if i < len(node.input) and node.input[i] and not inserter.is_constant(node.input[i])]


def _no_range(inserter: _Inserter, tensor: str) -> str:
    if tensor in inserter.calibration.unbounded:  # an attention mask's -inf: no int8 grid holds it
        return f"input '{tensor}' carries an attention mask's infinities (calibration.json unbounded)"
    return f"input '{tensor}' has no calibration range"


def _quantize_inputs(inserter: _Inserter, node: onnx.NodeProto, position: int, indices: list[int],
                     reason: str) -> None:
    """Q/DQ on the given activation inputs; records a float decision when calibration lacks one."""
    done = []
    for index in _activation_inputs(inserter, node, indices):
        tensor = node.input[index]
        if tensor in inserter.not_float32:
            inserter.report.float_nodes[node.name] = f"input '{tensor}' is {inserter.not_float32[tensor]}, not float32"
            return
        if tensor not in inserter.calibration:
            inserter.report.float_nodes[node.name] = _no_range(inserter, tensor)
            return
        node.input[index] = inserter.activation(tensor, position)
        done.append(tensor)
    if done:
        inserter.report.quantized[node.name] = {"op": node.op_type, "inputs": done, "reason": reason}


def _quantize_weighted(inserter: _Inserter, node: onnx.NodeProto, position: int) -> None:
    activations = _activation_inputs(inserter, node, [0, 1])
    odd = [node.input[i] for i in range(len(node.input)) if node.input[i] in inserter.not_float32]
    if odd:
        inserter.report.float_nodes[node.name] = f"input '{odd[0]}' is {inserter.not_float32[odd[0]]}, not float32"
        return
    missing = [node.input[i] for i in activations if node.input[i] not in inserter.calibration]
    if missing:
        inserter.report.float_nodes[node.name] = _no_range(inserter, missing[0])
        return
    weight_index = 1
    weight = inserter.constant_value(node.input[weight_index]) if len(node.input) > 1 else None
    quantized = []
    for index in activations:
        quantized.append(node.input[index])
        node.input[index] = inserter.activation(node.input[index], position)
    if weight is not None and weight.dtype.kind == "f" and weight.ndim >= 1:
        quantized.append(node.input[weight_index])
        node.input[weight_index] = inserter.weight(node, node.input[weight_index], weight, position)
    if weight is not None and per_channel_weight(node, weight.ndim, inserter.per_channel):
        kind = f"per-channel (axis {weight_channel_axis(node, weight.ndim)})"
    else:
        kind = "per-tensor"
    reason = f"weighted op: activation per-tensor, weight {kind}"
    inserter.report.quantized[node.name] = {"op": node.op_type, "inputs": quantized, "reason": reason}


def _quantize_residual(inserter, node, position, producers, consumers, keep_float) -> None:
    """Residual Add: quantize the skip input so TensorRT fuses the add into the weighted op."""
    inputs = _activation_inputs(inserter, node, [0, 1])
    if len(inputs) != 2:
        return

    def fusable(index: int) -> bool:
        producer = producers.get(node.input[index])
        return (producer is not None and producer.op_type in WEIGHTED_OPS and producer.name not in keep_float
                and len(consumers.get(node.input[index], [])) == 1)

    fused = [i for i in inputs if fusable(i)]
    if not fused:
        inserter.report.float_nodes[node.name] = "Add without a weighted-op input: not a fusable residual"
        return
    branch = fused[-1]  # the later weighted op absorbs the add
    skip = [i for i in inputs if i != branch]
    producer = producers[node.input[branch]].name
    _quantize_inputs(inserter, node, position, skip,
                     f"residual add: skip input quantized so TensorRT fuses the add into '{producer}'")


def _insert_nodes(model: onnx.ModelProto, new_nodes: list[tuple[int, onnx.NodeProto]]) -> None:
    """Place each new node before the original node at its index (keeps a topological order)."""
    by_position: dict[int, list[onnx.NodeProto]] = {}
    for position, node in new_nodes:
        by_position.setdefault(position, []).append(node)
    ordered = []
    for position, node in enumerate(model.graph.node):
        ordered.extend(by_position.get(position, []))
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)


__all__ = ["write_qdq_model", "weight_channel_axis", "QdqReport"]
