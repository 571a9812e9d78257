"""How much the recognizer's int8 figures move for reasons that are no accuracy lever: the
noise floor a lever's gain on benchmarks/accuracy_goals.py must clear.

Two perturbations of the default build (the data and protocol of accuracy_goals.py: 64
calibration lines, 200 eval lines, FP32 = ONNX Runtime on the original file):
- threshold jitter (jetson only: its deployed model is the Q/DQ ONNX, whose activation scales can
  be edited): every activation scale of `model.qdq.onnx` times exp(N(0, sigma)), sigma 2% by
  default, the size of the threshold differences that histogram binning alone gives two
  equivalent graphs (an affine chain folded into the next conv: 1-3%);
- calibration draw: the same build calibrated on other rendered lines (seeds other than 1),
  the bias correction included.
Each variant reports the accuracy_goals.py reading metrics; the spread (min, max, std) of each is
what a lever's difference is compared with.

A lever is judged on the same draws and the same jitter: `--config edgepipe.yaml` builds every
variant with it (write it to another `--out`; int8_noise_floor_cle_depthwise.json is
`fold.cross_layer_equalization: depthwise`).

Run by hand:  python benchmarks/int8_noise_floor.py [--targets jetson,arm-cpu] [--jitter 6] [--draws 2] [--config cfg.yaml]
Writes benchmarks/results/int8_noise_floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_goals as goals  # noqa: E402
import real_models  # noqa: E402
from tests.realmodels import evaluate as corpus_eval  # noqa: E402

NAME = "ocr_rec"
METRICS = ("fp32_agreement", "char_accuracy", "step_agreement", "logit_sqnr_db", "sqnr_db", "line_agreement")


def jittered(qdq: onnx.ModelProto, sigma: float, seed: int) -> onnx.ModelProto:
    """A copy with every activation QuantizeLinear scale (not the weights') times exp(N(0, sigma))."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    inits = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    done = set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] in done:
            continue  # weights are quantized from constants (their own per-channel grid)
        scale = inits[node.input[1]]
        value = numpy_helper.to_array(scale) * np.exp(rng.normal(0.0, sigma))
        scale.CopyFrom(numpy_helper.from_array(value.astype(np.float32), scale.name))
        done.add(node.input[1])
    return model


def summary(variants: list[dict]) -> dict:
    result = {}
    for metric in METRICS:
        values = np.array([v[metric] for v in variants], np.float64)
        result[metric] = {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
                          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return result


def reading(fp32: np.ndarray, out: np.ndarray, texts: list[str]) -> dict:
    metrics = goals.reading_metrics(fp32, out, texts)
    return {k: float(metrics[k]) for k in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default="jetson,arm-cpu")
    parser.add_argument("--jitter", type=int, default=6, help="threshold-jitter variants (jetson)")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--draws", type=int, default=2, help="builds calibrated on other rendered lines")
    parser.add_argument("--config", help="edgepipe.yaml every build uses (a lever)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_noise_floor.json"))
    args = parser.parse_args()
    config = Path(args.config).resolve() if args.config else None
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    work = Path(tempfile.mkdtemp(prefix="int8_noise_floor_"))
    try:
        data, fp32, report = goals.recognizer_study(NAME, "rec_jetson", work, sigma=args.sigma,
                                                    config=config.read_text() if config else None)
        texts = [str(t) for t in data["texts"]]
        spec = real_models.MODELS[NAME]
        calib_n = report["calib_samples"]
        calibration_file = work / f"{NAME}_calib.npz"
        default_calibration = calibration_file.read_bytes()
        for target in args.targets.split(","):
            calibration_file.write_bytes(default_calibration)
            bundle, _ = goals.cli_build(NAME, target, work, "default", config)
            entry = {"default": reading(fp32, goals.deployed_output(target, bundle, NAME, data["x"]), texts)}
            if target == "jetson" and args.jitter:
                qdq = onnx.load(str(bundle / "model.qdq.onnx"))
                variants = []
                for seed in range(args.jitter):
                    path = work / f"jitter_{seed}.onnx"
                    onnx.save(jittered(qdq, args.sigma, seed), str(path))
                    outputs = corpus_eval.run_onnx_file(path, spec.input_name, data["x"])
                    variants.append(reading(fp32, list(outputs.values())[0], texts))
                entry["threshold_jitter"] = {"variants": variants, "spread": summary(variants)}
            draws = []
            for seed in range(3, 3 + args.draws):
                calib = real_models.make_inputs(NAME, calib_n, seed)["x"]
                np.savez(calibration_file, **{spec.input_name: calib})
                bundle, _ = goals.cli_build(NAME, target, work, f"calib_seed{seed}", config)
                draws.append({"calib_seed": seed,
                              **reading(fp32, goals.deployed_output(target, bundle, NAME, data["x"]), texts)})
            if draws:
                entry["calibration_draws"] = {"variants": draws, "spread": summary([entry["default"], *draws])}
            report["targets"][target] = entry
            print(target, json.dumps({k: v.get("spread", v) for k, v in entry.items()})[:600], flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print("wrote", args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
