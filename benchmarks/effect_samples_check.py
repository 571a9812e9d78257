"""Does the output-effect check (calibration stability) warn on the same builds, and are the built
files the same, with edgepipe of an earlier commit (A) and this checkout (B)?

Why: the check's samples are a trade between time and how well a few samples tell a round's
thresholds apart from the chosen ones. Changing them must leave the warning on the same builds
and every bundle file (accuracy) as it was. Each build is `edgepipe build --target jetson
--no-host-report --json` of a corpus model as shipped, in a fresh process with the edgepipe of
A or B first on PYTHONPATH, on two calibration sets per model: the corpus's rendered inputs
(`iid`) and the same inputs with a contrast that changes from round to round (`drifting`: the
four contiguous rounds scaled by 0.3, 1, 1, 3, a set sorted by capture conditions, which the
check exists to flag), each with 64 samples (the bias check holds half out) and 16 (it does not).
Recorded per build: the summary's `calibration_stability` (warn, drop, SQNRs, samples), the
warning lines, the sha256 of model.qdq.onnx, calibration.json and calibration.cache, wall time.

Run by hand:  python benchmarks/effect_samples_check.py --before 7193c1b [--models ocr_rec,ocr_det,ocr_cls,yolo_det]
Writes benchmarks/results/effect_samples_check.json. Round 9 (calspeed5) kept two runs:
`effect_samples_check_8_samples.json` (8 samples from the bias check's held-out ones) and
`effect_samples_check_16_held_out.json` (16 from them); both moved the warning on some builds
and were not kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402
from calibration_ab import HASHED, export_commit  # noqa: E402
from timing import host_record  # noqa: E402

SEED = 1
SCALES = (0.3, 1.0, 1.0, 3.0)  # per contiguous round (calibration.rounds: 4)


def calibration_sets(name: str, work: Path, count: int) -> dict[str, Path]:
    spec = real_models.MODELS[name]
    images = np.asarray(real_models.make_inputs(name, count, SEED)["x"], np.float32)
    scale = np.repeat(SCALES, -(-count // len(SCALES)))[:count].astype(np.float32)
    paths = {}
    for kind, data in (("iid", images), ("drifting", images * scale.reshape((-1,) + (1,) * (images.ndim - 1)))):
        path = work / f"{name}_{kind}_{count}.npz"
        np.savez(path, **{spec.input_name: data})
        paths[kind] = path
    return paths


def build(tree: Path, name: str, calib: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-m", "edgepipe", "build", "--model", str(real_models.raw_model_path(name)),
            "--target", "jetson", "--calib", str(calib), *real_models.input_shape_args(name), "--no-host-report",
            "--json", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"exit_code": proc.returncode, "error": (proc.stderr.strip().splitlines() or [""])[-1]}
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"exit_code": 0, "wall_s": wall, "calibration_stability": summary.get("calibration_stability"),
            "warnings": [w for w in summary.get("warnings", []) if "calibration rounds" in str(w)],
            "sha256": {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in HASHED}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git commit of version A")
    parser.add_argument("--models", default="ocr_rec,ocr_det,ocr_cls,yolo_det")
    parser.add_argument("--counts", default="64,16")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/effect_samples_check.json"))
    parser.add_argument("--note", default="")
    parser.add_argument("--sides", default="A,B", help="which versions to build (A,B)")
    parser.add_argument("--reuse", default=None, help="an earlier results file whose builds of a side not built now "
                                                      "are taken (the calibration sets are seeded: the same data)")
    args = parser.parse_args()
    sides = args.sides.split(",")
    earlier = {}
    if args.reuse:
        for old in json.loads(Path(args.reuse).read_text())["builds"]:
            earlier[(old["model"], old["samples"], old["set"])] = old
    work = Path(tempfile.mkdtemp(prefix="effect_samples_"))
    trees = {"A": export_commit(args.before, work), "B": ROOT}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {"what": __doc__.split("\n\n")[0], "before": args.before, "after": head.strip(), "note": args.note,
              "host_start": host_record(), "builds": []}
    for name in args.models.split(","):
        for count in map(int, args.counts.split(",")):
            for kind, calib in calibration_sets(name, work, count).items():
                row = {"model": name, "samples": count, "set": kind}
                for side, tree in trees.items():
                    if side not in sides:
                        row[side] = earlier.get((name, count, kind), {}).get(side, {})
                        continue
                    out = Path(tempfile.mkdtemp(prefix=f"{name}_{kind}_{side}_", dir=work)) / "bundle"
                    row[side] = build(tree, name, calib, out)
                a, b = row["A"], row["B"]
                row["same_files"] = a.get("sha256") == b.get("sha256") and "sha256" in a
                warn = [(s.get("calibration_stability") or {}).get("warn") for s in (a, b)]
                row["same_warning"] = warn[0] == warn[1]
                print(json.dumps({k: row[k] for k in ("model", "samples", "set", "same_files", "same_warning")}
                                 | {"warn": warn}), flush=True)
                result["builds"].append(row)
    result["host_end"] = host_record()
    result["all_same_files"] = all(r["same_files"] for r in result["builds"])
    result["all_same_warning"] = all(r["same_warning"] for r in result["builds"])
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
