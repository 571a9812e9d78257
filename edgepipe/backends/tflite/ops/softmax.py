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
- A Softmax over 2 values (face-detector and segmentation heads) is logistic(x0 - x1) and
  logistic(x1 - x0): in int8 a 1x1 CONV_2D with weights [[1, -1], [-1, 1]] then LOGISTIC, both
  delegated and much faster than the float island (XNNPACK's SOFTMAX pays per row of 2).
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath
from edgepipe.backends.tflite.builtins import fixed_output
from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import register
from edgepipe.backends.tflite.writer import Quantization
from edgepipe.errors import UserError

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


# logistic(d) rounds to 0 or 255/256 on its output grid for |d| >= 6.24: a difference grid that
# saturates beyond this loses nothing.
LOGISTIC_SATURATION = 6.3
# The symmetric difference grid of [-(hi - lo), hi - lo] rounds d by at most (hi - lo) / 255; with
# the logistic's slope <= 1/4 that is (hi - lo) / 4 output steps (1/256): at most half a step up to here.
MAX_DIFFERENCE_RANGE = 2.0


def int8_kernel_delegated(ctx: Lowering, node) -> bool:
    return node.op_type != "Softmax" or difference_quantization(ctx, node) is not None


def difference_quantization(ctx: Lowering, node) -> Quantization | None:
    """int8 grid of x0 - x1 for a 4-D Softmax over 2 values, or None where the float island stays:
    the input's own grid (exact: x0 - x1 is a multiple of its scale) when it reaches the logistic's
    saturation, else the symmetric grid of [-(hi - lo), hi - lo] when that is narrow enough."""
    if node.op_type != "Softmax" or ctx.rank(node.input[0]) != 4 or softmax_axis(ctx, node)[1]:
        return None
    if ctx.shape(node.input[0])[softmax_axis(ctx, node)[0]] != 2:
        return None
    scale = _input_scale(ctx, node.input[0])
    if scale is None:
        return None
    if 127 * scale >= LOGISTIC_SATURATION:
        return Quantization.per_tensor(scale, 0)
    span = 255 * scale
    if span <= MAX_DIFFERENCE_RANGE:
        return Quantization.per_tensor(*quantmath.asymmetric_params(-span, span))
    return None


def _input_scale(ctx: Lowering, name: str) -> float | None:
    """Scale of the int8 tensor the kernel will read: the producer's (a pooling or reshape passes
    its own input's on), or the calibrated one when it is still to be quantized."""
    int8 = [value for value in ctx.values.get(name, []) if value.dtype == "int8"]
    if int8:
        return float(ctx.tensor(int8[0].index).quantization.scale[0])
    try:
        return ctx.quant(name).as_pair()[0]
    except UserError:  # no range for it: the float island, as before
        return None


def _int8_two_way_softmax(ctx: Lowering, node, difference: Quantization) -> None:
    axis, _ = softmax_axis(ctx, node)
    perm = axis_last(ctx.layout(node.input[0]), axis)
    x = ctx.get(node.input[0], "int8", perm)
    out = ctx.new_value(node.output[0], "int8", perm, Quantization.per_tensor(*fixed_output("LOGISTIC")))
    shape = ctx.tensor(out).shape
    input_scale = float(ctx.tensor(x).quantization.scale[0])
    weights = np.array([[1, -1], [-1, 1]], np.int8).reshape(2, 1, 1, 2) * np.int8(127)
    filter_index = ctx.spec.add_constant(f"{node.name};difference", weights,
                                         Quantization.per_channel(np.full(2, 1 / 127), 0))
    bias_index = ctx.spec.add_constant(f"{node.name};difference_bias", np.zeros(2, np.int32),
                                       Quantization.per_channel(np.full(2, input_scale / 127), 0))
    delta = ctx.temp(f"{node.name};difference", shape, "int8", difference)
    ctx.emit("CONV_2D", [x, filter_index, bias_index], [delta], node, "Conv2DOptions", Padding=1, StrideH=1,
             StrideW=1, DilationHFactor=1, DilationWFactor=1, FusedActivationFunction=0)
    ctx.emit("LOGISTIC", [delta], [out], node)


@register("Softmax", "LogSoftmax", check=check_softmax, int8=int8_kernel_delegated,
          int16=lambda ctx, node: node.op_type == "Softmax")  # an int16 SOFTMAX kernel, no int16 LOG_SOFTMAX
def lower_softmax(ctx: Lowering, node) -> None:
    opcode, options_type, options = KERNELS[node.op_type]
    dtype = ctx.node_dtype(node)
    if dtype == "int8" and node.op_type == "Softmax":
        _int8_two_way_softmax(ctx, node, difference_quantization(ctx, node))
        return
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
