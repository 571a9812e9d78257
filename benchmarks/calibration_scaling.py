"""How calibration time and memory grow with the number of calibration samples.

Why: a calibrator that keeps activations (ONNX Runtime's entropy/percentile calibrators do) needs
memory proportional to samples x activation size; ours streams into fixed-size histograms, so
its peak memory must stay flat from 10 to 1000 samples. Each row is the median of --runs fresh
subprocesses (child_process.py): the child's own peak memory (VmHWM; ru_maxrss would start at the
parent's), its growth over the peak right before calibration starts, and wall time.
The peer (ORT quantize_static, Percentile) runs on the same model and data up to --peer-max
samples (its memory is the point; beyond that it would take many GB on this 24 GB host).

Run by hand:  python benchmarks/calibration_scaling.py [--sizes 10 100 1000] [--peer-max 300] [--runs 3]
Writes benchmarks/results/calibration_scaling.json.
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

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # input H = W


def make_model(path: Path) -> None:
    """A plain 6-conv CNN at 64x64 (random weights): big activations, cheap to run."""
    import onnx
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, channels = [], 3
    for out in (32, 32, 48, 48, 64, 64):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
        channels = out
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, SIZE, SIZE), buffer, dynamo=False, input_names=["x"],
                      output_names=["y"], opset_version=17)
    onnx.save(onnx.load_from_string(buffer.getvalue()), str(path))


sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_process import own_peak_mb, run_child  # noqa: E402


def child(kind: str, model_path: str, samples: int) -> dict:
    import onnx

    rng = np.random.default_rng(1)
    # generated on the fly per sample: the data itself must not dominate memory
    def sample(i):
        return {"x": np.random.default_rng(i).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)}

    if kind == "ours":
        from edgepipe.calibrate import calibrate

        class Data:
            names = ["x"]
            labels = None

            def __len__(self):
                return samples

            def sample(self, i):
                return sample(i)

        model = onnx.load(model_path)
        before = own_peak_mb()
        start = time.perf_counter()
        result = calibrate(model, Data(), {"method": "auto"})
        wall = time.perf_counter() - start
        tensors = len(result.tensors)
    else:
        from ort_peer import ort_quantize_static

        before = own_peak_mb()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ort_quantize_static(model_path, Path(tmp) / "q.onnx", samples, sample, "Percentile")
        wall = time.perf_counter() - start
        tensors = None
    del rng
    peak = own_peak_mb()
    return {"kind": kind, "samples": samples, "wall_s": round(wall, 3), "peak_mb": round(peak, 1),
            "growth_mb": round(peak - before, 1), "tensors": tensors}


def measure(kind: str, model_path: Path, samples: int, runs: int) -> dict:
    row = run_child([__file__, "--child", kind, str(model_path), str(samples)], repeats=runs)
    return {"kind": kind, "samples": samples, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--peer-max", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per row (median reported)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, model_path, samples = args.child
        print(json.dumps(child(kind, model_path, int(samples))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "cnn64.onnx"
        make_model(model_path)
        for samples in args.sizes:
            rows.append(measure("ours", model_path, samples, args.runs))
            if samples <= args.peer_max:
                rows.append(measure("ort-percentile", model_path, samples, args.runs))
    print(f"{'calibrator':<16}{'samples':>8}{'wall s':>9}{'growth MB':>11}{'own peak MB':>13}")
    for row in rows:
        if "error" in row:
            print(f"{row['kind']:<16}{row['samples']:>8}  failed: {row['error']}")
            continue
        print(f"{row['kind']:<16}{row['samples']:>8}{row['wall_s']:>9.2f}{row['growth_mb']:>11.1f}{row['peak_mb']:>13.1f}")
    ours = [r for r in rows if r["kind"] == "ours" and "error" not in r]
    if len(ours) >= 2:
        print(f"ours: growth at {ours[-1]['samples']} samples minus at {ours[0]['samples']}: "
              f"{ours[-1]['growth_mb'] - ours[0]['growth_mb']:+.1f} MB")
    out = ROOT / "benchmarks" / "results" / "calibration_scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count()},
                               "model": f"6-conv CNN, input 1x3x{SIZE}x{SIZE}", "runs_per_row": args.runs,
                               "memory": "peak_mb = the child's own VmHWM; growth_mb = VmHWM after minus before",
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
