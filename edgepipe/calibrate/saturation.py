"""Raise the lower end of a SiLU input's range to where x * sigmoid(x) stops moving.

Why: a SiLU (Swish) block is Sigmoid(x) and Mul(x, Sigmoid(x)) reading the same x, usually a
Conv output. Its calibrated range has to hold x's whole negative tail (YOLOv8n: -83 next to
+84), because every range method looks at x alone, yet below -12 the SiLU's output is within 1e-4
of 0 and the sigmoid's within 1e-5: nothing downstream can tell -12 from -83. On an asymmetric int8
grid (TFLite) that tail costs half the steps of the side that carries the signal. Raising `lo` to
SILU_FLOOR keeps those steps; values below it read as SILU_FLOOR, whose SiLU is 0 on any int8
output grid. Only the asymmetric range moves: `amax` (symmetric grids) keeps both sides.

Run on every calibration result (stages/calibrate.py), whatever the method, because it removes
range no consumer can use; each narrowed tensor says so in its `reason`.
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
