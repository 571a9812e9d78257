"""LRN (local response normalization across channels), decomposed into kernels XNNPACK delegates.

y = x / (bias + alpha / size * sum of x^2 over a window of `size` channels) ^ beta. TFLite's own
LOCAL_RESPONSE_NORMALIZATION is not delegated by XNNPACK and scales alpha per element, not per
window, so the lowering builds it from delegated float kernels in NHWC:
- MUL(x, x), then one 1x1 CONV_2D whose [C, C] filter is the banded window matrix times
  alpha / size and whose bias is `bias`: the window sum and the affine in one kernel;
- t ^ -beta from RSQRT (t ^ -1/2) and SQRT(RSQRT(t)) (t ^ -1/4) for beta a multiple of 1/4 up
  to 1 (AlexNet's and GoogLeNet's 0.75 is RSQRT(t) * SQRT(RSQRT(t))); any other beta is one POW,
  which XNNPACK does not take (the build says so, like other ops outside);
- MUL by x.
In an int8 model it is a float island (DEQUANTIZE, the float kernels, QUANTIZE, all inside the
XNNPACK partition): x^2 spans the square of x's range, so a per-tensor int8 grid rounds the
squares of most activations to zero and the window sum loses what it normalizes by.
"""

from __future__ import annotations

import numpy as np

from edgepipe.backends.tflite.lower import NHWC, Lowering, node_attrs
from edgepipe.backends.tflite.ops import register

VALID = 1  # tflite.Padding
QUARTERS_MAX = 4  # beta = k / 4 for k in 1..4 is built from RSQRT and SQRT


def window_matrix(channels: int, size: int, alpha: float) -> np.ndarray:
    """[C_out, C_in]: alpha / size where input channel i is in output channel c's window
    [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)] (ONNX's definition), else 0."""
    low, high = (size - 1) // 2, (size - 1) - (size - 1) // 2
    c = np.arange(channels)
    offset = c[None, :] - c[:, None]  # input minus output channel
    return np.where((offset >= -low) & (offset <= high), alpha / size, 0.0).astype(np.float32)


def power_quarters(beta: float) -> int | None:
    """k when beta == k / 4 with 1 <= k <= QUARTERS_MAX, else None."""
    k = beta * 4
    return int(round(k)) if abs(k - round(k)) < 1e-9 and 1 <= round(k) <= QUARTERS_MAX else None


def check_lrn(ctx: Lowering, node) -> str | None:
    if ctx.rank(node.input[0]) != 4:
        return f"only 4-D NCHW input is supported (input '{node.input[0]}' has {ctx.rank(node.input[0])} dims)"
    if int(node_attrs(node).get("size", 0)) < 1:
        return "attribute size must be a positive integer"
    return None


@register("LRN", check=check_lrn, int8=False)
def lower_lrn(ctx: Lowering, node) -> None:
    attrs = node_attrs(node)
    alpha, beta = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75))
    bias, size = float(attrs.get("bias", 1.0)), int(attrs["size"])
    channels = ctx.shape(node.input[0])[1]
    x = ctx.get(node.input[0], "float32", NHWC)
    shape = list(ctx.tensor(x).shape)

    def step(opcode, inputs, tag, options_type=None, **options):
        out = ctx.temp(f"{node.name};{tag}", shape, "float32")
        ctx.emit(opcode, inputs, [out], node, options_type, **options)
        return out

    squared = step("MUL", [x, x], "squared", "MulOptions", FusedActivationFunction=0)
    weights = window_matrix(channels, size, alpha).reshape(channels, 1, 1, channels)  # [O, kh, kw, I]
    filter_index, bias_index = ctx.filter_and_bias(f"{node.name};window", weights, 0,
                                                   np.full(channels, bias, np.float32), squared, "float32")
    base = step("CONV_2D", [squared, filter_index, bias_index], "base", "Conv2DOptions", Padding=VALID, StrideH=1,
                StrideW=1, DilationHFactor=1, DilationWFactor=1, FusedActivationFunction=0)
    quarters = power_quarters(beta)
    if quarters is None:
        exponent = ctx.spec.add_constant(f"{node.name};exponent", np.float32(-beta))
        factor = step("POW", [base, exponent], "power")
    else:
        factors = []
        inverse_root = step("RSQRT", [base], "rsqrt")
        factors += [inverse_root] * (quarters // 2)
        if quarters % 2:
            factors.append(step("SQRT", [inverse_root], "quarter"))
        factor = factors[0]
        for position, other in enumerate(factors[1:], 1):
            factor = step("MUL", [factor, other], f"power{position}", "MulOptions", FusedActivationFunction=0)
    out = ctx.new_value(node.output[0], "float32", NHWC)
    ctx.emit("MUL", [x, factor], [out], node, "MulOptions", FusedActivationFunction=0)
