"""A/B of the whole jetson build of the PP-OCRv4 recognizer: edgepipe of an earlier commit vs this
checkout, alternating fresh processes on the same host state, and whether the bundles are equal.

Why: the host is shared; a before/after pair run minutes apart compares two host loads as much
as two versions. Here the two versions alternate (A B, B A, A B, ...) so both see the same load,
each build is a fresh worker process of benchmarks/calibration_real_models.py (the same harness:
`edgepipe build --target jetson --calib-method auto`, wall and CPU time of the whole build from
importing edgepipe, the worker's own peak VmHWM), and the medians over rounds are compared. The
earlier version is a `git archive` of its commit, imported first through PYTHONPATH. Every run's
calibration.json, model.qdq.onnx and calibration.cache are hashed: a speed-up that changes them
is reported as such (`identical_bundles`).

Run by hand:  python benchmarks/calibration_ab.py --before 9e82cad [--after COMMIT] [--rounds 4]
Writes benchmarks/results/calibration_speed_ab.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration_real_models  # noqa: E402
from timing import host_record, load_average, rounds_argument  # noqa: E402

MODEL = "ocr_rec"
HASHED = ("calibration.json", "model.qdq.onnx", "calibration.cache")
KEYS = ("build_wall_s", "build_cpu_s", "wall_s", "peak_mb")


def export_commit(commit: str, into: Path) -> Path:
    """`git archive` of `commit` with the package folders the wheel maps (pyproject package-dir)."""
    tree = into / f"edgepipe-{commit}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for package, folder in (("edgepipe_targets", "targets"), ("edgepipe_templates", "templates"),
                            ("edgepipe_calibration_sets", "calibration_sets")):
        (tree / package).symlink_to(folder)
    return tree


def run_build(tree: Path, work: Path) -> dict:
    """One fresh worker building the recognizer with the edgepipe found first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/calibration_real_models.py"), "--worker",
                           "ours:auto", str(work), MODEL], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["worker failed"])[-1])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(row["edgepipe"]).resolve() != tree.resolve():  # another checkout came first on sys.path
        raise RuntimeError(f"the worker built with the edgepipe of {row['edgepipe']}, not of {tree}")
    bundle = Path(row["qdq"]).parent
    hashes = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in HASHED}
    return {**{key: row[key] for key in KEYS}, "load_avg": row["load_avg"], "stages_s": row["stages_s"],
            "sha256": hashes, "edgepipe": str(tree)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git commit of version A (the earlier one)")
    parser.add_argument("--after", default=None, help="git commit of version B (default: this checkout as it is)")
    parser.add_argument("--rounds", type=rounds_argument, default=4, help="A/B pairs (order alternates)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_speed_ab.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="calib_ab_"))
    trees = {"A": export_commit(args.before, scratch), "B": export_commit(args.after, scratch) if args.after else ROOT}
    calibration_real_models.prepare(scratch, MODEL)
    def short(commit: str) -> str:
        return subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()

    head = short("HEAD")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    report = {"model": MODEL, "what": "whole `edgepipe build --target jetson --calib-method auto` (worker of "
              "calibration_real_models.py), A and B alternating in fresh processes",
              "A": {"commit": short(args.before)},
              "B": {"commit": short(args.after) if args.after else head + ("+uncommitted" if dirty else "")},
              "host_start": host_record(), "runs": []}
    if args.note:
        report["note"] = args.note
    for round_index in range(args.rounds):
        order = ("A", "B") if round_index % 2 == 0 else ("B", "A")
        for side in order:
            row = run_build(trees[side], scratch)
            report["runs"].append({"side": side, "round": round_index, **row})
            print(f"round {round_index} {side}: build {row['build_wall_s']:.1f} s wall, {row['build_cpu_s']:.1f} s "
                  f"CPU, peak {row['peak_mb']:.0f} MB, load {row['load_avg']:.2f}", flush=True)
    for side in ("A", "B"):
        rows = [r for r in report["runs"] if r["side"] == side]
        report[side].update({key: statistics.median(r[key] for r in rows) for key in KEYS})
        report[side]["load_avg"] = [r["load_avg"] for r in rows]
    report["B_over_A"] = {key: report["B"][key] / report["A"][key] for key in ("build_wall_s", "build_cpu_s", "wall_s")}
    hashes = {json.dumps(r["sha256"], sort_keys=True) for r in report["runs"]}
    report["identical_bundles"] = len(hashes) == 1
    report["host_end"] = {"loadavg": load_average()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"B/A: wall {report['B_over_A']['build_wall_s']:.3f}, CPU {report['B_over_A']['build_cpu_s']:.3f}; "
          f"identical bundles: {report['identical_bundles']}; wrote {out}")


if __name__ == "__main__":
    main()
