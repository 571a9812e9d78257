"""Asymmetric ranges set by what the consumer reads, not by the tensor's histogram alone.

SiLU inputs: raise the lower end of the range to where x * sigmoid(x) stops moving.

Why: a SiLU (Swish) block is Sigmoid(x) and Mul(x, Sigmoid(x)) reading the same x, usually a
Conv output. Its calibrated range has to hold x's whole negative tail (YOLOv8n: -83 next to
+84), because every range method looks at x alone, yet below -12 the SiLU's output is within 1e-4
of 0 and the sigmoid's within 1e-5: nothing downstream can tell -12 from -83. On an asymmetric int8
grid (TFLite) that tail costs half the steps of the side that carries the signal. Raising `lo` to
SILU_FLOOR keeps those steps; values below it read as SILU_FLOOR, whose SiLU is 0 on any int8
output grid. Only the asymmetric range moves: `amax` (symmetric grids) keeps both sides.

Inputs of a Softmax that writes a graph output: the upper end is the observed maximum. The
output is read at its row maxima (argmax, CTC decoding, a score threshold), and the rare values at
the top of a logit histogram are those maxima (a recognizer's confident blank over 6,625 classes
is one value in 6,625, under any percentile's cut): clipping them lowers exactly the winners, a
systematic shift where a wider grid only adds rounding noise; the same reason `auto` never clips
a graph output. A Softmax inside the network (attention) keeps its method's range: its rows are
mixed again downstream, and a coarser grid for every value can cost more than the clipped tops.
The tensors before the Softmax that only move values (Reshape, Squeeze, ...) and are read by
nothing else get the same top, since a backend may quantize the producer's output and share its
grid.

Both run on every calibration result (stages/calibrate.py), whatever the method, because each
range follows from its consumer; every changed tensor says so in its `reason`.
"""

from __future__ import annotations

import onnx

from edgepipe import graph

SILU_FLOOR = -12.0  # |x * sigmoid(x)| < 1e-4 and sigmoid(x) < 1e-5 below


def silu_inputs(model: onnx.ModelProto) -> set[str]:
    """Tensors read only by SiLU blocks: Sigmoid(x) nodes and Mul(x, one of those Sigmoids' outputs)."""
    consumers = graph.consumers(model)
    outputs = {o.name for o in model.graph.output}
    found = set()
    for name, nodes in consumers.items():
        if name in outputs:
            continue
        sigmoids = {n.output[0] for n in nodes if n.op_type == "Sigmoid"}
        muls = [n for n in nodes if n.op_type == "Mul"]
        if not sigmoids or not muls or len(sigmoids) + len(muls) != len(nodes):
            continue  # another reader (a Conv, a graph output, ...) needs the negative tail
        if all(len(n.input) == 2 and name in n.input and any(t in sigmoids for t in n.input) for n in muls):
            found.add(name)
    return found


def narrow_saturated_tails(model: onnx.ModelProto, result) -> list[str]:
    """Raise `lo` of every SiLU input below SILU_FLOOR to it (in place); the tensors changed."""
    changed = []
    for name in sorted(silu_inputs(model)):
        tensor = result.tensors.get(name)
        if tensor is None or tensor.lo >= SILU_FLOOR:
            continue
        tensor.lo = SILU_FLOOR
        tensor.reason = (tensor.reason + "; " if tensor.reason else "") + (
            f"SiLU input: asymmetric range starts at {SILU_FLOOR:g} (x*sigmoid(x) is 0 on any int8 grid below)")
        changed.append(name)
    return changed


SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
VALUE_MOVING_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Identity"})


def softmax_inputs(model: onnx.ModelProto) -> set[str]:
    """Inputs of the Softmax/LogSoftmax nodes that write a graph output, and the tensors before
    them that only move values into them."""
    consumers = graph.consumers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    found = set()
    for node in model.graph.node:
        if node.op_type not in SOFTMAX_OPS or not node.input or node.output[0] not in outputs:
            continue
        name = node.input[0]
        while name and name not in found:
            found.add(name)
            producer = producers.get(name)
            if producer is None or producer.op_type not in VALUE_MOVING_OPS or not producer.input:
                break
            source = producer.input[0]
            if source in outputs or len(consumers.get(source, [])) != 1:
                break  # another reader, or the graph output: its own range
            name = source
    return found


def keep_softmax_tops(model: onnx.ModelProto, result) -> list[str]:
    """Raise `hi` of every output Softmax's input (and what only moves values into it) to the
    observed maximum (in place); the tensors changed."""
    changed = []
    for name in sorted(softmax_inputs(model)):
        tensor = result.tensors.get(name)
        if tensor is None or tensor.hi >= tensor.max:
            continue
        tensor.hi = float(tensor.max)
        tensor.reason = (tensor.reason + "; " if tensor.reason else "") + (
            "output Softmax input: asymmetric range ends at the observed maximum (the row maxima are read)")
        changed.append(name)
    return changed
