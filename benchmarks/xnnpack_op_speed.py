"""Per-op XNNPACK latency, int8 against fp32, on one-op (or few-op) models written by our writer.

Why: benchmarks/arm_speed.py gives each model's int8 / fp32 ratio; this says where the int8 time
goes. Each case is one op or one lowering alternative (the ops a lowering emits for one ONNX op)
at a shape taken from a corpus model that is slow in int8 (first conv with 3 input channels,
depthwise convs, PReLU, HardSwish, SE gates, grouped convs, the 2-class Softmax of a detector
head, ...; the depthwise forms are in benchmarks/depthwise_cases.py). int8 and fp32 variants of
a case are timed in alternating rounds on one thread (median over rounds of each round's
median), next to the host's CPU features and load, so a ratio comes from one run.
Inputs are random: this measures speed only (correctness is in tests/test_tflite_ops_*.py).
A case's last op writes the graph output; XNNPACK runs consecutive int8 elementwise ops as one
(two or more chained int8 ops of one tensor, scalar constants allowed, become one 256-entry
lookup table: two chained int8 scalar ops cost less than one alone), so a lone elementwise op
here is an upper bound of its cost inside a model: confirm on the model before acting on it.

    python benchmarks/xnnpack_op_speed.py [--cases a,b] [--rounds 7] [--iterations 50]

Writes benchmarks/results/xnnpack_op_speed.json (`--cases` updates only those cases).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import cpu_features  # noqa: E402
from benchmarks.timing import alternating_rounds, rounds_argument  # noqa: E402
from edgepipe import quantmath  # noqa: E402
from edgepipe.backends.tflite import delegation  # noqa: E402
from edgepipe.backends.tflite.runtime import make_interpreter  # noqa: E402
from benchmarks import depthwise_cases, normalization_cases, transformer_cases  # noqa: E402
from benchmarks.tiny_tflite import (CONV_OPTIONS, RNG, SAME, UNIT, VALID, Graph, finish,  # noqa: E402
                                    Quantization)

RESULTS = Path(__file__).resolve().parent / "results" / "xnnpack_op_speed.json"
# ----- cases: name -> {variant: builder(dtype) -> bytes} --------------------------------------------
def conv_first(shape, cout, stride, padding=SAME):
    def build(dtype):
        g = Graph(dtype)
        return finish(g, g.conv(g.input(shape), shape, cout, 3, stride, padding))
    return build


def conv_first_padded_channels(shape, cout, stride, padding=SAME, channels=4):
    """The same conv with its input's channels zero-padded (PAD op, then a conv with Cin=`channels`)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        pads = g.spec.add_constant("pads", np.array([[0, 0], [0, 0], [0, 0], [0, channels - shape[3]]], np.int32))
        wide = [*shape[:3], channels]
        padded = g.op("PAD", [x, pads], wide)
        return finish(g, g.conv(padded, wide, cout, 3, stride, padding))
    return build


def depthwise(shape, kernel):
    def build(dtype):
        g = Graph(dtype)
        return finish(g, g.depthwise(g.input(shape), shape, kernel))
    return build


def depthwise_per_tensor(shape, kernel):
    """The depthwise conv with one weight scale for all channels (int8; fp32 as `depthwise`)."""
    def build(dtype):
        g = Graph(dtype)
        if dtype == "float32":
            return finish(g, g.depthwise(g.input(shape), shape, kernel))
        values = RNG.integers(-127, 128, (1, kernel, kernel, shape[3])).astype(np.int8)
        weights = g.spec.add_constant("w", values, Quantization.per_tensor(0.01, 0))
        bias = g.spec.add_constant("b", np.zeros(shape[3], np.int32),
                                   Quantization.per_tensor(0.01 * float(UNIT.scale[0]), 0))
        return finish(g, g.op("DEPTHWISE_CONV_2D", [g.input(shape), weights, bias], shape, "DepthwiseConv2DOptions",
                              **{**CONV_OPTIONS, "Padding": SAME, "DepthMultiplier": 1}))
    return build


def prelu_reference(shape):
    def build(dtype):
        g = Graph(dtype)
        slope = g.spec.add_constant("slope", np.full((1, 1, 1, shape[3]), 0.25, np.float32))
        return finish(g, g.op("PRELU", [g.input(shape), slope], shape))
    return build


def prelu_two_affines(shape):
    """s * x + relu((1 - s) * x): two 1x1 depthwise convs and an ADD."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        linear, rest = g.depthwise(x, shape), g.depthwise(x, shape, activation=1)
        return finish(g, g.op("ADD", [linear, rest], shape, "AddOptions", FusedActivationFunction=0))
    return build


def prelu_one_affine(shape):
    """x + relu(-(1 - s) * x): one 1x1 depthwise conv and an ADD."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        rest = g.depthwise(x, shape, activation=1)
        return finish(g, g.op("ADD", [x, rest], shape, "AddOptions", FusedActivationFunction=0))
    return build


def prelu_one_affine_rows(shape):
    """The same on rows of W * C channels ([N, H, 1, W * C], RESHAPE around the depthwise conv)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        rows = [shape[0], shape[1], 1, shape[2] * shape[3]]
        viewed = g.op("RESHAPE", [x, g.spec.add_constant("rows", np.array(rows, np.int32))], rows)
        rest = g.depthwise(viewed, rows, activation=1)
        back = g.op("RESHAPE", [rest, g.spec.add_constant("back", np.array(shape, np.int32))], shape)
        return finish(g, g.op("ADD", [x, back], shape, "AddOptions", FusedActivationFunction=0))
    return build


def hard_swish_op(shape):
    def build(dtype):
        g = Graph(dtype)
        return finish(g, g.op("HARD_SWISH", [g.input(shape)], shape))
    return build


def hard_swish_add_mul_mul(shape):
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        six = Quantization.per_tensor(*quantmath.asymmetric_params(0, 6))
        unit = Quantization.per_tensor(*quantmath.asymmetric_params(0, 1))
        gate = g.op("ADD", [x, g.scalar(3.0)], shape, "AddOptions", six, FusedActivationFunction=3)
        gate = g.op("MUL", [gate, g.scalar(1 / 6)], shape, "MulOptions", unit, FusedActivationFunction=0)
        return finish(g, g.op("MUL", [x, gate], shape, "MulOptions", FusedActivationFunction=0))
    return build


def hard_swish_affine_mul(shape):
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        gate = g.depthwise(x, shape, quant=Quantization.per_tensor(*quantmath.asymmetric_params(0, 1)))
        return finish(g, g.op("MUL", [x, gate], shape, "MulOptions", FusedActivationFunction=0))
    return build


def softmax_channels(shape):
    """A 1x1 conv (the score head, so that int8 starts inside the delegate) then SOFTMAX."""
    def build(dtype):
        g = Graph(dtype)
        x = g.conv(g.input(shape), shape, 2, 1, padding=VALID)
        if dtype == "int8":  # what the lowering emits: a float island inside the delegate
            g.dtype = "float32"
            x = g.op("DEQUANTIZE", [x], shape, quant=None)
        return finish(g, g.op("SOFTMAX", [x], shape, "SoftmaxOptions", Beta=1.0))
    return build


def softmax_two_as_logistic(shape):
    """softmax over 2 channels = logistic(W x) with W = [[1, -1], [-1, 1]] (a 1x1 conv; with the
    score head in front, the same two convs as softmax_channels' one conv and the difference)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        difference = g.conv(g.conv(x, shape, 2, 1, padding=VALID), shape, 2, 1, padding=VALID)
        fixed = Quantization.per_tensor(1 / 256, -128)
        return finish(g, g.op("LOGISTIC", [difference], shape, quant=fixed))
    return build


def mul_broadcast(shape):
    def build(dtype):
        g = Graph(dtype)
        x, gate = g.input(shape), g.input([1, 1, 1, shape[3]])
        return finish(g, g.op("MUL", [x, gate], shape, "MulOptions", FusedActivationFunction=0))
    return build


def in_float(g: Graph, dtype: str, inputs: list[int], shapes: list, make) -> int:
    """`make(float inputs)` as a float island of an int8 graph (DEQUANTIZE each, QUANTIZE the
    result); in a float graph just `make(inputs)`."""
    if dtype == "float32":
        return make(inputs)
    g.dtype = "float32"
    y = make([g.op("DEQUANTIZE", [x], shape) for x, shape in zip(inputs, shapes)])
    g.dtype = "int8"
    return g.op("QUANTIZE", [y], g.spec.tensors[y].shape)


def prelu_float_island(shape, rows: bool = False):
    """DEQUANTIZE, PRELU, QUANTIZE (float PRELU is delegated, int8 PRELU is not); `rows`: on the
    [N, H, W * C] view, the slope repeated W times, a RESHAPE each side."""
    def build(dtype):
        g = Graph(dtype)
        n, h, w, c = shape
        view = [n, h, w * c] if rows else shape
        slope = g.spec.add_constant("slope", np.tile(np.full(c, 0.25, np.float32), w if rows else 1).reshape(
            [1] * (len(view) - 1) + [-1]))
        x = g.input(shape)
        if rows:
            x = g.op("RESHAPE", [x, g.spec.add_constant("rows", np.array(view, np.int32))], view)
        y = in_float(g, dtype, [x], [view], lambda xs: g.op("PRELU", [xs[0], slope], view))
        if rows:
            y = g.op("RESHAPE", [y, g.spec.add_constant("back", np.array(shape, np.int32))], shape)
        return finish(g, y)
    return build


def mul_broadcast_in_float(shape):
    """The SE gate MUL as a float island: DEQUANTIZE both sides, MUL, QUANTIZE."""
    def build(dtype):
        g = Graph(dtype)
        gate_shape = [1, 1, 1, shape[3]]
        return finish(g, in_float(g, dtype, [g.input(shape), g.input(gate_shape)], [shape, gate_shape],
                                  lambda xs: g.op("MUL", xs, shape, "MulOptions", FusedActivationFunction=0)))
    return build


def grouped_conv(shape, groups: int, dense: bool):
    """3x3 conv, C -> C in `groups` groups: one CONV_2D with a [C, 3, 3, C / groups] filter, or
    (`dense`) with the [C, 3, 3, C] block-diagonal one (groups times the multiply-adds)."""
    def build(dtype):
        g = Graph(dtype)
        channels = shape[3]
        filter_index, bias_index = g.weights((channels, 3, 3, channels if dense else channels // groups), 0)
        out = g.op("CONV_2D", [g.input(shape), filter_index, bias_index], shape, "Conv2DOptions",
                   **{**CONV_OPTIONS, "Padding": SAME})
        return finish(g, out)
    return build


def padded_max_pool(shape, rows: bool):
    """ResNet's stem pool: PAD by 1 (4-D, or on the [N, H, W * C] view between RESHAPEs), then a
    3x3 / 2 VALID MAX_POOL_2D."""
    def build(dtype):
        g = Graph(dtype)
        n, h, w, c = shape
        x, padded = g.input(shape), [n, h + 2, w + 2, c]
        if rows:
            x = g.op("RESHAPE", [x, g.spec.add_constant("rows", np.array([n, h, w * c], np.int32))], [n, h, w * c])
        pads = [[0, 0], [1, 1], [c, c]] if rows else [[0, 0], [1, 1], [1, 1], [0, 0]]
        x = g.op("PAD", [x, g.spec.add_constant("pads", np.array(pads, np.int32))],
                 [n, h + 2, (w + 2) * c] if rows else padded)
        if rows:
            x = g.op("RESHAPE", [x, g.spec.add_constant("back", np.array(padded, np.int32))], padded)
        return finish(g, g.op("MAX_POOL_2D", [x], [n, h // 2, w // 2, c], "Pool2DOptions", Padding=VALID, StrideW=2,
                              StrideH=2, FilterWidth=3, FilterHeight=3, FusedActivationFunction=0))
    return build


def padded_max_pool_signed(shape, form: str):
    """The same pool of a signed input (no Relu before it): the pads must not win over negative
    maxima, so PADV2 with the lowest value (not delegated), or the edge rows and columns repeated
    (one-row SLICEs + CONCATENATION per axis, ops/pooling.py)."""
    def build(dtype):
        g = Graph(dtype)
        n, h, w, c = shape
        x = g.input(shape)
        if form == "PADV2":
            lowest = g.spec.add_constant("lowest", np.array(-128, np.int8), UNIT) if dtype == "int8" else \
                g.spec.add_constant("lowest", np.array(-np.inf, np.float32))
            x = g.op("PADV2", [x, g.spec.add_constant("pads", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32)),
                               lowest], [n, h + 2, w + 2, c])
        else:
            for axis, size in ((1, [n, h, w, c]), (2, [n, h + 2, w, c])):
                row = [1 if a == axis else d for a, d in enumerate(size)]
                edges = [g.op("SLICE", [x, g.spec.add_constant(f"b{axis}{i}", np.array(
                    [i if a == axis else 0 for a in range(4)], np.int32)), g.spec.add_constant(
                    f"s{axis}{i}", np.array(row, np.int32))], row, "SliceOptions") for i in (0, size[axis] - 1)]
                grown = [d + 2 if a == axis else d for a, d in enumerate(size)]
                x = g.op("CONCATENATION", [edges[0], x, edges[1]], grown, "ConcatenationOptions", Axis=axis,
                         FusedActivationFunction=0)
        return finish(g, g.op("MAX_POOL_2D", [x], [n, h // 2, w // 2, c], "Pool2DOptions", Padding=VALID, StrideW=2,
                              StrideH=2, FilterWidth=3, FilterHeight=3, FusedActivationFunction=0))
    return build


def flip(shape, axis: int, form: str):
    """torch.flip of one NHWC axis: STRIDED_SLICE with stride -1 (not delegated), or the reversed
    copy ops/strided_slice.py emits (one-row SLICEs + CONCATENATIONs of <= 5 inputs for an outer
    axis, FULLY_CONNECTED with an anti-diagonal matrix for the innermost)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        if form == "STRIDED_SLICE":
            begin = [-1 if a == axis else 0 for a in range(4)]
            end = [0 if a == axis else d for a, d in enumerate(shape)]
            strides = [-1 if a == axis else 1 for a in range(4)]
            mask = sum(1 << a for a in range(4) if a == axis)
            return finish(g, g.op("STRIDED_SLICE", [x, g.spec.add_constant("b", np.array(begin, np.int32)),
                                                    g.spec.add_constant("e", np.array(end, np.int32)),
                                                    g.spec.add_constant("s", np.array(strides, np.int32))], shape,
                                  "StridedSliceOptions", BeginMask=0, EndMask=mask, EllipsisMask=0, NewAxisMask=0,
                                  ShrinkAxisMask=0))
        if axis == 3:
            length = shape[3]
            weights = np.eye(length, dtype=np.float32)[::-1]
            if dtype == "int8":
                w = g.spec.add_constant("w", (weights * 127).astype(np.int8),
                                        Quantization.per_channel(np.full(length, 1 / 127, np.float32), 0))
                b = g.spec.add_constant("bias", np.zeros(length, np.int32),
                                        Quantization.per_channel(np.full(length, 1 / 127, np.float32), 0))
            else:
                w, b = g.spec.add_constant("w", weights), g.spec.add_constant("bias", np.zeros(length, np.float32))
            return finish(g, g.op("FULLY_CONNECTED", [x, w, b], shape, "FullyConnectedOptions",
                                  FusedActivationFunction=0, KeepNumDims=True))
        row = [1 if a == axis else d for a, d in enumerate(shape)]
        rows = [g.op("SLICE", [x, g.spec.add_constant(f"b{i}", np.array([i if a == axis else 0 for a in range(4)],
                                                                           np.int32)),
                               g.spec.add_constant(f"s{i}", np.array(row, np.int32))], row, "SliceOptions")
                for i in reversed(range(shape[axis]))]
        while len(rows) > 1:
            groups = [rows[i:i + 5] for i in range(0, len(rows), 5)]
            rows = [group[0] if len(group) == 1 else g.op(
                "CONCATENATION", group,
                [sum(g.spec.tensors[t].shape[axis] for t in group) if a == axis else d for a, d in enumerate(row)],
                "ConcatenationOptions", Axis=axis, FusedActivationFunction=0) for group in groups]
        return finish(g, rows[0])
    return build


def first_conv_pairs(shape, cout, kernel, pad, paired: bool):
    """Stride-2 conv on 3 channels after a zero pad: a 4-D PAD XNNPACK folds into the conv, or
    (`paired`) the int8 lowering's PAD on rows, RESHAPE to [N, H', W' / 2, 6] and a stride-1 conv
    with half the taps along W."""
    def build(dtype):
        g = Graph(dtype)
        n, h, w, c = shape
        out = [n, (h + 2 * pad - kernel) // 2 + 1, (w + 2 * pad - kernel) // 2 + 1, cout]
        shift, taps = pad % 2, (kernel + pad % 2 + 1) // 2
        width = 2 * (out[2] - 1 + taps)
        x = g.input(shape)
        if paired:
            x = g.op("RESHAPE", [x, g.spec.add_constant("rows", np.array([n, h, w * c], np.int32))], [n, h, w * c])
            lr = [(pad + shift) * c, (width - w - pad - shift) * c]
            x = g.op("PAD", [x, g.spec.add_constant("pads", np.array([[0, 0], [pad, pad], lr], np.int32))],
                     [n, h + 2 * pad, width * c])
            view = [n, h + 2 * pad, width // 2, 2 * c]
            x = g.op("RESHAPE", [x, g.spec.add_constant("view", np.array(view, np.int32))], view)
        else:
            view = [n, h + 2 * pad, w + 2 * pad, c]
            x = g.op("PAD", [x, g.spec.add_constant("pads", np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]],
                                                                     np.int32))], view)
        filter_index, bias_index = g.weights((cout, kernel, taps if paired else kernel, view[3]), 0)
        return finish(g, g.op("CONV_2D", [x, filter_index, bias_index], out, "Conv2DOptions", **{
            **CONV_OPTIONS, "StrideH": 2, "StrideW": 1 if paired else 2, "Padding": VALID}))
    return build


def elementwise_chain(shape, *steps):
    """MUL / ADD by scalar constants in sequence (PP-OCR's learnable affine x * w + b)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        for step in steps:
            opcode, value = {"mul": ("MUL", 0.7), "add": ("ADD", 0.2)}[step]
            x = g.op(opcode, [x, g.scalar(value)], shape, f"{opcode.title()}Options", FusedActivationFunction=0)
        return finish(g, x)
    return build


def one_hot_dense(tokens: int, depth: int, width: int, form: str):
    """Magika's input layer: float token ids, CAST to int32, then either ONE_HOT [0, 1] and a
    FULLY_CONNECTED by W [depth, width] (`one-hot`), or the lowering's table lookup (`table`: ADD,
    MAXIMUM, MINIMUM on the ids, GATHER of [2 depth + 2, width] rows, ops/encoding.py)."""
    def build(dtype):
        g = Graph(dtype)
        spec = g.spec
        x = spec.add_tensor("x", [1, tokens], "float32")
        spec.inputs.append(x)
        ids = spec.add_tensor("ids", [1, tokens], "int32")
        spec.add_operator("CAST", [x], [ids])
        weights = RNG.standard_normal((depth, width)).astype(np.float32) * 0.2
        if form == "table":
            step = ids
            for opcode, bound in (("ADD", depth + 1), ("MAXIMUM", 0), ("MINIMUM", 2 * depth + 1)):
                out = spec.add_tensor(f"ids_{opcode}", [1, tokens], "int32")
                options = ("AddOptions", {"FusedActivationFunction": 0}) if opcode == "ADD" else (None, None)
                spec.add_operator(opcode, [step, spec.add_constant(f"{opcode}_bound", np.int32(bound))], [out],
                                  *options)
                step = out
            table = np.concatenate([np.zeros((1, width)), weights, weights, np.zeros((1, width))]).astype(np.float32)
            rows = g.tensor([1, tokens, width])
            table_index = spec.add_constant("table", table) if dtype == "float32" else spec.add_constant(
                "table", quantmath.quantize(table, float(UNIT.scale[0]), int(UNIT.zero_point[0])), UNIT)
            spec.add_operator("GATHER", [table_index, step], [rows], "GatherOptions", {"Axis": 0, "BatchDims": 0})
            return finish(g, g.op("RESHAPE", [rows, spec.add_constant("shape", np.array([tokens, width], np.int32))],
                                  [tokens, width]))
        unit = Quantization.per_tensor(*quantmath.asymmetric_params(0.0, 1.0))
        hot = g.tensor([1, tokens, depth], unit)
        on, off = (spec.add_constant(f"v{v}", np.float32(v)) if dtype == "float32" else
                   spec.add_constant(f"v{v}", quantmath.quantize(np.float32(v), *unit.as_pair()), unit) for v in (1, 0))
        spec.add_operator("ONE_HOT", [ids, spec.add_constant("depth", np.int32(depth)), on, off], [hot],
                          "OneHotOptions", {"Axis": -1})
        flat = g.op("RESHAPE", [hot, spec.add_constant("shape", np.array([tokens, depth], np.int32))],
                    [tokens, depth], quant=unit)
        filter_index, bias_index = g.weights((width, depth), 0)
        if dtype == "int8":  # the bias scale follows the one-hot input's grid, not UNIT's
            bias_index = spec.add_constant("bias", np.zeros(width, np.int32), Quantization.per_channel(
                np.asarray(spec.tensors[filter_index].quantization.scale, np.float64) * float(unit.scale[0]), 0))
        return finish(g, g.op("FULLY_CONNECTED", [flat, filter_index, bias_index], [tokens, width],
                              "FullyConnectedOptions", FusedActivationFunction=0, KeepNumDims=False))
    return build


CASES = {
    "conv3x3_cin3_s1 (PNet first)": {"op": conv_first([1, 96, 96, 3], 10, 1, padding=VALID)},
    "conv3x3_cin3_s1 padded to Cin 4": {"op": conv_first_padded_channels([1, 96, 96, 3], 10, 1, padding=VALID)},
    "conv3x3_cin3_s2 (MobileNet first)": {"op": conv_first([1, 128, 128, 3], 16, 2)},
    "conv3x3_cin3_s2 padded to Cin 4": {"op": conv_first_padded_channels([1, 128, 128, 3], 16, 2)},
    "conv3x3_cin16_s1": {"op": conv_first([1, 45, 45, 16], 32, 1, padding=VALID)},
    **{f"first conv {k}x{k} / 2 {shape} -> {cout}": {"conv": first_conv_pairs(shape, cout, k, k // 2, False),
                                                    "pairs of columns": first_conv_pairs(shape, cout, k, k // 2, True)}
       for shape, k, cout in (([1, 64, 64, 3], 7, 16), ([1, 224, 224, 3], 7, 64), ([1, 224, 224, 3], 3, 16))},
    "depthwise5x5 (OCR cls)": {"op": depthwise([1, 2, 96, 200], 5)},
    "depthwise3x3 (MobileNet)": {"op": depthwise([1, 32, 32, 32], 3)},
    "depthwise3x3 [1,28,28,128] weight scales": {"per-channel": depthwise([1, 28, 28, 128], 3),
                                                 "per-tensor": depthwise_per_tensor([1, 28, 28, 128], 3)},
    "prelu [1,94,94,10]": {"PRELU": prelu_reference([1, 94, 94, 10]),
                           "two affines + ADD": prelu_two_affines([1, 94, 94, 10]),
                           "one affine + ADD": prelu_one_affine([1, 94, 94, 10]),
                           "one affine on rows + ADD": prelu_one_affine_rows([1, 94, 94, 10])},
    "hardswish [1,2,96,200]": {"HARD_SWISH": hard_swish_op([1, 2, 96, 200]),
                               "ADD+MUL+MUL": hard_swish_add_mul_mul([1, 2, 96, 200]),
                               "affine+MUL": hard_swish_affine_mul([1, 2, 96, 200])},
    "hardswish [1,64,64,16]": {"HARD_SWISH": hard_swish_op([1, 64, 64, 16]),
                               "ADD+MUL+MUL": hard_swish_add_mul_mul([1, 64, 64, 16]),
                               "affine+MUL": hard_swish_affine_mul([1, 64, 64, 16])},
    "1x1 conv + softmax over 2 channels [1,43,43,2]": {"SOFTMAX": softmax_channels([1, 43, 43, 2]),
                                                       "difference conv + LOGISTIC": softmax_two_as_logistic(
                                                           [1, 43, 43, 2])},
    "mul SE gate [1,2,96,200]": {"op": mul_broadcast([1, 2, 96, 200])},
    **{f"SE gate {shape}": {"MUL": mul_broadcast(shape), "float island": mul_broadcast_in_float(shape)}
       for shape in ([1, 2, 96, 200], [1, 28, 28, 64], [1, 14, 14, 256])},  # OCR cls, PP-LCNet
    **{f"prelu {shape} (MTCNN)": {"one affine on rows + ADD": prelu_one_affine_rows(shape),
                                  "two affines + ADD": prelu_two_affines(shape),
                                  "float island": prelu_float_island(shape),
                                  "float island on rows": prelu_float_island(shape, rows=True)}
       for shape in ([1, 70, 94, 10], [1, 33, 45, 16], [1, 46, 46, 32], [1, 22, 22, 28], [1, 21, 21, 64])},
    **{f"grouped conv3x3 {shape} groups {groups}": {"grouped": grouped_conv(shape, groups, False),
                                                    "dense block-diagonal": grouped_conv(shape, groups, True)}
       for shape, groups in (([1, 16, 16, 8], 4), ([1, 16, 16, 16], 4), ([1, 28, 28, 64], 8),
                             ([1, 28, 28, 128], 32))},
    **{f"padded max pool {shape} (ResNet stem)": {"PAD": padded_max_pool(shape, False),
                                                  "PAD on rows": padded_max_pool(shape, True)}
       for shape in ([1, 32, 32, 16], [1, 112, 112, 64])},
    **{f"padded max pool {shape} of a signed input": {form: padded_max_pool_signed(shape, form)
                                                      for form in ("PADV2", "edge rows")}
       for shape in ([1, 32, 32, 16], [1, 112, 112, 64])},
    **{f"flip {shape} axis {axis}": {form: flip(shape, axis, form) for form in ("STRIDED_SLICE", "reversed copy")}
       for shape, axis in (([1, 16, 16, 8], 2), ([1, 64, 64, 32], 2), ([1, 64, 64, 32], 1), ([1, 16, 16, 64], 3))},
    "scalar MUL / ADD [1,128,128,32] (PP-OCR det)": {
        "MUL": elementwise_chain([1, 128, 128, 32], "mul"), "ADD": elementwise_chain([1, 128, 128, 32], "add"),
        "MUL then ADD": elementwise_chain([1, 128, 128, 32], "mul", "add")},
    "one-hot dense [1, 1536] depth 257 -> 128 (Magika)": {
        form: one_hot_dense(1536, 257, 128, form) for form in ("one-hot", "table")},
    **normalization_cases.CASES,
    **depthwise_cases.CASES,
    **transformer_cases.CASES,
}


def feed(interpreter) -> None:
    for detail in interpreter.get_input_details():
        if detail["dtype"] == np.int8:
            value = RNG.integers(-128, 128, detail["shape"]).astype(np.int8)
        else:
            value = RNG.standard_normal(detail["shape"]).astype(np.float32)
        interpreter.set_tensor(detail["index"], value)


def delegated(path: Path) -> bool:
    """One XNNPACK partition and no op outside it (edgepipe.backends.tflite.delegation)."""
    measured = delegation.measure(path)
    return bool(measured) and measured["partitions"] == 1 and not measured["outside"]


def time_case(paths: dict[str, Path], rounds: int, iterations: int) -> dict:
    interpreters = {}
    rows = {}
    for key, path in paths.items():
        try:
            interpreters[key] = make_interpreter(path, "xnnpack", 1)
        except (RuntimeError, ValueError) as error:
            rows[key] = {"error": str(error).splitlines()[0][:200]}
    for interpreter in interpreters.values():
        feed(interpreter)
    timed = alternating_rounds({key: interpreter.invoke for key, interpreter in interpreters.items()}, rounds,
                               iterations)
    for key, row in timed.items():
        rows[key] = {"ms": row["ms"], "spread": row["spread"], "delegated": delegated(paths[key])}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None,
                        help="comma-separated words: the cases whose name contains one (default: all)")
    parser.add_argument("--rounds", type=rounds_argument, default=7, help="alternating rounds (median), >= 3")
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    words = args.cases.split(",") if args.cases is not None else None
    chosen = [name for name in CASES if words is None or any(word in name for word in words)]
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="xnnpack-op-speed-") as tmp:
        for name in chosen:
            paths = {}
            for variant, build in CASES[name].items():
                for dtype in ("int8", "float32"):
                    path = Path(tmp) / f"{len(paths)}.tflite"
                    path.write_bytes(build(dtype))
                    paths[f"{variant} {dtype}"] = path
            results[name] = time_case(paths, args.rounds, args.iterations)
            print(name, json.dumps(results[name]), flush=True)
    import ai_edge_litert

    if args.cases is not None and RESULTS.exists():  # a subset updates only its own cases
        results = {**json.loads(RESULTS.read_text()).get("cases", {}), **results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"host": cpu_features(), "litert": getattr(ai_edge_litert, "__version__", "?"),
                                   "threads": 1, "rounds": args.rounds, "iterations": args.iterations,
                                   "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                                   "cases": results}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
