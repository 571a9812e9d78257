"""Softmax -> SOFTMAX, LogSoftmax -> LOG_SOFTMAX, always over the last TFLite dimension.

Kernel rules that shape this module:
- Both kernels normalize over the last dimension only. The ONNX axis maps to TFLite dim
  `perm.index(axis)`; when that is not last, the input is asked for in a layout with the axis
  moved to the end (one TRANSPOSE, none for a channel softmax on an NHWC tensor), and the output
  keeps that layout. Before opset 13 ONNX flattens [axis:] into one dimension: that becomes
  RESHAPE to 2-D, the kernel, RESHAPE back.
- SOFTMAX reads `beta` from its options and an unset beta is 0 (uniform output): always 1.0.
- int8 outputs have fixed parameters (the kernels' Prepare checks or assumes them):
  builtins.fixed_output (LOG_SOFTMAX's covers [-15.94, 0]).
- XNNPACK (LiteRT 2.3) delegates float SOFTMAX only: an int8 SOFTMAX would run on the builtin
  kernel and split the delegated graph (attention blocks: one split per head group). int8 models
  therefore compute Softmax in float between DEQUANTIZE and QUANTIZE, which XNNPACK takes into the
  same partition. int8 LOG_SOFTMAX and float LOG_SOFTMAX are not delegated either way.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.builtins import fixed_output
from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization

KERNELS = {
    "Softmax": ("SOFTMAX", "SoftmaxOptions", {"Beta": 1.0}),
    "LogSoftmax": ("LOG_SOFTMAX", "LogSoftmaxOptions", {}),
}


def _opset(ctx: Lowering) -> int:
    return next((o.version for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")), 13)


def softmax_axis(ctx: Lowering, node) -> tuple[int, bool]:
    """(ONNX axis, True when the pre-opset-13 'flatten [axis:]' semantics apply to >1 dim)."""
    rank = ctx.rank(node.input[0])
    legacy = _opset(ctx) < 13
    axis = int(node_attrs(node).get("axis", 1 if legacy else -1)) % rank
    flattens = legacy and any(d != 1 for d in ctx.shape(node.input[0])[axis + 1:])
    return axis, flattens


def axis_last(perm, axis: int) -> tuple[int, ...]:
    """`perm` with ONNX axis `axis` moved to the last TFLite dimension."""
    return tuple(p for p in perm if p != axis) + (axis,)


def check_softmax(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.input[0]) == 0:
        return "a scalar input has no axis to normalize over"
    if ctx.rank(node.input[0]) > 5:
        return "more than 5 dimensions"
    return None


def int8_kernel_delegated(ctx: Lowering, node) -> bool:
    return node.op_type != "Softmax"


@register("Softmax", "LogSoftmax", check=check_softmax, int8=int8_kernel_delegated,
          int16=lambda ctx, node: node.op_type == "Softmax")  # an int16 SOFTMAX kernel, no int16 LOG_SOFTMAX
def lower_softmax(ctx: Lowering, node) -> None:
    opcode, options_type, options = KERNELS[node.op_type]
    dtype = ctx.node_dtype(node)
    quant = Quantization.per_tensor(*fixed_output(opcode, dtype)) if dtype != "float32" else None
    axis, flattens = softmax_axis(ctx, node)
    name = node.input[0]
    if not flattens:
        perm = axis_last(ctx.layout(name), axis)
        x = ctx.get(name, dtype, perm)
        ctx.emit(opcode, [x], [ctx.new_value(node.output[0], dtype, perm, quant)], node, options_type, **options)
        return
    shape = ctx.shape(name)
    rank = len(shape)
    x = ctx.get(name, dtype, identity(rank))
    flat_shape = [int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))]
    flat = ctx.temp(f"{node.name};flat", flat_shape, dtype, ctx.tensor(x).quantization)
    ctx.emit("RESHAPE", [x, ctx.int32_constant(f"{node.name};flat_shape", flat_shape)], [flat], node)
    result = ctx.temp(f"{node.name};flat_out", flat_shape, dtype, quant)
    ctx.emit(opcode, [flat], [result], node, options_type, **options)
    out = ctx.new_value(node.output[0], dtype, identity(rank), quant)
    ctx.emit("RESHAPE", [result, ctx.int32_constant(f"{node.name};shape", shape)], [out], node)
