"""Tiny TFLite models written by our writer, for speed micro-benchmarks (xnnpack_op_speed.py).

Why its own module: the graph builder is shared by every case and is not itself a benchmark.
Tensors are int8 on a [-3, 3] grid unless told (int16: the symmetric 16x8 grid); weights are
random per-channel filters with zero biases, so these models measure speed, not accuracy.
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath
from edgepipe.backends.tflite.writer import ModelSpec, Quantization, serialize

RNG = np.random.default_rng(0)
UNIT = Quantization.per_tensor(*quantmath.asymmetric_params(-3.0, 3.0))
SAME, VALID = 0, 1  # tflite.Padding
CONV_OPTIONS = dict(StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, FusedActivationFunction=0)


class Graph:
    """A tiny model under construction: tensors by name, int8 with a [-3, 3] grid unless told."""

    def __init__(self, dtype: str):
        self.dtype, self.spec = dtype, ModelSpec()

    def tensor(self, shape, quant: Quantization | None = UNIT) -> int:
        if self.dtype == "int16":  # 16x8: symmetric [-3, 3]
            quant = Quantization.per_tensor(3.0 / 32767, 0)
        return self.spec.add_tensor(f"t{len(self.spec.tensors)}", shape, self.dtype,
                                    quant if self.dtype in ("int8", "int16") else None)

    def input(self, shape) -> int:
        index = self.tensor(shape)
        self.spec.inputs.append(index)
        return index

    def op(self, opcode, inputs, shape, options_type=None, quant: Quantization | None = UNIT, **options) -> int:
        out = self.tensor(shape, quant)
        self.spec.add_operator(opcode, inputs, [out], options_type, options)
        return out

    def weights(self, shape, axis: int) -> tuple[int, int]:
        """A random per-channel filter along `axis` and a zero bias of the matching length."""
        value = RNG.standard_normal(shape).astype(np.float32) * 0.2
        channels = shape[axis]
        if self.dtype == "float32":
            return (self.spec.add_constant(f"w{len(self.spec.tensors)}", value),
                    self.spec.add_constant(f"b{len(self.spec.tensors)}", np.zeros(channels, np.float32)))
        q, scales = quantmath.per_channel_symmetric(value, axis)
        bias_scales = np.asarray(scales, np.float64) * float(UNIT.scale[0])
        return (self.spec.add_constant(f"w{len(self.spec.tensors)}", q, Quantization.per_channel(scales, axis)),
                self.spec.add_constant(f"b{len(self.spec.tensors)}", np.zeros(channels, np.int32),
                                       Quantization.per_channel(bias_scales, 0)))

    def scalar(self, value: float) -> int:
        if self.dtype == "float32":
            return self.spec.add_constant(f"c{len(self.spec.tensors)}", np.float32(value).reshape(1))
        scale, zero_point = quantmath.asymmetric_params(min(value, 0.0), max(value, 0.0))
        return self.spec.add_constant(f"c{len(self.spec.tensors)}", quantmath.quantize(np.float32(value).reshape(1),
                                      scale, zero_point), Quantization.per_tensor(scale, zero_point))

    def conv(self, x, shape_in, cout, kernel, stride=1, padding=SAME, activation=0) -> int:
        filter_index, bias_index = self.weights((cout, kernel, kernel, shape_in[3]), 0)
        out_hw = [(d - kernel) // stride + 1 if padding == VALID else -(-d // stride) for d in shape_in[1:3]]
        return self.op("CONV_2D", [x, filter_index, bias_index], [1, *out_hw, cout], "Conv2DOptions",
                       **{**CONV_OPTIONS, "StrideH": stride, "StrideW": stride, "Padding": padding,
                          "FusedActivationFunction": activation})

    def depthwise(self, x, shape, kernel=1, activation=0, weights=None, quant=UNIT) -> int:
        filter_index, bias_index = self.weights((1, kernel, kernel, shape[3]), 3)
        return self.op("DEPTHWISE_CONV_2D", [x, filter_index, bias_index], shape, "DepthwiseConv2DOptions",
                       quant, **{**CONV_OPTIONS, "Padding": SAME, "DepthMultiplier": 1,
                                 "FusedActivationFunction": activation})


def finish(graph: Graph, out: int) -> bytes:
    graph.spec.outputs.append(out)
    return serialize(graph.spec)
