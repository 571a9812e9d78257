"""Calibration vs ONNX Runtime's quantize_static on the same model and data, in one run.

Why: our claims (streaming memory, robust `auto`) are only worth what a side-by-side run shows.
Each calibrator runs in its own subprocess (peak RSS = ru_maxrss of that process, also reported
minus the RSS right before calibration starts); each writes a Q/DQ ONNX model that the parent
evaluates against the FP32 model on the demo eval set (top-1 agreement, accuracy, SQNR of the
logits). Our Q/DQ model comes from edgepipe.backends.qdq.write_qdq_model; ORT's from
quantize_static(QuantFormat.QDQ, per-channel weights, int8 activations, symmetric activations).
Run by hand:  python benchmarks/calibration_vs_peers.py [--repeat 4]
Writes benchmarks/results/calibration_vs_peers.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
OURS = ["ours:auto", "ours:entropy", "ours:percentile", "ours:mse", "ours:minmax"]
PEERS = ["ort:MinMax", "ort:Entropy", "ort:Percentile"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    base = rss_mb()
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
        extra = {"warnings": result.warnings,
                 "methods_chosen": {m: sum(t.method == m for t in result.tensors.values())
                                    for m in ("entropy", "percentile", "mse", "minmax")}}
    else:
        from ort_peer import ort_quantize_static

        ort_quantize_static(work / "model.onnx", out, len(images), lambda i: {"image": images[i : i + 1]}, name)
        extra = {}
    wall = time.perf_counter() - start
    print(json.dumps({"method": method, "calib": calib_file, "wall_s": wall, "peak_rss_mb": rss_mb(),
                      "rss_growth_mb": rss_mb() - base, "qdq": str(out), **extra}))


def evaluate(work: Path, qdq_path: str) -> dict:
    from edgepipe import graph, quantmath

    data = np.load(ROOT / "calibration_sets/demo/eval.npz")
    images, labels = data["image"], data["labels"]
    reference = graph.make_session(onnx.load(work / "model.onnx"))
    test = graph.make_session(onnx.load(qdq_path))
    ref = np.concatenate([reference.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))])
    out = np.concatenate([test.run(None, {"image": images[i : i + 1]})[0] for i in range(len(images))])
    return {"top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))),
            "top1": float(np.mean(out.argmax(1) == labels)), "fp32_top1": float(np.mean(ref.argmax(1) == labels)),
            "sqnr_db": quantmath.sqnr_db(ref, out)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "WORK", "CALIB"))
    parser.add_argument("--repeat", type=int, default=4, help="size multiplier of the memory-scaling set")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_vs_peers.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.worker[2])
        return
    work = Path(tempfile.mkdtemp(prefix="calib_bench_"))
    report = {"host": {"machine": platform.machine(), "python": platform.python_version()},
              **prepare(work, args.repeat), "runs": []}
    plan = [(m, "calib.npz") for m in OURS + PEERS] + [(m, "calib_large.npz") for m in ("ours:auto", "ort:Percentile")]
    for method, calib in plan:
        proc = subprocess.run([sys.executable, __file__, "--worker", method, str(work), calib],
                              capture_output=True, text=True)
        if proc.returncode:
            report["runs"].append({"method": method, "calib": calib, "error": proc.stderr.strip().splitlines()[-1]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(evaluate(work, row.pop("qdq")))
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    by = {(r["method"], r["calib"]): r for r in report["runs"] if "error" not in r}
    peer = by.get(("ort:Percentile", "calib.npz"))
    if peer:  # ratios vs a peer measured in this same run
        for row in by.values():
            row["wall_vs_ort_percentile"] = row["wall_s"] / peer["wall_s"]
            row["rss_growth_vs_ort_percentile"] = row["rss_growth_mb"] / max(peer["rss_growth_mb"], 1e-6)
    entropy = by.get(("ort:Entropy", "calib.npz"))
    if entropy:  # the speed goal is stated against ORT's Entropy calibrator
        for row in by.values():
            row["wall_vs_ort_entropy"] = row["wall_s"] / entropy["wall_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
