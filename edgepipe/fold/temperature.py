"""Temperature scaling: fit one scalar T on held-out logits and fold 1/T into the last linear op.

Why: networks are often over-confident; dividing the logits by a fitted T (Guo et al. 2017)
calibrates the probabilities without changing any argmax. Folding 1/T into the weights of the
Gemm / MatMul(+Add) / Conv that produces the logits makes it free on device, and the report's ECE
before/after shows whether it helped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe.errors import UserError
from edgepipe.graph import (
    add_initializer,
    constant_value,
    consumers,
    ensure_node_names,
    fresh_name,
    producers,
    remove_unused_initializers,
)

T_BOUNDS = (0.05, 20.0)
# ops that only move logits around: scaling their input scales their output the same way
_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Transpose")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64)))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_probs = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """T in [0.05, 20] minimizing the NLL of softmax(logits / T).

    The NLL is convex in beta = 1/T (log-sum-exp of a linear function minus a linear one), so its
    derivative mean(E_p[z] - z_label) is increasing in beta; bisection on log(beta) finds the
    unique minimum (or the bound it lies beyond) without step-size tuning.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.size or y.size == 0:
        raise UserError(f"temperature fit: logits {z.shape} and labels ({y.size},) do not match as [N, classes] / [N]")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise UserError(f"temperature fit: labels must lie in [0, {z.shape[1] - 1}] (the number of logits)")
    label_logit = z[np.arange(y.size), y]

    def slope(log_beta: float) -> float:
        probs = np.exp(_log_softmax(z * np.exp(log_beta)))
        return float(np.mean((probs * z).sum(axis=1) - label_logit))

    low, high = np.log(1.0 / T_BOUNDS[1]), np.log(1.0 / T_BOUNDS[0])
    if slope(low) >= 0:
        return T_BOUNDS[1]
    if slope(high) <= 0:
        return T_BOUNDS[0]
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    return float(np.exp(-0.5 * (low + high)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins (lo, hi] of |bin|/N * |accuracy - confidence|."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    correct = (predicted == y).astype(np.float64)
    bin_index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = bin_index == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def find_logits(model: onnx.ModelProto, output_name: str | None = None) -> str:
    """The logits tensor: the input of the (Log)Softmax producing the output, else the output."""
    outputs = [o.name for o in model.graph.output]
    name = output_name or outputs[0]
    if name not in outputs:
        raise UserError(f"temperature: the model has no output '{name}'; outputs are {outputs}")
    producer = producers(model).get(name)
    if producer is not None and producer.op_type in ("Softmax", "LogSoftmax"):
        return producer.input[0]
    return name


def fold_temperature(model: onnx.ModelProto, temperature: float, output_name: str | None = None) -> tuple[onnx.ModelProto, dict]:
    """Divide the logits by T inside the graph: scale the producing linear op, else insert a Mul."""
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature <= 0:
        raise UserError(f"temperature {temperature}: must be a positive number (or 'auto' / 'none')")
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    ensure_node_names(folded)
    logits = find_logits(folded, output_name)
    report = {"temperature": temperature, "logits": logits}
    linear = _linear_producer(folded, logits)
    if linear is not None:
        for node, slots in linear:
            _scale_constant_inputs(folded, node, slots, 1.0 / temperature)
        report.update(method="weights", nodes=[node.name for node, _ in linear])
    else:
        report.update(method="mul", nodes=[_insert_mul(folded, logits, 1.0 / temperature)])
    remove_unused_initializers(folded)
    return folded, report


def _single_reader(model, name: str) -> bool:
    return len(consumers(model).get(name, [])) == 1 and name not in {o.name for o in model.graph.output}


def _linear_producer(model, logits: str):
    """[(node, constant input slots to scale)] for the op making `logits`, or None if not linear."""
    by_output = producers(model)
    node = by_output.get(logits)
    while node is not None and node.op_type in _PASS_THROUGH and _single_reader(model, node.input[0]):
        node = by_output.get(node.input[0])

    def constant_slots(n, slots):
        return all(len(n.input) <= s or not n.input[s] or constant_value(model, n.input[s]) is not None for s in slots)

    if node is None:
        return None
    if node.op_type in ("Gemm", "Conv", "ConvTranspose") and constant_slots(node, (1, 2)):
        return [(node, (1, 2))]
    if node.op_type == "MatMul" and constant_value(model, node.input[1]) is not None:
        return [(node, (1,))]
    if node.op_type == "Add":
        for data_slot, bias_slot in ((0, 1), (1, 0)):
            matmul = by_output.get(node.input[data_slot])
            if (
                matmul is not None and matmul.op_type == "MatMul"
                and constant_value(model, node.input[bias_slot]) is not None
                and constant_value(model, matmul.input[1]) is not None
                and _single_reader(model, matmul.output[0])
            ):
                return [(matmul, (1,)), (node, (bias_slot,))]
    return None


def _scale_constant_inputs(model, node, slots, factor: float) -> None:
    for slot in slots:
        if len(node.input) <= slot or not node.input[slot]:
            continue
        value = constant_value(model, node.input[slot])
        scaled = (np.asarray(value, dtype=np.float64) * factor).astype(value.dtype)
        node.input[slot] = add_initializer(model, f"{node.name}_in{slot}_over_T", scaled)


def _insert_mul(model, logits: str, factor: float) -> str:
    """Rename the logits producer's output and let a Mul by 1/T write the original name."""
    producer = producers(model).get(logits)
    if producer is None:
        raise UserError(f"temperature: logits tensor '{logits}' is a graph input; nothing to scale")
    unscaled = fresh_name(model, f"{logits}_before_temperature")
    producer.output[list(producer.output).index(logits)] = unscaled
    factor_name = add_initializer(model, "inverse_temperature", np.asarray(factor, dtype=np.float32))
    name = fresh_name(model, "temperature_scale")
    mul = helper.make_node("Mul", [unscaled, factor_name], [logits], name=name)
    model.graph.node.insert(list(model.graph.node).index(producer) + 1, mul)
    return name
