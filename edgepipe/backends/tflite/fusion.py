"""Which ONNX activation a TFLite producer can fuse (its `fused_activation_function`).

Why its own module: the lowering driver fuses, op modules lower the activations that are not
fused, and the planner's placement must agree with both on which tensors exist in the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    from edgepipe.backends.tflite.lower import Lowering


def clip_bounds(ctx: Lowering, node: onnx.NodeProto) -> tuple[float, float] | None:
    """(min, max) of a Clip node when constant (attributes before opset 11, inputs after)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    low, high = attrs.get("min", -np.inf), attrs.get("max", np.inf)
    for position in (1, 2):
        if len(node.input) > position and node.input[position]:
            value = ctx.constant(node.input[position])
            if value is None:
                return None
            if position == 1:
                low = float(np.asarray(value).reshape(-1)[0])
            else:
                high = float(np.asarray(value).reshape(-1)[0])
    return float(low), float(high)


def fusable_activation(ctx: Lowering, node: onnx.NodeProto) -> str | None:
    if node.op_type == "Relu":
        return "RELU"
    if node.op_type == "Clip":
        bounds = clip_bounds(ctx, node)
        return {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, np.inf): "RELU"}.get(bounds)
    return None
