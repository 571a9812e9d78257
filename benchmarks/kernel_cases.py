"""One-op cases for benchmarks/arm_kernel_profile.py: the forms of a depthwise conv a lowering
controls, and 1x1 convs at the channel counts of the depthwise-heavy corpus models.

Why its own module: the profile script runs models and cases alike; the cases say whether any form
of an int8 depthwise conv (weight scales, fused activation, stride, channel count, kernel size)
leaves XNNPACK's one x86 int8 depthwise kernel family, and how an int8 1x1 conv with few output
channels fares on the AMX tile kernel (16 rows x 64 output channels per tile). Each builder takes
the dtype ("int8" or "float32") and returns .tflite bytes, as xnnpack_op_speed's cases do.
"""

from __future__ import annotations

from benchmarks.depthwise_cases import RELU6, depthwise
from benchmarks.tiny_tflite import VALID, Graph, finish
from benchmarks.xnnpack_op_speed import mul_broadcast, mul_broadcast_in_float


def pointwise(shape, cout):
    """A 1x1 CONV_2D, `shape` -> `cout` channels."""
    def build(dtype):
        g = Graph(dtype)
        return finish(g, g.conv(g.input(shape), shape, cout, 1, 1, VALID))
    return build


PPLCNET = [1, 56, 56, 64]
CASES = {
    "depthwise 3x3 [1 56 56 64]": depthwise(PPLCNET, 3),
    "depthwise 3x3 [1 56 56 64] per-tensor weights": depthwise(PPLCNET, 3, per_tensor=True),
    "depthwise 3x3 [1 56 56 64] fused RELU6": depthwise(PPLCNET, 3, activation=RELU6),
    "depthwise 3x3 [1 56 56 64] stride 2": depthwise(PPLCNET, 3, stride=2),
    "depthwise 3x3 [1 56 56 60]": depthwise([1, 56, 56, 60], 3),
    "depthwise 3x3 [1 56 56 72]": depthwise([1, 56, 56, 72], 3),
    "depthwise 5x5 [1 2 96 200] (OCR cls)": depthwise([1, 2, 96, 200], 5),
    "depthwise 3x3 [1 2 96 200]": depthwise([1, 2, 96, 200], 3),
    "conv 1x1 [1 24 96 8] -> 8 (OCR cls block 1)": pointwise([1, 24, 96, 8], 8),
    "conv 1x1 [1 3 96 88] -> 16 (OCR cls)": pointwise([1, 3, 96, 88], 16),
    "conv 1x1 [1 2 96 200] -> 32 (OCR cls)": pointwise([1, 2, 96, 200], 32),
    "conv 1x1 [1 16 16 16] -> 72 (MobileNetV3)": pointwise([1, 16, 16, 16], 72),
    "conv 1x1 [1 28 28 128] -> 128": pointwise([1, 28, 28, 128], 128),
    "SE gate MUL [1 2 96 200]": mul_broadcast([1, 2, 96, 200]),
    "SE gate float island [1 2 96 200]": mul_broadcast_in_float([1, 2, 96, 200]),
}
