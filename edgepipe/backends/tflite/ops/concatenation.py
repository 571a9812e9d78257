"""CONCATENATION in pieces XNNPACK delegates: at most XNNPACK_MAX_INPUTS inputs per operator.

LiteRT 2.3's XNNPACK delegate takes CONCATENATION with 2 to 5 inputs only (measured, int8 and
float: a 6-input one runs on the builtin kernel and splits the int8 graph into two partitions).
Unrolled recurrent layers concatenate one tensor per time step, so a longer Concat becomes a tree
of <= 5-input CONCATENATIONs along the same axis. Every piece shares the output's quantization
(CONCATENATION requires its inputs on the output's grid), so the tree gives the same values.
"""

from __future__ import annotations

from edgepipe.backends.tflite.lower import Lowering

XNNPACK_MAX_INPUTS = 5


def emit_concatenation(ctx: Lowering, inputs: list[int], out: int, node, axis: int) -> None:
    """CONCATENATION of `inputs` (already on `out`'s grid) into `out` along `axis`, in groups."""
    target = ctx.tensor(out)
    level = 0
    while len(inputs) > XNNPACK_MAX_INPUTS:
        level += 1
        grouped = []
        for start in range(0, len(inputs), XNNPACK_MAX_INPUTS):
            group = inputs[start : start + XNNPACK_MAX_INPUTS]
            if len(group) == 1:
                grouped.append(group[0])
                continue
            shape = list(ctx.tensor(group[0]).shape)
            shape[axis] = sum(ctx.tensor(index).shape[axis] for index in group)
            piece = ctx.temp(f"{node.name};concat{level}_{start // XNNPACK_MAX_INPUTS}", shape, target.dtype,
                             target.quantization)
            ctx.emit("CONCATENATION", group, [piece], node, "ConcatenationOptions", Axis=axis,
                     FusedActivationFunction=0)
            grouped.append(piece)
        inputs = grouped
    ctx.emit("CONCATENATION", inputs, [out], node, "ConcatenationOptions", Axis=axis, FusedActivationFunction=0)
