"""Where a jetson build of the PP-OCRv4 recognizer spends its time: wall and CPU time per phase,
edgepipe of an earlier commit (A) vs this checkout (B), alternating fresh processes.

Why: the whole-build figures of calibration_real_models.py say how long, not where; a profiler
(cProfile, py-spy) slows the threaded parts unevenly. Here each phase is a function of the build
wrapped by a timer (wall time, and the process's CPU time of all threads while it runs: the
binning threads, ONNX Runtime's pools and the checks' streams count for the phase that started
them), in a fresh worker process per build that runs `edgepipe build --target jetson
--calib-method auto` exactly as calibration_real_models.py's worker does (same calibration file,
the file as shipped, `--input-shape x:1x3x48x320`). Nested phases are indented under their parent;
a phase missing from one version is left out of that version's rows. Every build's
`model.qdq.onnx`, `calibration.cache` and `calibration.json` are hashed.

Run by hand:  python benchmarks/build_phases.py --before c75b778 [--rounds 3]
Writes benchmarks/results/build_phases.json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration_real_models  # noqa: E402
import real_models  # noqa: E402
from calibration_ab import HASHED, MODEL, export_commit  # noqa: E402
from timing import host_record, load_average, rounds_argument  # noqa: E402

# (label, module, function): the build's stages, then the parts of calibration and of the checks
PHASES = [
    ("prepare_model", "edgepipe.build", "prepare_model"),
    ("  export", "edgepipe.stages.export", "run_export"),
    ("  simplify", "edgepipe.stages.simplify", "run_simplify"),
    ("  fold", "edgepipe.stages.fold", "run_fold"),
    ("calibrate", "edgepipe.calibrate", "calibrate"),
    ("  collect", "edgepipe.calibrate.collector", "collect"),
    ("bias_correction check", "edgepipe.calibrate.bias_correction", "checked_bias_corrections"),
    ("  estimate", "edgepipe.calibrate.bias_correction", "estimate_bias_corrections"),
    ("output_effect check", "edgepipe.calibrate.stability", "output_effect"),
    ("write_outputs (backend + bundle)", "edgepipe.build", "write_outputs"),
    ("  write_bundle", "edgepipe.delivery.bundle", "write_bundle"),
]


def timed_build(work: Path) -> dict:
    """One build in this (fresh) process with every phase of PHASES timed."""
    import numpy  # noqa: F401  the worker's baseline, as calibration_real_models.py's
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    totals: dict[str, list[float]] = {}

    def wrap(label: str, module_name: str, name: str) -> None:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                entry = totals.setdefault(label, [0.0, 0.0, 0])
                entry[0] += time.perf_counter() - wall
                entry[1] += time.process_time() - cpu
                entry[2] += 1

        setattr(module, name, timed)

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for phase in PHASES:
        wrap(*phase)
    row = calibration_real_models.run_ours("auto", work, MODEL)
    row["phases"] = {label: {"wall_s": w, "cpu_s": c, "calls": n} for label, (w, c, n) in totals.items()}
    row["phases"]["whole build (timers included)"] = {"wall_s": time.perf_counter() - start_wall,
                                                      "cpu_s": time.process_time() - start_cpu, "calls": 1}
    bundle = Path(row["qdq"]).parent
    row["sha256"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in HASHED}
    return row


def run_build(tree: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(work)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["worker failed"])[-1])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(row["edgepipe"]).resolve() != tree.resolve():  # another checkout came first on sys.path
        raise RuntimeError(f"the worker built with the edgepipe of {row['edgepipe']}, not of {tree}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--before", help="git commit of version A (the earlier one)")
    parser.add_argument("--rounds", type=rounds_argument, default=3, help="A/B pairs (order alternates)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/build_phases.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.worker:
        row = timed_build(Path(args.worker))
        row["load_avg"] = os.getloadavg()[0]
        print(json.dumps(row))
        return
    if not args.before:
        parser.error("--before is required")
    scratch = Path(tempfile.mkdtemp(prefix="build_phases_"))
    trees = {"A": export_commit(args.before, scratch), "B": ROOT}
    calibration_real_models.prepare(scratch, MODEL)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    report = {"model": MODEL, "file": str(real_models.raw_model_path(MODEL)),
              "A": {"commit": args.before}, "B": {"commit": head.strip()}, "host_start": host_record(), "runs": []}
    if args.note:
        report["note"] = args.note
    for round_index in range(args.rounds):
        for side in (("A", "B") if round_index % 2 == 0 else ("B", "A")):
            row = run_build(trees[side], scratch)
            report["runs"].append({"side": side, "round": round_index, "load_avg": row["load_avg"],
                                   "phases": row["phases"], "sha256": row["sha256"]})
            whole = row["phases"]["whole build (timers included)"]
            print(f"round {round_index} {side}: {whole['wall_s']:.1f} s wall, {whole['cpu_s']:.1f} s CPU, "
                  f"load {row['load_avg']:.2f}", flush=True)
    for side in ("A", "B"):
        rows = [r for r in report["runs"] if r["side"] == side]
        labels = [label for label, _, _ in PHASES] + ["whole build (timers included)"]
        report[side]["median"] = {label: {key: statistics.median(r["phases"][label][key] for r in rows)
                                          for key in ("wall_s", "cpu_s")}
                                  for label in labels if all(label in r["phases"] for r in rows)}
        report[side]["load_avg"] = [r["load_avg"] for r in rows]
    report["identical_bundles"] = len({json.dumps(r["sha256"], sort_keys=True) for r in report["runs"]}) == 1
    report["host_end"] = {"loadavg": load_average()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'phase':34s} {'A wall':>7s} {'A CPU':>7s} {'B wall':>7s} {'B CPU':>7s}")
    for label, a in report["A"]["median"].items():
        b = report["B"]["median"].get(label, {"wall_s": float("nan"), "cpu_s": float("nan")})
        print(f"{label:34s} {a['wall_s']:7.2f} {a['cpu_s']:7.2f} {b['wall_s']:7.2f} {b['cpu_s']:7.2f}")
    print(f"identical bundles: {report['identical_bundles']}; wrote {out}")


if __name__ == "__main__":
    main()
