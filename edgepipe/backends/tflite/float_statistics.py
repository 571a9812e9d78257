"""Per-row statistics computed in float: the arithmetic that feeds a normalization's float island.

Why: a normalization's statistics (x - mean, its squares, their mean, the variance plus epsilon)
span orders of magnitude across rows, and x - mean cancels most of x. On one per-tensor int8
grid small variances round to zero (1 / sqrt(0) is inf) and the centred values to a few steps:
tf2onnx's Keras LayerNormalization written as a BatchNormalization fed its own mean and variance
(Magika's byte classifier) lost most of its SQNR that way. Sqrt, Reciprocal, ReduceSumSquare and
a BatchNormalization with computed statistics already run as float islands; the elementwise and
reduce nodes whose every reader is such a float node join them, so the statistics are computed
from one DEQUANTIZE of the input instead of a chain of int8 roundings.

A Log (float only) is such a reader too: a log-power spectrum's power (re^2 + im^2, its root
squared again, floored by Max(x, 1e-12)) spans ten decades, and on one int8 grid every bin below
one step becomes the floor, log(1e-12) instead of its value (DNSMOS's STFT front end); so the
power arithmetic between the STFT convolutions and the Log runs in float as well. Data movement
(Transpose, Slice, Reshape) on the way is exact either way; a Concat is not: Basic Pitch stacks
its constant-Q transform's octaves (|x| from 1 down to 1e-3) into one tensor, whose one int8 grid
zeroes the low octaves. In float each octave's convolution keeps its own calibrated grid.
"""

from __future__ import annotations

SINKS = frozenset({"Sqrt", "Reciprocal", "ReduceSumSquare", "BatchNormalization", "Log"})
STATISTICS_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare",
                            "Squeeze", "Unsqueeze", "Reshape", "Max", "Min", "Clip", "Neg",
                            "Transpose", "Slice", "Concat", "Identity", "Flatten"})


def statistics_nodes(ctx) -> set[str]:
    """Names of the nodes that compute a float normalization island's statistics (see above)."""
    if not ctx.quantized:
        return set()
    nodes = list(ctx.model.graph.node)
    floats = {n.name for n in nodes if n.op_type in SINKS and ctx.node_dtype(n) == "float32"}
    if not floats:
        return set()
    producers = ctx.producers
    outputs = set(ctx.graph_outputs)
    chosen: set[str] = set()
    frontier = [n for n in nodes if n.name in floats]
    while frontier:
        node = frontier.pop()
        for name in node.input:
            producer = producers.get(name)
            if (producer is None or producer.name in floats or producer.op_type not in STATISTICS_OPS
                    or producer.domain not in ("", "ai.onnx")):
                continue
            readers = [user for out in producer.output for user in ctx.consumers.get(out, [])]
            if any(out in outputs for out in producer.output) or any(user.name not in floats for user in readers):
                continue
            floats.add(producer.name)
            chosen.add(producer.name)
            frontier.append(producer)
    return chosen
