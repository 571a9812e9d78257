"""LayerNorm and GELU cases for benchmarks/xnnpack_op_speed.py: what an integer LayerNorm or a
GELU form would cost against the float island the lowering writes (issue 15's integer-LayerNorm
question; benchmarks/layernorm_int8.py measures the same on the corpus models).

Why its own module: the cases are long builders; xnnpack_op_speed.py keeps the conv / activation
cases and the timing loop. Each builder takes the dtype ("int8" or "float32") and returns the
.tflite bytes, as xnnpack_op_speed's cases do.
"""

from __future__ import annotations

import numpy as np

from benchmarks.tiny_tflite import Graph, Quantization, RNG, finish
from edgepipe import quantmath


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
    "layernorm [1,16,16,24] (corpus ConvNeXt stem)": layer_norm_case([1, 16, 16, 24]),
    "layernorm [1,17,48] (corpus ViT)": layer_norm_case([1, 17, 48]),
    "layernorm [1,56,56,96] (ConvNeXt-T stage 1)": layer_norm_case([1, 56, 56, 96]),
    "layernorm [1,197,384] (ViT-S)": layer_norm_case([1, 197, 384]),
    "gelu [1,16,16,96] (corpus ConvNeXt MLP)": {"float island": gelu([1, 16, 16, 96], "float"),
                                                "x*sigmoid(1.702x)": gelu([1, 16, 16, 96], "sigmoid")},
    "gelu [1,197,1536] (ViT-S MLP)": {"float island": gelu([1, 197, 1536], "float"),
                                      "x*sigmoid(1.702x)": gelu([1, 197, 1536], "sigmoid")},
}
