"""Accuracy recovery on the demo CNN: PTQ vs automatic mixed precision vs QAT + distillation.

Two models, both through the same export -> simplify -> fold -> calibrate path as `build`
(edgepipe.cli.accuracy.deployed_model), INT8 evaluated as the TensorRT-style Q/DQ model in ONNX
Runtime on the 300 labelled demo eval images:

- demo: the shipped DemoNet;
- demo-outlier: the same network made outlier-heavy without changing its FP32 function: one
  channel after a ReLU is multiplied by F (BatchNorm scale and shift) and the consuming layer's
  matching input weights divided by F (ReLU is positively homogeneous), at two places: the
  depthwise -> pointwise pair and head_conv -> classifier. Per-tensor INT8 activations then
  spend their range on one channel.

QAT trains on the demo training digits (disjoint from calib/eval: demo.train's split, re-rendered
with a fixed seed), with the FP32 model as teacher. Size = weights as deployed (int8 for
quantized weighted nodes, float32 for float ones and biases). Host TFLite latency is not measured
here (this script stays on the ONNX Runtime Q/DQ path).

Run: python benchmarks/accuracy_recovery.py [--budget 0.01] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgepipe import config, graph, settings
from edgepipe.cli.accuracy import deployed_model
from edgepipe.data import load_dataset
from edgepipe.demo import DEMO_PREPROCESS
from edgepipe.demo.model import build_demo, make_outlier_heavy
from edgepipe.demo.train import SEED, load_digits_split, preprocess, render
from edgepipe.accuracy.precision import plan_mixed_precision
from edgepipe.accuracy.qat import finetune, float_copy, learned_calibration, prepare_qat, strip_qat
from edgepipe.accuracy.sensitivity import VariantEvaluator
from edgepipe.stages.calibrate import run_calibration
from edgepipe.targets import load_target

TARGET = load_target("desktop-gpu")  # symmetric TensorRT-style Q/DQ simulation, as before

OUTLIER_FACTOR = 100.0
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def demo_settings(weights: Path | None) -> dict:
    merged = config.merge(config.defaults(), settings.demo_settings())
    merged.update(target="desktop-gpu", weights=str(weights) if weights else None)
    return settings.typed_sections(merged)


def weight_bytes(model, float_nodes: set[str]) -> int:
    """Deployed weight storage: int8 weights for quantized weighted nodes, float32 otherwise."""
    total = 0
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            value = graph.constant_value(model, name) if name else None
            if value is None or value.dtype.kind != "f":
                continue
            int8 = node.op_type in WEIGHTED and index == 1 and node.name not in float_nodes
            total += value.size * (1 if int8 else 4)
    return total


def train_dataset(folder: Path):
    """Demo training digits (never used for calibration/eval), preprocessed for the torch model."""
    images, labels = load_digits_split(SEED)["train"]
    x = preprocess(render(images, np.random.default_rng(SEED + 1)))
    np.savez(folder / "train.npz", image=x, labels=labels)
    return load_dataset(folder / "train.npz", {"image": ((1, 3, 32, 32), np.float32)})


def run_case(name: str, outlier: bool, budget: float, epochs: int, lr: float, work: Path, train_ds) -> dict:
    torch.manual_seed(0)
    module = build_demo()
    if outlier:
        make_outlier_heavy(module, OUTLIER_FACTOR)
    source = work / f"{name}.pt"
    torch.save(module.state_dict(), source)
    settings = demo_settings(source)
    model, calib_ds, eval_ds = deployed_model(settings)
    calibration = run_calibration(model, calib_ds, settings["calibration"])
    evaluator = VariantEvaluator(model, calibration, eval_ds, target=TARGET, max_samples=None)
    fp32, ptq = evaluator.reference_metrics(), evaluator.evaluate(set())
    rows = {"fp32": _row(fp32, weight_bytes(model, {n.name for n in model.graph.node}), None, 0.0)}
    rows["ptq"] = _row(ptq, weight_bytes(model, set()), 0, 0.0)

    started = time.perf_counter()
    plan = plan_mixed_precision(model, calibration, eval_ds, budget, target=TARGET, max_samples=64)
    mixed = evaluator.evaluate(plan.float_nodes)
    rows["mixed"] = _row(mixed, weight_bytes(model, plan.float_nodes), len(plan.float_groups),
                         time.perf_counter() - started)
    rows["mixed"].update(met=plan.met, float_group_names=plan.float_groups)

    started = time.perf_counter()
    teacher = float_copy(module)
    prepare_qat(module, calibration, onnx_model=model)
    module, history = finetune(module, train_ds, epochs=epochs, lr=lr, alpha=0.5, T=4.0, teacher=teacher)
    tuned_path = work / f"{name}.qat.pt"
    torch.save(float_copy(module).state_dict(), tuned_path)
    tuned_model, _, _ = deployed_model(demo_settings(tuned_path))
    tuned_calibration = learned_calibration(module, tuned_model,
                                            base=run_calibration(tuned_model, calib_ds, settings["calibration"]))
    strip_qat(module)
    qat = VariantEvaluator(tuned_model, tuned_calibration, eval_ds, target=TARGET, max_samples=None).evaluate(set())
    rows["qat_kd"] = _row(qat, weight_bytes(tuned_model, set()), 0, time.perf_counter() - started)
    rows["qat_kd"].update(fp32_top1_after=qat.fp32_top1, history=history)
    return {"model": name, "budget_top1_drop": budget, "eval_samples": len(eval_ds), "rows": rows}


def _row(metrics, size: int, float_groups: int | None, seconds: float) -> dict:
    return {"top1": metrics.top1, "argmax_agreement": metrics.argmax_agreement,
            "sqnr_db": None if np.isinf(metrics.sqnr_db) else round(float(metrics.sqnr_db), 2),
            "weight_bytes": size, "float_groups": float_groups, "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "accuracy_recovery.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_ds = train_dataset(work)
        cases = [run_case(name, outlier, args.budget, args.epochs, args.lr, work, train_ds)
                 for name, outlier in (("demo", False), ("demo-outlier", True))]
    print(f"{'model':<13} {'variant':<7} {'top1':>6} {'agree':>6} {'SQNR dB':>8} {'weights':>8} {'float':>5} {'time s':>6}")
    for case in cases:
        for variant, row in case["rows"].items():
            sqnr = "inf" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"
            groups = "all" if row["float_groups"] is None else str(row["float_groups"])
            print(f"{case['model']:<13} {variant:<7} {row['top1']:>6.4f} {row['argmax_agreement']:>6.4f} {sqnr:>8} "
                  f"{row['weight_bytes']:>8} {groups:>5} {row['seconds']:>6.1f}")
    result = {"schema": 1, "settings": vars(args) | {"out": str(args.out)}, "preprocess": DEMO_PREPROCESS,
              "host": {"machine": platform.machine(), "python": sys.version.split()[0], "torch": torch.__version__},
              "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
