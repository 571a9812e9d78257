"""Would an integer LayerNorm pay on the arm-cpu corpus models? Lowerings tried and measured.

Why: int8 arm-cpu models compute LayerNorm as a float island inside the XNNPACK partition
(edgepipe/backends/tflite/ops/normalization.py). An integer form must be delegated, faster and
about as accurate to replace it. LiteRT 2.3's XNNPACK takes int8 MEAN (also over the channel
axis), SUB, MUL and ADD, but not int8 RSQRT, SQRT, DIV or SQUARED_DIFFERENCE, and no 16x8 kernel
at all (benchmarks/xnnpack_op_speed.py measures each one-LayerNorm model; this measures models).

Per model (the corpus models with LayerNormalization), the user's build (`edgepipe build --target
arm-cpu`, as benchmarks/arm_speed.py runs it), then the bundle's reference.onnx and calibration
lowered again with each LayerNorm lowering:
- `shipped`: the build's lowering (float island);
- `int8`: MEAN, SUB, MUL (square), MEAN in int8, eps + RSQRT in float on the per-row variance
  (one value per row), MUL in int8, gamma / beta as a 1x1 DEPTHWISE_CONV_2D (per-channel weights);
- `int8 centering`: MEAN and SUB in int8, the variance and normalization in float, gamma / beta as
  the depthwise conv;
- `removed`: LayerNorm replaced by a requantization of its input (wrong outputs): the ceiling of
  what any LayerNorm lowering can save;
- `shipped, depthwise float`: the shipped lowering with the depthwise convolutions as float
  islands (`float_nodes`): where the rest of the int8 time goes (ConvNeXt's 7x7 depthwise convs).
The int8 forms get the best grids they could have: the min / max of every intermediate over the
calibration set (ONNX Runtime on the bundle's reference.onnx, the decomposition in numpy), which
the calibration stage does not collect. Then: XNNPACK partitions, int8 / fp32 latency (1 thread,
alternating rounds as arm_speed) and int8 SQNR vs the FP32 reference on the held-out set.

    python benchmarks/layernorm_int8.py [--models timm_convnext,timm_vit] [--rounds 5]

Writes benchmarks/results/layernorm_int8.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.arm_speed import corpus_builds, load_window, timed_pair, write_results  # noqa: E402
from edgepipe import graph, quantmath  # noqa: E402
from edgepipe.backends.tflite import delegation, ops  # noqa: E402
from edgepipe.backends.tflite.build import build_tflite  # noqa: E402
from edgepipe.backends.tflite.lower import Lowering, node_attrs  # noqa: E402
from edgepipe.backends.tflite.runtime import run_tflite  # noqa: E402
from edgepipe.backends.tflite.writer import Quantization  # noqa: E402
from edgepipe.calibrate.result import CalibrationResult  # noqa: E402
from tests.realmodels import corpus, evaluate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "layernorm_int8.json"
MODELS = ["timm_convnext", "timm_vit"]
VARIANTS = ("shipped", "int8", "int8 centering", "removed", "shipped, depthwise float")
STEPS = ("mean", "centered", "squared", "variance", "inverse_std", "normalized")


def intermediate_ranges(model: onnx.ModelProto, images: np.ndarray) -> dict[str, dict[str, tuple[float, float]]]:
    """{LayerNorm node: {step: (min, max)}} of the decomposition over the calibration images."""
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    for name in dict.fromkeys(n.input[0] for n in norms):
        probed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = graph.make_session(probed)
    names = [o.name for o in session.get_outputs()]
    runs = [dict(zip(names, session.run(None, {session.get_inputs()[0].name: images[i:i + 1]})))
            for i in range(len(images))]
    ranges = {}
    for node in norms:
        x = np.concatenate([run[node.input[0]] for run in runs]).astype(np.float64)
        epsilon = float(node_attrs(node).get("epsilon", 1e-5))
        mean = x.mean(-1, keepdims=True)
        centered = x - mean
        variance = (centered ** 2).mean(-1, keepdims=True)
        inverse_std = 1.0 / np.sqrt(variance + epsilon)
        values = (mean, centered, centered ** 2, variance, inverse_std, centered * inverse_std)
        ranges[node.name] = {step: (float(v.min()), float(v.max())) for step, v in zip(STEPS, values)}
    return ranges


def integer_layer_norm(variant: str, ranges: dict):
    """A LayerNormalization lowering (over the last axis) for `variant`; float nodes as shipped."""
    shipped = ops.registry().find("", "LayerNormalization", 17).lower

    def lower(ctx: Lowering, node) -> None:
        perm = ctx.layout(node.input[0])
        last = len(perm) - 1
        if ctx.node_dtype(node) != "int8" or node_attrs(node).get("axis", -1) % len(perm) != last or perm[last] != last:
            return shipped(ctx, node)  # float nodes; normalized axes other than the last, channels-last
        x = ctx.get(node.input[0], "int8", perm)
        if variant == "removed":
            ctx.emit("QUANTIZE", [x], [ctx.new_value(node.output[0], "int8", perm)], node)
            return
        grid = ranges[node.name]
        shape = ctx.tensor(x).shape
        rows = [*shape[:-1], 1]
        axes = ctx.int32_constant(f"{node.name};axes", [last])

        def step(opcode, inputs, tag, tensor_shape, dtype="int8", options_type=None, **options) -> int:
            quant = Quantization.per_tensor(*quantmath.asymmetric_params(*grid[tag])) if dtype == "int8" else None
            target = ctx.temp(f"{node.name};{tag}", tensor_shape, dtype, quant)
            ctx.emit(opcode, inputs, [target], node, options_type, **options)
            return target

        def binary(opcode, a, b, tag, tensor_shape, dtype="int8") -> int:
            return step(opcode, [a, b], tag, tensor_shape, dtype, f"{opcode.title()}Options", FusedActivationFunction=0)

        epsilon = ctx.spec.add_constant(f"{node.name};epsilon", np.float32(node_attrs(node).get("epsilon", 1e-5)))
        mean = step("MEAN", [x, axes], "mean", rows, options_type="ReducerOptions", KeepDims=True)
        centered = binary("SUB", x, mean, "centered", shape)
        if variant == "int8":
            squared = binary("MUL", centered, centered, "squared", shape)
            variance = step("MEAN", [squared, axes], "variance", rows, options_type="ReducerOptions", KeepDims=True)
            variance = step("DEQUANTIZE", [variance], "variance_float", rows, "float32")
            inverse_std = step("RSQRT", [binary("ADD", variance, epsilon, "shifted", rows, "float32")],
                               "inverse_std_float", rows, "float32")
            inverse_std = step("QUANTIZE", [inverse_std], "inverse_std", rows)
            normalized = binary("MUL", centered, inverse_std, "normalized", shape)
        else:
            centered = step("DEQUANTIZE", [centered], "centered_float", shape, "float32")
            variance = step("MEAN", [binary("MUL", centered, centered, "squared_float", shape, "float32"), axes],
                            "variance_float", rows, "float32", "ReducerOptions", KeepDims=True)
            inverse_std = step("RSQRT", [binary("ADD", variance, epsilon, "shifted", rows, "float32")],
                               "inverse_std_float", rows, "float32")
            normalized = step("QUANTIZE", [binary("MUL", centered, inverse_std, "normalized_float", shape, "float32")],
                              "normalized", shape)
        out = ctx.new_value(node.output[0], "int8", perm)
        channels = shape[-1]
        flat = [1, 1, int(np.prod(shape)) // channels, channels]  # a 1x1 depthwise conv needs 4-D
        if shape != flat:
            viewed = ctx.temp(f"{node.name};4d", flat, "int8", ctx.tensor(normalized).quantization)
            ctx.emit("RESHAPE", [normalized, ctx.int32_constant(f"{node.name};4d_shape", flat)], [viewed], node)
            normalized = viewed
        gamma = np.asarray(ctx.constant(node.input[1]), np.float32).reshape(1, 1, 1, channels)
        beta = np.asarray(ctx.constant(node.input[2]), np.float32).reshape(channels)
        filter_index, bias_index = ctx.filter_and_bias(node.name, gamma, 3, beta, normalized, "int8")
        affine = out if shape == flat else ctx.temp(f"{node.name};affine", flat, "int8", ctx.tensor(out).quantization)
        ctx.emit("DEPTHWISE_CONV_2D", [normalized, filter_index, bias_index], [affine], node, "DepthwiseConv2DOptions",
                 Padding=1, StrideH=1, StrideW=1, DilationHFactor=1, DilationWFactor=1, DepthMultiplier=1,
                 FusedActivationFunction=0)
        if affine != out:
            ctx.emit("RESHAPE", [affine, ctx.int32_constant(f"{node.name};shape", shape)], [out], node)

    return lower


def depthwise_convs(model: onnx.ModelProto) -> list[str]:
    return [node.name for node in model.graph.node if node.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in node.attribute)]


def measure_variant(name: str, variant: str, bundle: Path, data, ranges: dict, reference, out: Path,
                    rounds: int) -> dict:
    model = onnx.load(bundle / "reference.onnx")
    calibration = CalibrationResult.load(bundle / "calibration.json")
    entry = ops.registry().find("", "LayerNormalization", 17)
    saved = entry.lower, entry.int8
    options = {"target": "arm-cpu"}
    if variant.startswith("shipped"):
        options["float_nodes"] = depthwise_convs(model) if variant.endswith("depthwise float") else []
    else:
        entry.lower, entry.int8 = integer_layer_norm(variant, ranges), True
    try:
        result = build_tflite(model, calibration, out, options)
    finally:
        entry.lower, entry.int8 = saved
    int8, fp32 = out / "model.tflite", out / "model.fp32.tflite"
    outputs = [run_tflite(int8, result["io"], {corpus.MODELS[name].input_name: data.eval[i:i + 1]})
               for i in range(len(data.eval))]
    names = [o["name"] for o in result["io"]["outputs"]]
    ours = [np.concatenate([o[n] for o in outputs]) for n in names]
    (int8_ms, fp32_ms), iterations = timed_pair([int8, fp32], 1, rounds, 10)
    return {"delegation": delegation.measure(int8), "float_nodes": len(result["float_nodes"]),
            "op_histogram": result["op_histogram"],
            "sqnr_db": [round(evaluate.sqnr_db(r, o), 2) for r, o in zip(reference, ours)],
            "latency_ms_1_thread": {"int8": round(int8_ms, 4), "fp32": round(fp32_ms, 4),
                                    "int8_over_fp32": round(int8_ms / fp32_ms, 3), "iterations": iterations}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    corpus.fetch_all()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="layernorm-int8-") as tmp:
        for name, bundle, data, reference, load_start in corpus_builds(args.models.split(","), Path(tmp), rows):
            ranges = intermediate_ranges(onnx.load(bundle / "reference.onnx"), data.calib)
            row = {"eval_samples": len(data.eval), "layer_norms": len(ranges), "variants": {}}
            for variant in VARIANTS:
                out = Path(tmp) / name / variant.replace(" ", "_")
                row["variants"][variant] = measure_variant(name, variant, bundle, data, ranges, reference, out,
                                                           args.rounds)
                print(name, variant, json.dumps({k: v for k, v in row["variants"][variant].items()
                                                 if k != "op_histogram"}), flush=True)
            row["loadavg"] = load_window(load_start)
            rows[name] = row
    write_results(RESULTS, {"rounds": args.rounds, "models": rows})


if __name__ == "__main__":
    main()
