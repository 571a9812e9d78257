"""Per-op XNNPACK latency, int8 against fp32, on one-op (or few-op) models written by our writer.

Why: benchmarks/arm_speed.py gives each model's int8 / fp32 ratio; this says where the int8 time
goes. Each case is one op or one lowering alternative (the ops a lowering emits for one ONNX op)
at a shape taken from a corpus model that is slow in int8 (first conv with 3 input channels,
depthwise convs, PReLU, HardSwish, the 2-class Softmax of a detector head, ...). int8 and fp32
variants of a case are timed in alternating rounds on one thread (median over rounds of each
round's median), next to the host's CPU features and load, so a ratio comes from one run.
Inputs are random: this measures speed only (correctness is in tests/test_tflite_ops_*.py).
A case's last op writes the graph output; XNNPACK runs consecutive int8 elementwise ops as one
(two chained int8 scalar ops cost less than one alone), so a lone elementwise op here is an upper
bound of its cost inside a model: confirm on the model (graph prefixes) before acting on it.

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

from benchmarks.arm_speed import cpu_features  # noqa: E402
from benchmarks.timing import alternating_rounds, rounds_argument  # noqa: E402
from edgepipe import quantmath  # noqa: E402
from edgepipe.backends.tflite import delegation  # noqa: E402
from edgepipe.backends.tflite.runtime import make_interpreter  # noqa: E402
from edgepipe.backends.tflite.writer import ModelSpec, Quantization, serialize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "xnnpack_op_speed.json"
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


def layer_norm(shape, int8_steps: str):
    """LayerNorm over the last axis, as the lowering could emit it in an int8 model: `float`: the
    float island (DEQUANTIZE, MEAN, SUB, MUL, MEAN, ADD eps, RSQRT, MUL, MUL gamma, ADD beta,
    QUANTIZE); `int8`: every full-tensor step int8 and only the per-row eps / RSQRT in float (int8
    RSQRT is not delegated); `centering`: MEAN and SUB in int8, the variance and the rest in float;
    `int16`: every step 16x8 (XNNPACK takes no int16 kernel: LiteRT's builtin kernels)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        rows = [*shape[:-1], 1]
        axes = g.spec.add_constant("axes", np.array([len(shape) - 1], np.int32))
        gamma = RNG.uniform(0.5, 1.5, shape[-1:]).astype(np.float32)
        beta = RNG.uniform(-0.5, 0.5, shape[-1:]).astype(np.float32)
        steps = "float" if dtype == "float32" else int8_steps

        def to(kind, index, tensor_shape):
            if g.dtype == kind:
                return index
            g.dtype = kind
            return g.op("QUANTIZE" if kind == "int8" else "DEQUANTIZE", [index], tensor_shape)

        def constant(value):
            if g.dtype == "float32":
                return g.spec.add_constant(f"c{len(g.spec.tensors)}", value)
            scale, zero_point = quantmath.asymmetric_params(min(float(value.min()), 0.0), max(float(value.max()), 0.0))
            return g.spec.add_constant(f"c{len(g.spec.tensors)}", quantmath.quantize(value, scale, zero_point),
                                       Quantization.per_tensor(scale, zero_point))

        binary = {"SUB": "SubOptions", "MUL": "MulOptions", "ADD": "AddOptions"}
        if steps == "int16":
            general = {"PotScaleInt16": False}  # ADD / SUB int16 with non-power-of-two scales
            g.dtype = "int16"
            x = g.op("QUANTIZE", [x], shape)
            mean = g.op("MEAN", [x, axes], rows, "ReducerOptions", KeepDims=True)
            centered = g.op("SUB", [x, mean], shape, binary["SUB"], FusedActivationFunction=0, **general)
            squared = g.op("MUL", [centered, centered], shape, binary["MUL"], FusedActivationFunction=0)
            variance = g.op("MEAN", [squared, axes], rows, "ReducerOptions", KeepDims=True)
            shifted = g.op("ADD", [variance, g.spec.add_constant("eps", np.int16([1]), Quantization.per_tensor(
                3.0 / 32767, 0))], rows, binary["ADD"], FusedActivationFunction=0, **general)
            inverse_std = g.op("RSQRT", [shifted], rows)
            out = g.op("MUL", [centered, inverse_std], shape, binary["MUL"], FusedActivationFunction=0)
            for opcode, value in (("MUL", gamma), ("ADD", beta)):
                constant = g.spec.add_constant(f"c{len(g.spec.tensors)}", np.rint(value * 32767 / 3).astype(np.int16),
                                               Quantization.per_tensor(3.0 / 32767, 0))
                out = g.op(opcode, [out, constant], shape, binary[opcode], FusedActivationFunction=0,
                           **(general if opcode == "ADD" else {}))
            g.dtype = "int8"
            return finish(g, g.op("QUANTIZE", [out], shape))
        x = to("float32" if steps == "float" else "int8", x, shape)
        mean = g.op("MEAN", [x, axes], rows, "ReducerOptions", KeepDims=True)
        centered = g.op("SUB", [x, mean], shape, binary["SUB"], FusedActivationFunction=0)
        centered = to("int8" if steps == "int8" else "float32", centered, shape)
        squared = g.op("MUL", [centered, centered], shape, binary["MUL"], FusedActivationFunction=0)
        variance = to("float32", g.op("MEAN", [squared, axes], rows, "ReducerOptions", KeepDims=True), rows)
        shifted = g.op("ADD", [variance, g.spec.add_constant("eps", np.float32([1e-6]))], rows, binary["ADD"],
                       FusedActivationFunction=0)
        inverse_std = to("int8" if steps == "int8" else "float32", g.op("RSQRT", [shifted], rows), rows)
        out = g.op("MUL", [centered, inverse_std], shape, binary["MUL"], FusedActivationFunction=0)
        out = g.op("MUL", [out, constant(gamma)], shape, binary["MUL"], FusedActivationFunction=0)
        out = g.op("ADD", [out, constant(beta)], shape, binary["ADD"], FusedActivationFunction=0)
        return finish(g, to(dtype, out, shape))
    return build


def gelu(shape, form: str):
    """GELU in an int8 model: `float`: DEQUANTIZE, GELU, QUANTIZE (int8 GELU is not delegated);
    `sigmoid`: x * logistic(1.702 x) in int8 (MUL, LOGISTIC, MUL; an approximation)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        if dtype == "float32" or form == "float":
            g.dtype = "float32"
            y = g.op("DEQUANTIZE", [x], shape) if dtype == "int8" else x
            y = g.op("GELU", [y], shape, "GeluOptions", Approximate=False)
            g.dtype = dtype
            return finish(g, g.op("QUANTIZE", [y], shape) if dtype == "int8" else y)
        scaled = g.op("MUL", [x, g.scalar(1.702)], shape, "MulOptions", FusedActivationFunction=0)
        gate = g.op("LOGISTIC", [scaled], shape, quant=Quantization.per_tensor(1 / 256, -128))
        return finish(g, g.op("MUL", [x, gate], shape, "MulOptions", FusedActivationFunction=0))
    return build


def layer_norm_case(shape) -> dict:
    return {steps: layer_norm(shape, steps) for steps in ("float", "int8", "centering", "int16")}


CASES = {
    "conv3x3_cin3_s1 (PNet first)": {"op": conv_first([1, 96, 96, 3], 10, 1, padding=VALID)},
    "conv3x3_cin3_s1 padded to Cin 4": {"op": conv_first_padded_channels([1, 96, 96, 3], 10, 1, padding=VALID)},
    "conv3x3_cin3_s2 (MobileNet first)": {"op": conv_first([1, 128, 128, 3], 16, 2)},
    "conv3x3_cin3_s2 padded to Cin 4": {"op": conv_first_padded_channels([1, 128, 128, 3], 16, 2)},
    "conv3x3_cin16_s1": {"op": conv_first([1, 45, 45, 16], 32, 1, padding=VALID)},
    "depthwise5x5 (OCR cls)": {"op": depthwise([1, 2, 96, 200], 5)},
    "depthwise3x3 (MobileNet)": {"op": depthwise([1, 32, 32, 32], 3)},
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
    "scalar MUL / ADD [1,128,128,32] (PP-OCR det)": {
        "MUL": elementwise_chain([1, 128, 128, 32], "mul"), "ADD": elementwise_chain([1, 128, 128, 32], "add"),
        "MUL then ADD": elementwise_chain([1, 128, 128, 32], "mul", "add")},
    "layernorm [1,16,16,24] (corpus ConvNeXt stem)": layer_norm_case([1, 16, 16, 24]),
    "layernorm [1,17,48] (corpus ViT)": layer_norm_case([1, 17, 48]),
    "layernorm [1,56,56,96] (ConvNeXt-T stage 1)": layer_norm_case([1, 56, 56, 96]),
    "layernorm [1,197,384] (ViT-S)": layer_norm_case([1, 197, 384]),
    "gelu [1,16,16,96] (corpus ConvNeXt MLP)": {"float island": gelu([1, 16, 16, 96], "float"),
                                                "x*sigmoid(1.702x)": gelu([1, 16, 16, 96], "sigmoid")},
    "gelu [1,197,1536] (ViT-S MLP)": {"float island": gelu([1, 197, 1536], "float"),
                                      "x*sigmoid(1.702x)": gelu([1, 197, 1536], "sigmoid")},
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
