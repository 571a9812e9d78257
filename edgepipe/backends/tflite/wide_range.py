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

A Log amplifies what int8 does to small values more: a power bin rounded to 0 becomes the log's
floor, decades away from its value. The arithmetic before a Log already runs float
(float_statistics.py); a tensor entering that island from an int8 node (DNSMOS's STFT
convolution outputs, a quarter of whose values int8 zeroes) is kept float from LOG_ZEROED_SHARE.

A recurrence compounds int8 rounding instead: its state (h, c) is requantized at every step
and the next step reads the rounded state, so an LSTM over 160 frames (Resemblyzer) loses its
signal whatever its input's grid, and a few dozen steps are already enough (text2tashkeel's
32-character BiLSTMs lost 6 dB at the output to their int8 cell state). An LSTM / GRU / RNN
unrolled over more than LONG_RECURRENCE_STEPS steps - every one that reads its own state back -
stays float (`backend.float_long_recurrences`), as TensorRT targets keep every recurrence float.
Float costs no accuracy; a single step (a streaming VAD's per-call cell) keeps its int8 kernels.

Only tensors that change something are named: one whose writer and readers are float anyway (an
output Concat, a normalization's statistics) is left out of the build line and the manifest.
"""

from __future__ import annotations

import re

ZEROED_SHARE = 0.5
LONG_RECURRENCE_STEPS = 1  # more than one step: the state is read back
STEP_NODE = re.compile(r"/unrolled/d\d+t(\d+)/")  # recurrent.py's per-step node names
LOG_ZEROED_SHARE = 0.1
CLAMP_OPS = frozenset({"Relu", "Clip"})
SQUASHING_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "Tanh", "Softsign", "Exp"})


def wide_range_tensors(ctx) -> dict[str, float]:
    """{tensor: share of its non-zero calibration values int8 rounds to 0} for the quantized
    lowering's wide-range tensors (see above); empty for the float lowering and 16x8 models."""
    calibration = ctx.calibration
    if not ctx.quantized or calibration is None or ctx.int16_everywhere:
        return {}
    inputs = {i.name for i in ctx.model.graph.input}
    chosen = {}
    for name, tensor in calibration.tensors.items():
        share = float(getattr(tensor, "zeroed", 0.0) or 0.0)
        if share <= ZEROED_SHARE or name in ctx.constants:
            continue
        producer = ctx.producers.get(name)
        if producer is None and name not in inputs:
            continue  # a tensor a lowering rewrite replaced: no node writes it here
        if producer is not None and producer.op_type in SQUASHING_OPS:
            continue
        if ctx.onnx_kind(name) != "float32":
            continue
        chosen[name] = share
    return chosen


def log_inputs(ctx) -> dict[str, float]:
    """{tensor: zeroed share} of the int8-written tensors that enter a Log's float island (the
    Log and the float statistics nodes that only feed it) with more than LOG_ZEROED_SHARE of their
    non-zero values rounded to 0 by int8 (see above)."""
    from edgepipe.backends.tflite.float_statistics import SINKS, STATISTICS_OPS

    calibration = ctx.calibration
    if not ctx.quantized or calibration is None or ctx.int16_everywhere:
        return {}
    nodes = list(ctx.model.graph.node)
    island = [n for n in nodes if n.op_type == "Log" and ctx.node_dtype(n) == "float32"]
    seen = {n.name for n in island}
    chosen: dict[str, float] = {}
    while island:
        node = island.pop()
        for name in node.input:
            producer = ctx.producers.get(name)
            if producer is None or producer.name in seen or name in ctx.constants:
                continue
            if producer.op_type in STATISTICS_OPS | SINKS and ctx.node_dtype(producer) == "float32":
                seen.add(producer.name)
                island.append(producer)
                continue
            # a 1-D op lifted to 2-D (ops/one_d.py) writes "<name>;2d", calibrated as <name>
            tensor = calibration.tensors.get(name) or calibration.tensors.get(name.removesuffix(";2d"))
            share = float(getattr(tensor, "zeroed", 0.0) or 0.0) if tensor is not None else 0.0
            if share > LOG_ZEROED_SHARE and ctx.node_dtype(producer) == "int8":
                chosen[name] = share
    return chosen


def effective(ctx, tensors: dict[str, float], already_float: set[str]) -> dict[str, float]:
    """The tensors whose writer or a reader would otherwise run int8 (see above)."""
    kept = {}
    for name, share in tensors.items():
        touched = [ctx.producers[name]] if name in ctx.producers else []
        touched += ctx.consumers.get(name, [])
        for node in touched:
            if node.name in already_float:
                continue
            entry = ctx.lowering_for(node)
            if entry is None or entry.supports_int8(ctx, node):
                kept[name] = share
                break
    return kept


def wide_range_nodes(ctx, tensors: dict[str, float]) -> set[str]:
    """The nodes that write or read a wide-range tensor (graph inputs have no writer), and a
    clamp (Relu / Clip) right after a float reader: on int8 it would read the reader's grid and
    write its own, a requantizing RELU6 XNNPACK does not delegate; in float it fuses or delegates."""
    nodes = {ctx.producers[name].name for name in tensors if name in ctx.producers}
    for name in tensors:
        readers = ctx.consumers.get(name, [])
        nodes |= {reader.name for reader in readers}
        for reader in readers:
            for out in reader.output:
                nodes |= {n.name for n in ctx.consumers.get(out, []) if n.op_type in CLAMP_OPS}
    return nodes


def long_recurrences(ctx) -> dict[str, int]:
    """{recurrent node: steps} of the LSTM / GRU / RNN nodes unrolled over more than
    LONG_RECURRENCE_STEPS steps (see above); empty for the float lowering and 16x8 models."""
    if not ctx.quantized or ctx.int16_everywhere:
        return {}
    found = {}
    for name, nodes in ctx.expanded.items():
        steps = {int(match.group(1)) for node in nodes for match in [STEP_NODE.search(node)] if match}
        if len(steps) > LONG_RECURRENCE_STEPS:
            found[name] = len(steps)
    return found


def summary_line(tensors: dict[str, float], recurrences: dict[str, int] | None = None, limit: int = 4) -> str:
    """One build line naming the wide-range tensors and long recurrences kept float, and why."""
    parts = []
    if recurrences:
        listed = ", ".join(f"'{name}' ({steps} steps)" for name, steps in sorted(recurrences.items())[:limit])
        more = f" and {len(recurrences) - limit} more" if len(recurrences) > limit else ""
        parts.append(f"kept float: {len(recurrences)} recurrence(s) over more than {LONG_RECURRENCE_STEPS} step(s), "
                     f"where int8 state error compounds: {listed}{more}")
    if tensors:
        parts.append(_tensor_line(tensors, limit))
    return "; ".join(parts)


def _tensor_line(tensors: dict[str, float], limit: int) -> str:
    ranked = sorted(tensors.items(), key=lambda item: (-item[1], item[0]))
    named = ", ".join(f"'{name}' ({share:.0%})" for name, share in ranked[:limit])
    more = f" and {len(ranked) - limit} more" if len(ranked) > limit else ""
    return (f"kept float: {len(ranked)} wide-range tensor(s) (share of non-zero calibration values an int8 "
            f"grid rounds to 0): {named}{more}")
