"""Calibration vs ONNX Runtime's quantize_static on the same model and data, in one run.

Why: our claims (streaming memory, robust `auto`) are only worth what a side-by-side run shows.
Each calibrator runs 3 times, each time in a fresh subprocess (child_process.py: the median wall
time; peak memory = the child's own VmHWM, growth = that peak minus the peak right before
calibration starts); each writes a Q/DQ ONNX model that the parent evaluates against the FP32
model on the demo eval set (top-1 agreement, accuracy, SQNR of the logits). Our Q/DQ model comes
from edgepipe.backends.qdq.write_qdq_model; ORT's from quantize_static(QuantFormat.QDQ,
per-channel weights, int8 activations, symmetric activations).

Same placement: ORT places Q/DQ pairs differently (every op input it knows), so its model's SQNR
mixes placement with calibration. Each ORT row is therefore also evaluated with ORT's ranges
(read back from its QuantizeLinear scales) put into *our* Q/DQ placement: `same_placement` rows
differ from ours only in the ranges.
Run by hand:  python benchmarks/calibration_vs_peers.py [--repeat 4] [--runs 3]
Writes benchmarks/results/calibration_vs_peers.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
OURS = ["ours:auto", "ours:entropy", "ours:percentile", "ours:mse", "ours:minmax"]
PEERS = ["ort:MinMax", "ort:Entropy", "ort:Percentile"]


sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_process import own_peak_mb, run_child  # noqa: E402
from ort_peer import ort_ranges_in_our_placement  # noqa: E402

def prepare(work: Path, repeat: int) -> dict:
    """Export the demo model and write calibration / eval arrays as .npz."""
    import torch

    from edgepipe.data import load_dataset
    from edgepipe.demo import DEMO_PREPROCESS
    from edgepipe.demo.model import build_demo

    buffer = io.BytesIO()
    torch.onnx.export(build_demo(), torch.zeros(1, 3, 32, 32), buffer, dynamo=False,
                      input_names=["image"], output_names=["logits"], opset_version=17)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.save(model, work / "model.onnx")
    specs = {"image": ((1, 3, 32, 32), np.float32)}
    calib = load_dataset(ROOT / "calibration_sets/demo/calib", specs, DEMO_PREPROCESS)
    images = np.concatenate([calib.sample(i)["image"] for i in range(len(calib))])
    rng = np.random.default_rng(0)  # larger sets for the memory-scaling rows: jittered copies
    tiled = np.concatenate([images] + [images + rng.normal(0, 0.05, images.shape).astype(np.float32)
                                       for _ in range(repeat - 1)])
    np.savez(work / "calib.npz", image=images)
    np.savez(work / "calib_large.npz", image=tiled)
    return {"model": "edgepipe.demo DemoNet (ONNX, opset 17)", "calib_samples": len(images),
            "calib_large_samples": len(tiled)}


def worker(method: str, work: Path, calib_file: str) -> None:
    """Calibrate + write Q/DQ in this process; print one JSON line."""
    from edgepipe import graph

    model = onnx.load(work / "model.onnx")
    images = np.load(work / calib_file)["image"]
    graph.make_session(model)  # load ORT before measuring the baseline
    base = own_peak_mb()
    start = time.perf_counter()
    kind, name = method.split(":")
    out = work / f"{kind}_{name}_{calib_file.split('.')[0]}.onnx"
    if kind == "ours":
        from edgepipe.backends.qdq import write_qdq_model
        from edgepipe.calibrate import calibrate

        class Data:
            def __len__(self):
                return len(images)

            def sample(self, i):
                return {"image": images[i : i + 1]}

        result = calibrate(model, Data(), {"method": name})
        qdq, _ = write_qdq_model(model, result)
        onnx.save(qdq, out)
        result.save(out.with_suffix(".calibration.json"))
        extra = {"warnings": result.warnings,
                 "methods_chosen": {m: sum(t.method == m for t in result.tensors.values())
                                    for m in ("entropy", "percentile", "mse", "minmax")}}
    else:
        from ort_peer import ort_quantize_static

        ort_quantize_static(work / "model.onnx", out, len(images), lambda i: {"image": images[i : i + 1]}, name)
        extra = {}
    wall = time.perf_counter() - start
    peak = own_peak_mb()
    print(json.dumps({"method": method, "calib": calib_file, "wall_s": wall, "peak_mb": peak,
                      "growth_mb": peak - base, "qdq": str(out), **extra}))


def evaluate(work: Path, qdq_path) -> dict:
    from edgepipe import graph, quantmath

    data = np.load(ROOT / "calibration_sets/demo/eval.npz")
    images, labels = data["image"], data["labels"]
    reference = graph.make_session(onnx.load(work / "model.onnx"))
    test = graph.make_session(qdq_path if isinstance(qdq_path, onnx.ModelProto) else onnx.load(qdq_path))
    ref = np.concatenate([reference.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))])
    out = np.concatenate([test.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))])
    return {"top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))),
            "top1": float(np.mean(out.argmax(1) == labels)), "fp32_top1": float(np.mean(ref.argmax(1) == labels)),
            "sqnr_db": quantmath.sqnr_db(ref, out)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "WORK", "CALIB"))
    parser.add_argument("--repeat", type=int, default=4, help="size multiplier of the memory-scaling set")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per calibrator (median reported)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_vs_peers.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.worker[2])
        return
    work = Path(tempfile.mkdtemp(prefix="calib_bench_"))
    report = {"host": {"machine": platform.machine(), "python": platform.python_version()}, "runs_per_row": args.runs,
              "memory": "peak_mb = the worker's own VmHWM; growth_mb = VmHWM after minus before calibration",
              **prepare(work, args.repeat), "runs": []}
    plan = [(m, "calib.npz") for m in OURS + PEERS] + [(m, "calib_large.npz") for m in ("ours:auto", "ort:Percentile")]
    for method, calib in plan:
        row = run_child([__file__, "--worker", method, str(work), calib], repeats=args.runs)
        if "error" in row:
            report["runs"].append({"method": method, "calib": calib, **row})
            continue
        qdq = row.pop("qdq")
        row.update(evaluate(work, qdq))
        if method.startswith("ort:"):  # the same ranges in our placement: calibration alone differs
            base = work / f"ours_minmax_{calib.split('.')[0]}.calibration.json"
            if base.exists():
                model, info = ort_ranges_in_our_placement(onnx.load(work / "model.onnx"), qdq, base)
                row["same_placement"] = {**evaluate(work, model), **info}
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    by = {(r["method"], r["calib"]): r for r in report["runs"] if "error" not in r}
    peer = by.get(("ort:Percentile", "calib.npz"))
    if peer:  # ratios vs a peer measured in this same run
        for row in by.values():
            row["wall_vs_ort_percentile"] = row["wall_s"] / peer["wall_s"]
            row["growth_vs_ort_percentile"] = row["growth_mb"] / max(peer["growth_mb"], 1e-6)
    entropy = by.get(("ort:Entropy", "calib.npz"))
    if entropy:  # the speed goal is stated against ORT's Entropy calibrator
        for row in by.values():
            row["wall_vs_ort_entropy"] = row["wall_s"] / entropy["wall_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
