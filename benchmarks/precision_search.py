"""`precision.budget` through the CLI: what the mixed-precision search buys and what it costs.

Why: the planner's promise is "the fewest float ops that meet the budget, found quickly". This
builds what a user builds, each in a fresh process, and measures the result independently of the
planner:

- recognizer: the PP-OCRv4 SVTR recognizer exactly as the rapidocr-onnxruntime wheel ships it
  (tests/realmodels), `edgepipe build --config edgepipe.yaml --target arm-cpu` with 64 rendered
  calibration text lines, 200 held-out lines and `precision: {budget: 0.002}` (argmax
  agreement per CTC time step), next to the same build without a budget. The int8 .tflite of each
  bundle is run in LiteRT on the 200 lines and compared with ONNX Runtime FP32 on the original
  file: per-step argmax agreement, per-line string agreement (greedy CTC decode), SQNR.
- demo-outlier: the outlier-heavy demo CNN of accuracy_recovery.py (DemoNet with one channel
  scaled by 100 after a ReLU, twice), arm-cpu, `precision: {budget: 0.01}` (top-1 drop), top-1
  as run.py measures it on the bundle (host report).

Each budget is built twice: default levels (int8 -> float) and `levels: [int8, int16, float]`
(row `budget_int16`: 16x8 before float). Recorded per build: the CLI wall time, the precision
stage (search) time from precision.json, evaluations used, the share of ONNX ops computing in
int8 / int16 / float and the float list.

Run: python benchmarks/precision_search.py [--cases recognizer,demo-outlier] [--eval 200]
     [--budget 0.002] [--budget-form drop|sequence] [--rows int8,budget,budget_int16] [--suffix _budget_0.015]
     [--config 'calibration: {weight_ranges: mse}' ...]
(`--budget-form sequence`: `precision: {budget: {max_sequence_drop: N}}`, the CTC readings; `--config`:
more edgepipe.yaml lines for the recognizer's builds, recorded with the case. Each row records the
load average at its start and end: the host is shared, so search seconds are loose.)
Writes benchmarks/results/precision_search.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402
from accuracy_goals import char_accuracy  # noqa: E402
from calibration_real_models import ctc_decode  # noqa: E402
from real_model_corpus import cpu_flags  # noqa: E402
from timing import load_average  # noqa: E402
from tflite_real_models import interpreter, run_onnx, run_tflite  # noqa: E402

from edgepipe import quantmath  # noqa: E402

CALIB_SEED, EVAL_SEED = 1, 2


def cli_build(config: Path, out: Path) -> dict:
    """`edgepipe build --config ... --json` in a fresh process; the summary and the wall time."""
    start, load_start = time.perf_counter(), load_average()
    proc = subprocess.run([sys.executable, "-m", "edgepipe", "build", "--config", str(config), "--out", str(out),
                           "--json"], capture_output=True, text=True, cwd=str(config.parent))
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": ((proc.stderr or proc.stdout).strip().splitlines() or ["failed"])[-1][:400], "wall_s": wall}
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    stages = {s["name"]: s.get("seconds") for s in summary.get("stages", []) if isinstance(s, dict)}
    row = {"wall_s": round(wall, 1), "stages_s": stages, "warnings": summary.get("warnings", []),
           "loadavg": {"start": load_start, "end": load_average()}}
    plan_path = out / "precision.json"
    if plan_path.exists():
        from edgepipe.accuracy.precision import plan_summary

        plan = json.loads(plan_path.read_text())
        row["precision"] = plan_summary(plan)
        row["precision"]["search"] = plan["search"]
    row["host_accuracy"] = (summary.get("results") or {}).get("accuracy")
    return row


INT16_LEVELS = "[int8, int16, float]"


def write_config(path: Path, lines: list[str], budget: float | None, levels: str | None = None,
                 extra: tuple = ()) -> Path:
    precision = [] if budget is None else [f"precision: {{budget: {budget}{f', levels: {levels}' if levels else ''}}}"]
    path.write_text("\n".join(lines + precision + list(extra)) + "\n")
    return path


ROWS = ("int8", "budget", "budget_int16")


def budget_rows(budget: float, only: tuple = ROWS) -> tuple:
    """(row label, budget, precision.levels) of the builds of a case (`only`: those labels)."""
    rows = (("int8", None, None), ("budget", budget, None), ("budget_int16", budget, INT16_LEVELS))
    return tuple(row for row in rows if row[0] in only)


BUDGET_FORMS = {"drop": ("{}", "argmax agreement per CTC time step"),
                "sequence": ("{{max_sequence_drop: {}}}", "CTC reading agreement (precision.budget max_sequence_drop)")}


def recognizer(work: Path, calib_count: int, eval_count: int, budget: float, only: tuple = ROWS,
               form: str = "drop", extra: tuple = ()) -> dict:
    name = "ocr_rec"
    spec = real_models.MODELS[name]
    model_path = real_models.raw_model_path(name)
    calib = real_models.make_inputs(name, calib_count, CALIB_SEED)
    data = real_models.make_inputs(name, eval_count, EVAL_SEED)
    np.savez(work / "rec_calib.npz", **{spec.input_name: calib["x"]})
    np.savez(work / "rec_eval.npz", **{spec.input_name: data["x"]})
    shape = list(spec.shape)
    lines = [f"model: {model_path}", "target: arm-cpu", f"calib: {work / 'rec_calib.npz'}",
             f"eval: {work / 'rec_eval.npz'}", f"input_shapes: {{{spec.input_name}: {shape}}}",
             "report: {host: false}"]
    reference = run_onnx(model_path, data["x"])
    chars = real_models.characters(name)
    ref_text = ctc_decode(reference, chars)
    rows = {}
    for label, value, levels in budget_rows(budget, only):
        value = None if value is None else BUDGET_FORMS[form][0].format(value)
        out = work / f"rec_{label}"
        row = cli_build(write_config(work / f"rec_{label}.yaml", lines, value, levels, extra), out)
        if "error" not in row:
            manifest = json.loads((out / "manifest.json").read_text())
            int8 = run_tflite(interpreter(out / "model.tflite"), manifest["io"], data["x"])
            text = ctc_decode(int8, chars)
            row["litert_vs_ort_fp32"] = {
                "step_agreement": float(np.mean(reference.argmax(-1) == int8.argmax(-1))),
                "string_agreement": float(np.mean([a == b for a, b in zip(ref_text, text)])),
                "string_agreement_ignoring_spaces": float(np.mean([a.replace(" ", "") == b.replace(" ", "")
                                                                   for a, b in zip(ref_text, text)])),
                "sqnr_db": float(quantmath.sqnr_db(reference, int8)),
                # the goal metrics of accuracy_goals.py: character level, spaces kept
                "fp32_agreement": char_accuracy(text, ref_text),
                "char_accuracy": char_accuracy(text, [str(t) for t in data["texts"]])}
        rows[label] = row
        print(f"recognizer {label}: {json.dumps({k: v for k, v in row.items() if k != 'stages_s'})[:600]}", flush=True)
    return {"model": f"{real_models.package(name)} {spec.source}", "calib_samples": calib_count,
            "eval_samples": eval_count, "budget": budget, "metric": BUDGET_FORMS[form][1],
            "config": list(extra), "rows": rows}


def demo_outlier(work: Path, budget: float, only: tuple = ROWS) -> dict:
    import torch

    from edgepipe.demo import DEMO_PREPROCESS, demo_calib_dir, demo_eval_dir
    from edgepipe.demo.model import build_demo, make_outlier_heavy

    torch.manual_seed(0)
    torch.save(make_outlier_heavy(build_demo(), 100.0).state_dict(), work / "outlier.pt")
    lines = ["model: edgepipe.demo.model:build_demo", f"weights: {work / 'outlier.pt'}", "target: arm-cpu",
             f"calib: {demo_calib_dir()}", f"eval: {demo_eval_dir()}", "input_shapes: {image: [1, 3, 32, 32]}",
             "output_names: [logits]", f"preprocess: {json.dumps(DEMO_PREPROCESS)}",
             "fold: {input_normalization: mean_std}", "report: {iterations: 20, warmup: 2}"]
    rows = {}
    for label, value, levels in budget_rows(budget, only):
        rows[label] = cli_build(write_config(work / f"demo_{label}.yaml", lines, value, levels),
                                work / f"demo_{label}")
        print(f"demo-outlier {label}: {json.dumps(rows[label].get('host_accuracy'))} "
              f"{json.dumps(rows[label].get('precision', {}).get('search'))}", flush=True)
    return {"model": "DemoNet, outlier-heavy (factor 100, as benchmarks/accuracy_recovery.py)", "budget": budget,
            "metric": "top-1 drop (labelled demo eval set), run.py on the bundle", "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="recognizer,demo-outlier")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--budget", type=float, default=0.002)
    parser.add_argument("--budget-form", choices=sorted(BUDGET_FORMS), default="drop",
                        help="recognizer: precision.budget as a number (per-step argmax) or {max_sequence_drop: N}")
    parser.add_argument("--demo-budget", type=float, default=0.01)
    parser.add_argument("--rows", default=",".join(ROWS), help="builds per case (default: all)")
    parser.add_argument("--config", action="append", default=[],
                        help="recognizer: an extra edgepipe.yaml line, e.g. 'calibration: {weight_ranges: mse}'")
    parser.add_argument("--suffix", default="", help="store the cases as CASE<suffix> (e.g. another budget)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision_search.json")
    args = parser.parse_args(argv)
    only = tuple(args.rows.split(","))
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update({"schema": 1, "host": {"machine": platform.machine(), "python": platform.python_version(),
                                         "cpu": cpu_flags(),
                                         "note": "2 cores shared with other jobs: times are loose"}})
    report.setdefault("cases", {})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    with tempfile.TemporaryDirectory(prefix="precision_search_") as tmp:
        work = Path(tmp)
        for case in args.cases.split(","):
            if case == "recognizer":
                result = recognizer(work, args.calib, args.eval, args.budget, only, args.budget_form,
                                    tuple(args.config))
            elif case == "demo-outlier":
                result = demo_outlier(work, args.demo_budget, only)
            else:
                raise SystemExit(f"unknown case {case}")
            result["commit"] = commit.stdout.strip()
            report["cases"][case + args.suffix] = result
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
