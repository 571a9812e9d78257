"""Where one jetson build of the PP-OCRv4 recognizer spends its time, down to the checks' parts:
wall time, process CPU time (all threads) and the calling thread's own CPU time per function.

Why: build_phases.py compares two commits phase by phase; this names the functions inside the
checks (the bias estimate's local-error model, its per-channel means, the held-out int8 runs,
the output-effect check, session builds, weight folds) and counts ONNX Runtime runs, in one
fresh build as calibration_real_models.py's worker runs it (the file as shipped, 64 rendered
lines, `--calib-method auto`). Process CPU of a function that runs while other threads work
counts their time too; the thread's own CPU (`thread_s`) does not, and for functions called on
worker threads (session runs, channel means) it sums their own time. Timers nest: the rows
overlap, they do not add up to the build.

Run by hand:  python benchmarks/build_phase_timers.py
Writes benchmarks/results/build_phase_timers.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration_real_models  # noqa: E402
from calibration_ab import MODEL  # noqa: E402
from timing import host_record  # noqa: E402

TIMED = [
    ("prepare_model", "edgepipe.build", "prepare_model"),
    ("calibrate", "edgepipe.calibrate", "calibrate"),
    ("  collect", "edgepipe.calibrate.collector", "collect"),
    ("    extremes (min, max, NaN check)", "edgepipe.calibrate.collector", "_extremes"),
    ("  range choice, per tensor", "edgepipe.calibrate.policy", "choose"),
    ("  per-round thresholds, per tensor", "edgepipe.calibrate.stability", "round_stability"),
    ("bias-correction check", "edgepipe.calibrate.bias_correction", "checked_bias_corrections"),
    ("  estimate", "edgepipe.calibrate.bias_correction", "estimate_bias_corrections"),
    ("    per-channel means", "edgepipe.calibrate.bias_correction", "_channel_means"),
    ("  held-out int8 runs (two states)", "edgepipe.targets", "Target.int8_outputs"),
    ("  held-out SQNRs", "edgepipe.calibrate.bias_correction", "_output_sqnrs"),
    ("output-effect check", "edgepipe.calibrate.stability", "output_effect"),
    ("Q/DQ simulation builds", "edgepipe.backends.qdq", "simulated_int8_model"),
    ("weight folds", "edgepipe.graph", "fold_constant_weights"),
    ("session builds", "edgepipe.graph", "make_session"),
    ("write_outputs (backend + bundle)", "edgepipe.build", "write_outputs"),
]


def timed_build(work: Path) -> dict:
    for baseline in ("numpy", "onnx"):  # the worker's baseline, as calibration_real_models.py's
        importlib.import_module(baseline)
    import onnxruntime

    totals: dict[str, list] = {}
    lock = threading.Lock()

    def record(label, wall, cpu, thread):
        with lock:
            entry = totals.setdefault(label, [0.0, 0.0, 0.0, 0])
            entry[0] += wall
            entry[1] += cpu
            entry[2] += thread
            entry[3] += 1

    def wrap(label: str, module_name: str, name: str) -> None:
        owner = importlib.import_module(module_name)
        if "." in name:
            cls, name = name.split(".")
            owner = getattr(owner, cls)
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                record(label, time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - thread)

        setattr(owner, name, timed)

    for row in TIMED:
        wrap(*row)
    run = onnxruntime.InferenceSession.run

    def counted_run(self, *args, **kwargs):
        wall, thread = time.perf_counter(), time.thread_time()
        try:
            return run(self, *args, **kwargs)
        finally:
            record("ONNX Runtime session.run (calling thread)", time.perf_counter() - wall, 0.0,
                   time.thread_time() - thread)

    onnxruntime.InferenceSession.run = counted_run
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    row = calibration_real_models.run_ours("auto", work, MODEL)
    whole = {"wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu}
    return {"load_avg_end": os.getloadavg()[0], "whole build (timers included)": whole,
            "stages_s": row["stages_s"], "peak_mb": row["peak_mb"],
            "timers": {label: {"wall_s": w, "cpu_s": c, "thread_s": t, "calls": n}
                       for label, (w, c, t, n) in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/build_phase_timers.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    out = Path(args.out).resolve()  # the worker changes into its project folder
    work = Path(tempfile.mkdtemp(prefix="phase_timers_"))
    calibration_real_models.prepare(work, MODEL)
    host = host_record()
    row = timed_build(work)
    report = {"model": MODEL, "what": __doc__.split("\n\n")[0], "note": args.note, "host_start": host, **row}
    out.write_text(json.dumps(report, indent=1) + "\n")
    for label, t in row["timers"].items():
        print(f"{label:45s} wall {t['wall_s']:7.2f}  cpu {t['cpu_s']:7.2f}  thread {t['thread_s']:7.2f}  calls {t['calls']}")


if __name__ == "__main__":
    main()
