"""End-to-end `edgepipe build` time per stage, for the demo and for a larger CNN.

Why: the stage table a user sees after each build is the first place a slow stage shows up; this
records it per target, cold (empty stage cache) and warm (cache from another target), so a
regression in one stage is visible. The larger model is a ResNet-style CNN with random weights
at 1x3x128x128 (about 2.8 M parameters), calibrated on 100 random inputs. Each build is a fresh
`python -m edgepipe build` process; the whole sequence (cold first target, warm second) runs
`--repeats` times (>= 3) in fresh project folders, and every stage time is the median over the
repeats with its spread (benchmarks/timing.py); CPU features and the load average are stored.

Run by hand:  python benchmarks/build_stages.py [--targets arm-cpu jetson] [--repeats 3]
Writes benchmarks/results/build_stages.json.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import host_record, load_average, rounds_argument, summary  # noqa: E402

STAGES = ["export", "simplify", "fold", "calibrate", "backend", "bundle", "report"]


def larger_model(path: Path) -> None:
    import onnx
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))

        def forward(self, x):
            return torch.relu(x + self.b(self.a(x)))

    torch.manual_seed(0)
    layers, channels = [nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU()], 32
    for out in (64, 128, 256):
        layers += [Block(channels), nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    net = nn.Sequential(*layers, Block(channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 100)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 128, 128), buffer, dynamo=False, input_names=["image"],
                      output_names=["logits"], opset_version=17, do_constant_folding=False)
    onnx.save(onnx.load_from_string(buffer.getvalue()), str(path))


def build(workdir: Path, target: str, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "edgepipe", "build", "--target", target, "--json", *extra]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1:]}
    summary_json = json.loads(completed.stdout)
    return {"wall_s": wall_s, "stages": {s["name"]: (s["seconds"], s["cached"]) for s in summary_json["stages"]}}


def medians(runs: list[dict]) -> dict:
    """One (model, target) row from its repeats: each stage's median seconds, runs and spread."""
    failed = [run["error"] for run in runs if "error" in run]
    if failed:
        return {"error": failed[0]}
    row = {"wall_s": summary([run["wall_s"] for run in runs], 3), "stages": {}}
    for stage in runs[0]["stages"]:
        seconds = [run["stages"][stage][0] for run in runs]
        cached = {run["stages"][stage][1] for run in runs}
        entry = summary(seconds, 3)
        row["stages"][stage] = {"seconds": entry.pop("median"), **entry, "cached": cached == {True}}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["arm-cpu", "jetson"])
    parser.add_argument("--repeats", type=rounds_argument, default=3,
                        help="fresh repetitions of every build (median), >= 3")
    args = parser.parse_args()
    host = host_record()
    cases = [("demo", []), ("resnet128", ["--model", "resnet128.onnx", "--calib", "calib.npz"])]
    builds: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs"
        inputs.mkdir()
        larger_model(inputs / "resnet128.onnx")
        images = np.random.default_rng(0).standard_normal((100, 3, 128, 128)).astype(np.float32)
        np.savez(inputs / "calib.npz", image=images)
        for repeat in range(args.repeats):
            for name, extra in cases:
                workdir = tmp / f"{name}-{repeat}"  # a fresh project folder: the first target builds cold
                if extra:
                    shutil.copytree(inputs, workdir)
                else:
                    workdir.mkdir()
                for target in args.targets:
                    builds.setdefault((name, target), []).append(build(workdir, target, extra))
                shutil.rmtree(workdir)
    runs = [{"model": name, "target": target, "repeats": len(rows), **medians(rows)}
            for (name, target), rows in builds.items()]
    print(f"{'model':<10}{'target':<10}" + "".join(f"{s:>11}" for s in STAGES) + f"{'wall':>8}")
    for row in runs:
        if "error" in row:
            print(f"{row['model']:<10}{row['target']:<10} failed: {row['error']}")
            continue
        cells = []
        for stage in STAGES:
            entry = row["stages"].get(stage)
            cells.append("-" if entry is None else f"{entry['seconds']:.2f}{'c' if entry['cached'] else ''}")
        print(f"{row['model']:<10}{row['target']:<10}" + "".join(f"{c:>11}" for c in cells)
              + f"{row['wall_s']['median']:>8.2f}")
    print(f"(median of {args.repeats} fresh builds, seconds; 'c' = reused from the stage cache)")
    out = ROOT / "benchmarks" / "results" / "build_stages.json"
    out.write_text(json.dumps({"host": host, "loadavg_end": load_average(), "repeats": args.repeats,
                               "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
