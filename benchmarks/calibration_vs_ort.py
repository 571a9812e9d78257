"""The whole jetson build of the PP-OCRv4 recognizer vs ONNX Runtime's quantize_static Entropy,
interleaved: ours, ORT, ours, ORT, ... in fresh processes, with the load average of every run.

Why: on a shared host one tool's runs done back to back meet one load and the other tool's runs
another, and ORT's 14 GB working set makes its own runs spread more than twofold. Alternating the
two puts both under the same load, and the result reports the medians (wall and CPU time), the
median-vs-median and min-vs-min ratios (each tool's best run: the least disturbed) and every run
with its load, so a reader sees how far the ratio moves with the host.

Each run is a worker of calibration_real_models.py (the same harness as its tables): ours is
`edgepipe build --target jetson --calib-method auto` from importing edgepipe to the written bundle,
ORT is `quantize_static` Entropy after importing onnxruntime (ort_peer.py); both on the file as
shipped and the same 64 calibration lines; CPU time is user + system of all threads; memory is
each worker's own peak (VmHWM).

A run that fails (ORT's worker killed for memory on a busy host) is recorded as failed and left
out of the medians.

Run by hand:  python benchmarks/calibration_vs_ort.py [--rounds 5]
Writes benchmarks/results/calibration_speed_vs_ort.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration_real_models  # noqa: E402
from calibration_ab import MODEL  # noqa: E402
from timing import host_record, load_average, rounds_argument  # noqa: E402

SIDES = {"ours": "ours:auto", "ort": "ort:Entropy"}


def run_worker(method: str, work: Path) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/calibration_real_models.py"), "--worker", method,
                           str(work), MODEL], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{method}: " + (proc.stderr.strip().splitlines() or ["worker failed"])[-1])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if method.startswith("ours"):  # the whole build (calibration_real_models.run_ours)
        return {"wall_s": row["build_wall_s"], "cpu_s": row["build_cpu_s"], "peak_mb": row["peak_mb"],
                "load_avg": row["load_avg"], "load_after": load_average()[0]}
    return {key: row[key] for key in ("wall_s", "cpu_s", "peak_mb", "load_avg")} | {"load_after": load_average()[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=rounds_argument, default=5, help="ours/ORT pairs (ours first in each)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_speed_vs_ort.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calib_vs_ort_"))
    calibration_real_models.prepare(work, MODEL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    report = {"model": MODEL, "what": "ours = whole `edgepipe build --target jetson --calib-method auto`, ort = "
              "quantize_static CalibrationMethod.Entropy; workers of calibration_real_models.py, interleaved "
              "ours, ort, ours, ort, ... (load_avg: 1-minute load as the run starts, load_after: as it ends)",
              "commit": commit.stdout.strip() + ("+uncommitted" if dirty else ""), "host_start": host_record(),
              "runs": []}
    if args.note:
        report["note"] = args.note
    for round_index in range(args.rounds):
        for side, method in SIDES.items():
            try:
                row = run_worker(method, work)
            except RuntimeError as exc:  # e.g. ORT's 14 GB worker killed by the kernel on a shared host
                report["runs"].append({"side": side, "round": round_index, "failed": str(exc)[-300:],
                                       "load_after": load_average()[0]})
                print(f"round {round_index} {side}: failed ({exc})", flush=True)
                continue
            report["runs"].append({"side": side, "round": round_index, **row})
            print(f"round {round_index} {side}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU, "
                  f"peak {row['peak_mb']:.0f} MB, load {row['load_avg']:.2f} -> {row['load_after']:.2f}", flush=True)
    for side in SIDES:
        rows = [r for r in report["runs"] if r["side"] == side and "failed" not in r]
        if not rows:
            raise SystemExit(f"every {side} run failed")
        report[side] = {**{f"median_{key}": statistics.median(r[key] for r in rows) for key in ("wall_s", "cpu_s", "peak_mb")},
                        **{f"min_{key}": min(r[key] for r in rows) for key in ("wall_s", "cpu_s")},
                        **{f"max_{key}": max(r[key] for r in rows) for key in ("wall_s", "cpu_s", "peak_mb")}}
    ours, ort = report["ours"], report["ort"]
    report["ours_over_ort"] = {
        "median_wall": ours["median_wall_s"] / ort["median_wall_s"], "median_cpu": ours["median_cpu_s"] / ort["median_cpu_s"],
        "min_wall": ours["min_wall_s"] / ort["min_wall_s"], "min_cpu": ours["min_cpu_s"] / ort["min_cpu_s"],
        # the least favourable pairing: our slowest run against ORT's fastest
        "worst_wall": ours["max_wall_s"] / ort["min_wall_s"], "worst_cpu": ours["max_cpu_s"] / ort["min_cpu_s"]}
    report["goal"] = {"limit": 1 / 3, "peak_limit_mb": 1024,
                      **{f"met_{key}": value <= 1 / 3 for key, value in report["ours_over_ort"].items()},
                      "met_peak": ours["max_peak_mb"] < 1024}
    report["host_end"] = {"loadavg": load_average()}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    ratios = ", ".join(f"{k} {v:.3f}" for k, v in report["ours_over_ort"].items())
    print(f"ours/ORT: {ratios}; wrote {args.out}")


if __name__ == "__main__":
    main()
