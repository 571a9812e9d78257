"""Why are int8 attention MatMuls slower than fp32 on arm-cpu, and which lowering pays? Measured
on the corpus transformers (and ConvNeXt's layer scale, the other transformer-block op the
per-op profile flagged).

Why: issue 15's profile (benchmarks/arm_op_profile.py) put half the ViT's int8 time in its
attention BATCH_MATMULs at 1.24x their fp32 time. XNNPACK packs a BATCH_MATMUL's second operand
on every call when it is an activation; its int8 packer for B stored [N, K] (AdjY) is
vectorised, the one for [K, N] a scalar loop, and the fp32 packers are fast either way
(benchmarks/transformer_cases.py times each form at these models' shapes). This measures what
that means for whole models.

Per model, the user's build (`edgepipe build --target arm-cpu`, as benchmarks/arm_speed.py runs
it), then the bundle's reference.onnx and calibration lowered again per variant:
- `shipped`: the lowering (P V reads V^T with AdjY where V needs a TRANSPOSE anyway);
- `B in ONNX order`: AdjY only where B^T is already in memory (the lowering before);
- `B^T always`: every int8 BATCH_MATMUL reads B^T with AdjY, a TRANSPOSE added where needed;
- `attention float`: the MatMuls of two activations and the Softmax between them as float
  islands (`float_nodes`), the projections int8;
- `layer scale as MUL` (ConvNeXt): a second CLI build with `fold.constant_affine: false`, where
  the layer scale after each block's last MatMul stays an int8 MUL instead of being folded into
  the MatMul's columns (the model has no other constant affine chain to fold).
Then XNNPACK partitions, TRANSPOSE count, int8 SQNR vs the FP32 reference on the held-out set,
and the latency of every variant's int8 model and the fp32 model timed together (1 thread,
alternating rounds as arm_speed: one host load for all).

    python benchmarks/transformer_int8.py [--models timm_vit,ocr_rec,smart_turn,timm_convnext] [--rounds 7]

Writes benchmarks/results/transformer_int8.json (a `--models` subset updates only those rows).
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

from benchmarks.arm_speed import build, corpus_builds, load_window, timed_pair, write_results  # noqa: E402
from benchmarks.timing import rounds_argument  # noqa: E402
from edgepipe import graph  # noqa: E402
from edgepipe.backends.tflite import delegation  # noqa: E402
from edgepipe.backends.tflite.build import build_tflite  # noqa: E402
from edgepipe.backends.tflite.ops import linear  # noqa: E402
from edgepipe.backends.tflite.runtime import run_tflite  # noqa: E402
from edgepipe.calibrate.result import CalibrationResult  # noqa: E402
from tests.realmodels import corpus, evaluate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "transformer_int8.json"
ATTENTION = ("shipped", "B in ONNX order", "B^T always", "attention float")
VARIANTS = {"timm_vit": ATTENTION, "ocr_rec": ATTENTION, "smart_turn": ATTENTION,
            "timm_convnext": ("shipped", "layer scale as MUL")}
UNFOLDED = "fold:\n  constant_affine: false\n"
READS_B = {"B in ONNX order": lambda ctx, name, dtype, swapped: ctx.layout(name) == swapped,
           "B^T always": lambda ctx, name, dtype, swapped: dtype == "int8" or ctx.layout(name) == swapped}


def attention_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMuls of two activations and the Softmax nodes (scores -> probabilities between them)."""
    return [node.name for node in model.graph.node if node.op_type == "Softmax" or (
        node.op_type == "MatMul" and all(graph.constant_value(model, name) is None for name in node.input))]


def build_variant(name: str, variant: str, bundle: Path, data, reference, out: Path) -> dict:
    """Lower the bundle's reference.onnx again as `variant` into `out` (the layer-scale variant:
    a CLI build of its own); its delegation, TRANSPOSE count and int8 SQNR on the held-out set."""
    if variant == "layer scale as MUL":
        (out.parent / name).mkdir(parents=True, exist_ok=True)
        (out.parent / name / "edgepipe.yaml").write_text(UNFOLDED)
        unfolded, built = build(name, out.parent)
        if unfolded is None:
            raise RuntimeError(f"{name}: {built}")
        out.mkdir(parents=True, exist_ok=True)
        for file in ("model.tflite", "model.fp32.tflite"):
            (out / file).write_bytes((unfolded / file).read_bytes())
        return {**measured_int8(name, out / "model.tflite", evaluate.manifest(unfolded)["io"], data, reference),
                "op_histogram": None, "float_nodes": None}
    model = onnx.load(bundle / "reference.onnx")
    calibration = CalibrationResult.load(bundle / "calibration.json")
    options = {"target": "arm-cpu", "float_nodes": attention_nodes(model) if variant == "attention float" else []}
    saved = linear._reads_b_transposed
    linear._reads_b_transposed = READS_B.get(variant, saved)
    try:
        result = build_tflite(model, calibration, out, options)
    finally:
        linear._reads_b_transposed = saved
    return {**measured_int8(name, out / "model.tflite", result["io"], data, reference),
            "float_nodes": len(result["float_nodes"]), "op_histogram": result["op_histogram"]}


def measured_int8(name: str, int8: Path, io: dict, data, reference) -> dict:
    """Delegation, TRANSPOSE count and SQNR vs the FP32 reference of an int8 .tflite."""
    outputs = [run_tflite(int8, io, {corpus.MODELS[name].input_name: data.eval[i:i + 1]})
               for i in range(len(data.eval))]
    ours = [np.concatenate([o[spec["name"]] for o in outputs]) for spec in io["outputs"]]
    return {"delegation": delegation.measure(int8), "transposes": evaluate.tflite_transposes(int8),
            "sqnr_db": [round(evaluate.sqnr_db(r, o), 2) for r, o in zip(reference, ours)]}


def time_variants(outs: dict[str, Path], rounds: int) -> tuple[dict[str, float], float, int]:
    """Every variant's int8 model and the shipped fp32 model in one set of alternating rounds (the
    same host load for all): ({variant: int8 ms}, fp32 ms, invocations per round)."""
    paths = [out / "model.tflite" for out in outs.values()] + [outs["shipped"] / "model.fp32.tflite"]
    times, iterations = timed_pair(paths, 1, rounds, 10)
    return dict(zip(outs, times[:-1])), times[-1], iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=rounds_argument, default=7)
    args = parser.parse_args()
    corpus.fetch_all()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="transformer-int8-") as tmp:
        for name, bundle, data, reference, load_start in corpus_builds(args.models.split(","), Path(tmp), rows):
            row = {"eval_samples": len(data.eval), "onnx_transposes": evaluate.onnx_transposes(
                evaluate.peer_source(name, bundle.parent)), "variants": {}}
            outs = {variant: Path(tmp) / name / variant.replace(" ", "_").replace("^", "")
                    for variant in VARIANTS[name]}
            for variant, out in outs.items():
                row["variants"][variant] = build_variant(name, variant, bundle, data, reference, out)
            int8_ms, fp32_ms, iterations = time_variants(outs, args.rounds)
            row["latency_ms_1_thread"] = {"fp32": round(fp32_ms, 4), "iterations": iterations}
            for variant, entry in row["variants"].items():
                entry["latency_ms_1_thread"] = {"int8": round(int8_ms[variant], 4),
                                                "int8_over_fp32": round(int8_ms[variant] / fp32_ms, 3)}
                print(name, variant, json.dumps({k: v for k, v in entry.items() if k != "op_histogram"}), flush=True)
            row["loadavg"] = load_window(load_start)
            rows[name] = row
    if RESULTS.exists():  # a --models subset updates only its own rows
        rows = {**json.loads(RESULTS.read_text()).get("models", {}), **rows}
    write_results(RESULTS, {"rounds": args.rounds, "models": rows})


if __name__ == "__main__":
    main()
