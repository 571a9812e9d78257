"""Dropout, Sum, Mean: the ops the simplify stage rewrites (edgepipe/inference_form.py).

The build's simplify stage removes inference Dropouts and turns Sum / Mean (and variadic Max /
Min) into binary chains for every target before calibration, so every partial sum has a range.
They are registered here so that the arm-cpu op table claims them, and rewritten the same way
when a model reaches the lowering without that stage (ops/elementwise.py lowers the chains); a
Dropout whose mask is read or that runs in training mode stays and is refused by its check (the
mask has no kernel here). Sum / Mean before opset 8 (no broadcasting) are not claimed.
"""

from __future__ import annotations

import onnx

from edgepipe import graph, inference_form
from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import register, register_rewrite


def check_dropout(ctx: Lowering, node) -> str | None:
    """Why the rewrite left this Dropout (training mode, a read mask)."""
    def used(name):
        return name in ctx.graph_outputs or bool(ctx.consumers.get(name))

    return inference_form.dropout_problem(node, ctx.constant, used) or "could not be removed"


@register("Dropout", check=check_dropout, since=inference_form.DROPOUT_SINCE)
@register("Sum", "Mean", since=inference_form.VARIADIC_SINCE)
def lower_rewritten(ctx: Lowering, node) -> None:
    raise AssertionError(f"{node.name}: a {node.op_type} reached the lowering without the inference-form rewrite")


@register_rewrite
def rewrite_inference_form(model: onnx.ModelProto) -> None:
    rewritten, changes = inference_form.inference_form(model, strict=False)
    if any(changes.values()):
        model.CopyFrom(graph.infer_shapes(rewritten))
