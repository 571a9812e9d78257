"""Empirical bias correction: fold the mean error that int8 adds to each weighted layer's output
back into that layer's bias.

Why: rounding weights and clipping activations does not only add noise, it shifts the mean of a
layer's output per channel (E[W_q x_q] != E[W x]), and a shifted mean is carried by every later
layer (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
2019; Finkelstein et al., 2019, empirical variant). On calibration data we run the float model
and the target's own int8 simulation (`Target.qdq_model`) side by side, take per output channel
the mean of float minus int8 output of every Conv / Gemm / MatMul(+Add bias), and add it to the
bias. Several rounds: after upstream layers are corrected, a downstream layer's own error is
measured again (its input has changed).

The corrections live in `CalibrationResult.bias_corrections` (`{node name: [per channel]}`), so
calibration.json records them and every int8 consumer applies the same ones through
`apply_bias_corrections` (TFLite int8 lowering, the Q/DQ model): the FP32 reference, the float
.tflite and reference.onnx keep the original biases.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe import graph

CORRECTED_OPS = ("Conv", "Gemm", "MatMul")
DEFAULT_ROUNDS = 2
DEFAULT_SAMPLES = 32


def correction_sites(model: onnx.ModelProto) -> dict[str, tuple[str, str | None, int]]:
    """{node name: (output tensor measured, bias initializer or None, channel axis)} for every
    weighted node with a constant weight whose bias can be shifted: a Conv (bias added when
    missing), a Gemm with a 1-D or absent C, a MatMul followed by an Add of a constant vector
    (the measured tensor is then the Add's output and the bias that constant)."""
    consumers = graph.consumers(model)
    sites = {}
    for node in model.graph.node:
        if not node.name or node.op_type not in CORRECTED_OPS or len(node.input) < 2:
            continue
        weight = graph.constant_value(model, node.input[1])
        if weight is None:
            continue
        if node.op_type == "Conv":
            sites[node.name] = (node.output[0], node.input[2] if len(node.input) > 2 and node.input[2] else None, 1)
        elif node.op_type == "Gemm":
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if bias is None or np.ndim(graph.constant_value(model, bias)) == 1:
                sites[node.name] = (node.output[0], bias, -1)
        else:
            users = consumers.get(node.output[0], [])
            if len(users) != 1 or users[0].op_type != "Add":
                continue
            add = users[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            value = graph.constant_value(model, other)
            if value is not None and value.ndim == 1 and value.shape[0] == weight.shape[-1]:
                sites[node.name] = (add.output[0], other, -1)
    return sites


def apply_bias_corrections(model: onnx.ModelProto, corrections: dict[str, list[float]] | None) -> onnx.ModelProto:
    """Copy of `model` with each corrected node's bias shifted (a new initializer, so a bias
    shared with an uncorrected node is left alone); `model` itself when there is nothing to do."""
    if not corrections:
        return model
    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    sites = correction_sites(corrected)
    nodes = {n.name: n for n in corrected.graph.node}
    consumers = graph.consumers(corrected)
    for name, delta in corrections.items():
        if name not in sites:
            continue
        _, bias_name, _ = sites[name]
        node = nodes[name]
        delta = np.asarray(delta, np.float32)
        base = graph.constant_value(corrected, bias_name) if bias_name else np.zeros_like(delta)
        new = graph.add_initializer(corrected, f"{name}_bias_corrected", (base + delta).astype(np.float32))
        if node.op_type == "MatMul":
            add = consumers[node.output[0]][0]
            add.input[list(add.input).index(bias_name)] = new
        elif len(node.input) > 2:
            node.input[2] = new
        else:
            node.input.append(new)
    graph.remove_unused_initializers(corrected)
    return corrected


def _channel_means(values: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(values, np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1]).mean(axis=0)


def _mean_outputs(model: onnx.ModelProto, feeds: list[dict], sites: dict) -> dict[str, np.ndarray]:
    tensors = {name: site[0] for name, site in sites.items()}
    session = graph.make_session(graph.expose_tensors(model, sorted(set(tensors.values()))))
    names = [o.name for o in session.get_outputs()]
    totals: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(names, session.run(None, feed)))
        for node, tensor in tensors.items():
            mean = _channel_means(values[tensor], sites[node][2])
            totals[node] = totals.get(node, 0.0) + mean
    return {node: total / len(feeds) for node, total in totals.items()}


def estimate_bias_corrections(model: onnx.ModelProto, calibration, dataset, qdq_model,
                              rounds: int = DEFAULT_ROUNDS, samples: int = DEFAULT_SAMPLES) -> dict:
    """Per-channel corrections ({node: [delta]}) that make the int8 simulation's output means match
    float on `dataset` (up to `samples` evenly spaced samples). `qdq_model(model, calibration)`
    returns the target's simulation (the Q/DQ model) with the calibration's current corrections
    applied; the result is also stored in `calibration.bias_corrections`."""
    from edgepipe.sampling import evenly_spaced

    sites = correction_sites(model)
    if not sites or len(dataset) == 0:
        return {}
    feeds = [dataset.sample(int(i)) for i in evenly_spaced(len(dataset), min(samples, len(dataset)))]
    reference = _mean_outputs(model, feeds, sites)
    corrections = {name: np.zeros_like(reference[name]) for name in sites}
    for _ in range(max(int(rounds), 1)):
        calibration.bias_corrections = {k: v.tolist() for k, v in corrections.items()}
        simulated, _ = qdq_model(model, calibration)
        measured = _mean_outputs(simulated, feeds, sites)
        for name in sites:
            corrections[name] = corrections[name] + (reference[name] - measured[name])
    calibration.bias_corrections = {k: [float(x) for x in v] for k, v in sorted(corrections.items())}
    return calibration.bias_corrections
