"""Tensors a full-integer model cannot carry on int8: kept float, with the nodes that read them.

Why: an int8 grid has 256 steps over the calibrated range, so every value below half a step
becomes 0. That is harmless where such values are rare or carry nothing, and ruinous where most
of the signal lives there: a power spectrogram or un-logged mel energies span several decades,
so the loudest bin sets the range and most bins round to 0 (Resemblyzer's mel frames into its
LSTM, DNSMOS's STFT convolutions, Basic Pitch's constant-Q octaves). TensorRT's Q/DQ models keep
such tensors float between their pairs; a full-integer TFLite model quantizes every edge, so the
target has to decide.

The rule, from the calibration histograms (`TensorCalibration.zeroed`): a tensor whose int8 grid
rounds more than ZEROED_SHARE of its non-zero calibration values to 0 is "wide range". Exact zeros
(ReLU, padding) do not count: int8 keeps them exactly. Outputs of squashing ops (softmax
probabilities, sigmoid / tanh gates) are left out: their tiny values are the ones int8 models
always drop, and keeping them float would make every attention and LSTM float. The node that
writes a wide-range tensor and every node that reads it run float; a reader whose own output is
wide range passes the region on by the same rule, so it ends where the values are compressed
(a Log, a normalization, a matmul whose output has an ordinary distribution).
"""

from __future__ import annotations

ZEROED_SHARE = 0.5
SQUASHING_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "Tanh", "Softsign", "Exp"})


def wide_range_tensors(ctx) -> dict[str, float]:
    """{tensor: share of its non-zero calibration values int8 rounds to 0} for the quantized
    lowering's wide-range tensors (see above); empty for the float lowering and 16x8 models."""
    calibration = ctx.calibration
    if not ctx.quantized or calibration is None or ctx.int16_everywhere:
        return {}
    producers = {o: n for n in ctx.model.graph.node for o in n.output}
    chosen = {}
    for name, tensor in calibration.tensors.items():
        share = float(getattr(tensor, "zeroed", 0.0) or 0.0)
        if share <= ZEROED_SHARE or name in ctx.constants:
            continue
        producer = producers.get(name)
        if producer is None and name not in {i.name for i in ctx.model.graph.input}:
            continue  # a per-step tensor of an unrolled recurrence: its node is named by its LSTM
        if producer is not None and producer.op_type in SQUASHING_OPS:
            continue
        if ctx.onnx_kind(name) != "float32":
            continue
        chosen[name] = share
    return chosen


def wide_range_nodes(ctx, tensors: dict[str, float]) -> set[str]:
    """The nodes that write or read a wide-range tensor (graph inputs have no writer)."""
    producers = {o: n for n in ctx.model.graph.node for o in n.output}
    nodes = {producers[name].name for name in tensors if name in producers}
    for name in tensors:
        nodes |= {reader.name for reader in ctx.consumers.get(name, [])}
    return nodes


def summary_line(tensors: dict[str, float], limit: int = 4) -> str:
    """One build line naming the wide-range tensors kept float and why."""
    if not tensors:
        return ""
    ranked = sorted(tensors.items(), key=lambda item: (-item[1], item[0]))
    named = ", ".join(f"'{name}' ({share:.0%})" for name, share in ranked[:limit])
    more = f" and {len(ranked) - limit} more" if len(ranked) > limit else ""
    return (f"kept float: {len(ranked)} wide-range tensor(s) whose int8 grid rounds most non-zero "
            f"calibration values to 0: {named}{more}")
