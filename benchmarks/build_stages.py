"""End-to-end `edgepipe build` time per stage, for the demo and for a larger CNN.

Why: the stage table a user sees after each build is the first place a slow stage shows up; this
records it per target, cold (empty stage cache) and warm (cache from another target), so a
regression in one stage is visible. The larger model is a ResNet-style CNN with random weights
at 1x3x128x128 (about 2.8 M parameters), calibrated on 100 random inputs.

Run by hand:  python benchmarks/build_stages.py [--targets arm-cpu jetson]
Writes benchmarks/results/build_stages.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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
    completed = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if completed.returncode != 0:
        return {"target": target, "error": completed.stderr.strip().splitlines()[-1:]}
    summary = json.loads(completed.stdout)
    return {"target": target, "stages": {s["name"]: {"seconds": round(s["seconds"], 3), "cached": s["cached"]}
                                          for s in summary["stages"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["arm-cpu", "jetson"])
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo_dir, large_dir = tmp / "demo", tmp / "large"
        demo_dir.mkdir()
        large_dir.mkdir()
        larger_model(large_dir / "resnet128.onnx")
        np.savez(large_dir / "calib.npz", image=np.random.default_rng(0).standard_normal((100, 3, 128, 128)).astype(np.float32))
        for name, workdir, extra in (("demo", demo_dir, []),
                                     ("resnet128", large_dir, ["--model", "resnet128.onnx", "--calib", "calib.npz"])):
            for target in args.targets:
                row = build(workdir, target, extra)
                row["model"] = name
                runs.append(row)
    stages = ["export", "simplify", "fold", "calibrate", "backend", "bundle", "report"]
    print(f"{'model':<10}{'target':<10}" + "".join(f"{s:>11}" for s in stages))
    for row in runs:
        if "error" in row:
            print(f"{row['model']:<10}{row['target']:<10} failed: {row['error']}")
            continue
        cells = []
        for stage in stages:
            entry = row["stages"].get(stage)
            cells.append("-" if entry is None else f"{entry['seconds']:.2f}{'c' if entry['cached'] else ''}")
        print(f"{row['model']:<10}{row['target']:<10}" + "".join(f"{c:>11}" for c in cells))
    print("(seconds; 'c' = reused from the stage cache)")
    out = ROOT / "benchmarks" / "results" / "build_stages.json"
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                               "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
