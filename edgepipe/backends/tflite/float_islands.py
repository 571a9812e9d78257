"""The float islands a quantized lowering chooses for itself before it lowers any node.

Why one place: each rule reads `Lowering.node_dtype`, which reads the float requests made so far,
so the rules run in a fixed order and each sees the islands the earlier ones chose: output
Concats of mismatched ranges (shared_scales.py), long recurrences and wide-range tensors
(wide_range.py), a normalization's or a Log's statistics (float_statistics.py), values picked at
computed indices (picked_values.py), then the int8 inputs of a Log's island (wide_range.py).
Every lowering - the build, the planner's candidates, the placement the accuracy tools emulate -
runs them, so all agree on the grids; each is on unless its `backend.*` switch turns it off.
"""

from __future__ import annotations

from edgepipe.backends.tflite import float_statistics, picked_values, shared_scales, wide_range


def choose(ctx) -> None:
    """Add the chosen float nodes to `ctx.requested_float`; set `ctx.long_recurrences` ({recurrent
    node: steps}) and `ctx.wide_range` ({tensor: zeroed share} of the wide-range tensors whose
    choice changed a node's dtype: the ones the build line and the manifest name)."""
    if ctx.options.get("float_output_concats", True):
        ctx.requested_float |= shared_scales.float_output_concats(ctx)
    ctx.long_recurrences = (wide_range.long_recurrences(ctx) if ctx.options.get("float_long_recurrences", True)
                            else {})
    ctx.requested_float |= {node for name in ctx.long_recurrences for node in ctx.expanded.get(name, ())}
    wide = ctx.options.get("wide_range_float", True)
    before = set(ctx.requested_float) | float_statistics.statistics_nodes(ctx)
    tensors = wide_range.wide_range_tensors(ctx) if wide else {}
    ctx.requested_float |= wide_range.wide_range_nodes(ctx, tensors)
    ctx.requested_float |= float_statistics.statistics_nodes(ctx)
    ctx.requested_float |= picked_values.decoding_nodes(ctx)
    logs = wide_range.log_inputs(ctx) if wide else {}
    ctx.requested_float |= wide_range.wide_range_nodes(ctx, logs)
    ctx.wide_range = wide_range.effective(ctx, {**tensors, **logs}, before)
