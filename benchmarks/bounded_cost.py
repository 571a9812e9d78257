"""What one `edgepipe build` costs as the calibration set grows: peak memory, bundle size, time.

Why: the build must not grow with the data except for the calibration work itself (time linear
in the samples). Peak memory, the bundle (what a user copies to a 4 GB board) and everything but
calibration must stay flat. Each build is the CLI on the model file as shipped, in its own child
process, started from a small fresh intermediate Python process that reports
`getrusage(RUSAGE_CHILDREN).ru_maxrss`: Linux carries a parent's high-water mark into a forked
and exec'd child, so measuring from this (large) benchmark process would add its own peak as a
floor. `--self-check` shows the method tells a 100 MB allocation from a 1 GB one while this
process holds 1 GB itself.

Model: the PP-OCRv4 recognizer (benchmarks/real_models.py, input [1, 3, 48, 320], output
[1, 40, 6625]) with `--input-shape x:1x3x48x320`; data: rendered text lines saved as one
uncompressed .npz (what numpy.savez writes), no --eval (so the build holds out part of the
calibration set). If a model does not build, the next one in --models is measured and the
failure is recorded.

Run by hand:  nice python benchmarks/bounded_cost.py [--sizes 100 1000 4000] [--target jetson]
Writes benchmarks/results/bounded_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "bounded_cost.json"
WORK = Path(os.environ.get("EDGEPIPE_BENCH_WORK", "/tmp/edgepipe-bounded-cost"))
GOALS = {"peak_rss_ratio": 1.3, "bundle_ratio": 1.3, "time_ratio": 11.0, "max_peak_rss_mb": 2048}

# Runs one command, reports its own peak RSS (the largest of its process tree, this process excluded).
MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": done.returncode, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
                  "stdout": done.stdout[-20000:], "stderr": done.stderr[-3000:]}))
"""


def measure(command: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    completed = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True,
                               env=env, cwd=cwd, check=True)
    return json.loads(completed.stdout)


def self_check() -> dict:
    """Peak of a child allocating 100 MB and 1 GB, measured while this process holds 1 GB."""
    ballast = np.ones(1 << 27)  # 1 GiB held by the parent: must not show up in the children
    allocate = "import numpy as np; a = np.ones({n} << 17); print(a.sum())"
    small = measure([sys.executable, "-c", allocate.format(n=100)])["peak_rss_mb"]
    large = measure([sys.executable, "-c", allocate.format(n=1000)])["peak_rss_mb"]
    del ballast
    ok = 90 < large - small < 1000 and small < 300
    return {"child_100mb_peak_mb": round(small, 1), "child_1000mb_peak_mb": round(large, 1),
            "parent_holds_mb": 1024, "distinguishes": ok}


def write_npz(path: Path, model: str, count: int, seed: int = 0, chunk: int = 100) -> None:
    """An uncompressed .npz with one input 'x' [count, ...], written chunk by chunk (np.load reads it)."""
    from real_models import make_inputs

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    first = make_inputs(model, 1, seed)["x"].astype(np.float32)
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (count, *first.shape[1:])}
    tmp = path.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        info = zipfile.ZipInfo("x.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.file_size = first.nbytes * count + 128
        with archive.open(info, "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, count, chunk):
                block = make_inputs(model, min(chunk, count - start), seed + 1 + start)["x"].astype(np.float32)
                member.write(np.ascontiguousarray(block).tobytes())
    tmp.replace(path)


def bundle_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def build_once(model: str, count: int, target: str) -> dict:
    from real_models import MODELS, raw_model_path

    spec = MODELS[model]
    data = WORK / f"{model}_{count}.npz"
    write_npz(data, model, count)
    out = WORK / f"bundle_{model}_{count}"
    cwd = WORK / f"run_{model}_{count}"  # a fresh stage cache (build/.cache) per run: nothing cached
    for folder in (out, cwd):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    cwd.mkdir(parents=True)
    shape = "x".join(str(d) for d in spec.shape)
    command = [sys.executable, "-m", "edgepipe", "build", "--model", str(raw_model_path(model)),
               "--target", target, "--calib", str(data), "--input-shape", f"x:{shape}",
               "--out", str(out), "--no-host-report", "--json"]
    run = measure(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd)
    row = {"model": model, "samples": count, "data_mb": round(data.stat().st_size / 2**20, 1),
           "rc": run["rc"], "seconds": round(run["seconds"], 1), "peak_rss_mb": round(run["peak_rss_mb"], 1)}
    if run["rc"] != 0:
        row["error"] = (run["stderr"].strip().splitlines() or ["?"])[-1]
        return row
    summary = json.loads(run["stdout"])
    manifest = json.loads((out / "manifest.json").read_text())
    row.update({
        "bundle_mb": round(bundle_bytes(out) / 2**20, 2),
        "eval_npz_mb": round((out / "eval" / "eval.npz").stat().st_size / 2**20, 2)
        if (out / "eval" / "eval.npz").exists() else 0.0,
        "eval": {k: manifest["eval"].get(k) for k in ("source", "samples", "available", "bytes_per_sample")}
        if manifest.get("eval") else None,
        "stage_seconds": {s["name"]: round(s["seconds"], 1) for s in summary["stages"]},
    })
    subprocess.run(["rm", "-rf", str(out), str(cwd)], check=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--models", nargs="+", default=["ocr_rec", "ocr_det"])
    parser.add_argument("--target", default="jetson")
    parser.add_argument("--self-check", action="store_true", help="only check the RSS method")
    args = parser.parse_args()

    check = self_check()
    print(f"RSS method: child 100 MB -> {check['child_100mb_peak_mb']} MB, child 1 GB -> "
          f"{check['child_1000mb_peak_mb']} MB, parent holding 1 GB (distinguishes: {check['distinguishes']})")
    if args.self_check:
        return
    skipped, rows = [], []
    for model in args.models:
        rows = []
        for count in args.sizes:
            row = build_once(model, count, args.target)
            print(json.dumps(row))
            rows.append(row)
            if row["rc"] != 0:
                break
        if rows and all(r["rc"] == 0 for r in rows):
            break
        skipped.append({"model": model, "error": rows[-1].get("error"), "samples": rows[-1]["samples"]})
    ok = [r for r in rows if r["rc"] == 0]
    base = ok[0] if ok else None
    ratios = {}
    for row in ok[1:]:
        ratios[f"{base['samples']}->{row['samples']}"] = {
            "peak_rss": round(row["peak_rss_mb"] / base["peak_rss_mb"], 3),
            "bundle": round(row["bundle_mb"] / base["bundle_mb"], 3),
            "time": round(row["seconds"] / base["seconds"], 2),
        }
    for name, ratio in ratios.items():
        print(f"{name} samples: peak RSS x{ratio['peak_rss']}, bundle x{ratio['bundle']}, time x{ratio['time']}")
    result = {
        "benchmark": "bounded_cost",
        "command": "python benchmarks/bounded_cost.py " + " ".join(sys.argv[1:]),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "target": args.target,
        "rss_method": check,
        "goals": GOALS,
        "skipped_models": skipped,
        "runs": rows,
        "ratios": ratios,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
