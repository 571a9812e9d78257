"""TFLite 16x8 (int16 activations, int8 weights) against int8 and fp32 on the arm-cpu target.

Why: 16x8 is the fully-integer step between int8 and float (`backend.activations: int16`, or
`precision.int16_nodes` per node). This measures what it buys (output SQNR vs ONNX Runtime FP32)
and what it costs (LiteRT latency: XNNPACK takes no int16 kernel, so every 16x8 op runs on the
builtin kernels), on the shipped demo and on the PP-OCR detector, recognizer and direction
classifier exactly as their wheels ship them (benchmarks/real_models.py).

Per model, what a user runs: `edgepipe build --target arm-cpu [--model M --calib C --eval E]`
twice, once with an edgepipe.yaml holding `backend: {activations: int16}` (same calibration:
the cached calibrate stage). Then, on the same eval inputs: SQNR of every output of model.tflite
(int8), the 16x8 model.tflite and model.fp32.tflite against ONNX Runtime FP32 on the model the
CLI was given; latency medians (2 threads, XNNPACK resolver as run.py uses it) measured in one
loop that alternates the three files, so all three share the machine's state. One more 16x8 file,
`int16_int8_threshold`, is lowered in this process from the bundle's reference.onnx and
calibration.json with int8's clipped threshold (amax) as the int16 range instead of the observed
|x| maximum the lowering uses: SQNR only, to show why the lowering does not reuse int8's clipping.

Run by hand:  python benchmarks/int16_activations.py [--models demo,ocr_cls,ocr_rec,ocr_det]
Writes benchmarks/results/int16_activations.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import real_models  # noqa: E402

from benchmarks.timing import alternating_rounds, host_record, load_average, rounds_argument  # noqa: E402
from edgepipe import graph, quantmath  # noqa: E402
from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite  # noqa: E402

MODELS = ["demo", "ocr_cls", "ocr_rec", "ocr_det"]
CALIB_SAMPLES, EVAL_SAMPLES = 32, 16
CALIB_SEED, EVAL_SEED = 1, 2
THREADS = 2
VARIANTS = ("int8", "int16", "fp32")  # timed; SQNR also for int16_int8_threshold


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgepipe.cli.main", *args], capture_output=True, text=True)
    return proc, time.perf_counter() - start


def build(work: Path, name: str, activations: str, model_args: list[str]) -> dict:
    config = work / f"{name}_{activations}.yaml"
    config.write_text(f"cache_dir: {work / 'cache'}\nbackend:\n  activations: {activations}\n")
    out = work / f"bundle_{name}_{activations}"
    proc, wall = cli("build", "--target", "arm-cpu", *model_args, "--config", str(config), "--no-host-report",
                     "--json", "--out", str(out))
    if proc.returncode:
        raise SystemExit(f"{name} {activations}: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    backend = next((s for s in summary.get("stages", []) if s.get("name") == "backend"), {})
    return {"bundle": out, "wall_s": wall, "backend_note": backend.get("note", "")}


def model_inputs(work: Path, name: str) -> tuple[list[str], Path | None, list[dict]]:
    """(CLI model arguments, the .onnx ONNX Runtime runs as FP32 reference, eval feeds)."""
    if name == "demo":  # the shipped demo: its own calibration and eval sets
        return [], None, []
    spec = real_models.MODELS[name]
    calib = real_models.make_inputs(name, CALIB_SAMPLES, CALIB_SEED)["x"]
    evals = real_models.make_inputs(name, EVAL_SAMPLES, EVAL_SEED)["x"]
    np.savez(work / f"{name}_calib.npz", **{spec.input_name: calib})
    np.savez(work / f"{name}_eval.npz", **{spec.input_name: evals})
    path = real_models.raw_model_path(name)
    args = ["--model", str(path), "--calib", str(work / f"{name}_calib.npz"), "--eval",
            str(work / f"{name}_eval.npz"), *real_models.input_shape_args(name)]
    return args, path, [{spec.input_name: evals[i:i + 1]} for i in range(len(evals))]


def demo_feeds(bundle: Path) -> list[dict]:
    """The demo bundle's eval inputs (eval/eval.npz, written from the demo eval set)."""
    with np.load(bundle / "eval" / "eval.npz") as data:
        names = [k for k in data.files if k.startswith("input:")]
        count = min(EVAL_SAMPLES * 4, len(data[names[0]]))
        return [{k[len("input:"):]: data[k][i:i + 1] for k in names} for i in range(count)]


def fp32_io(io: dict) -> dict:
    return {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in io.items()}


def int8_threshold_variant(bundle: Path, work: Path) -> tuple[Path, dict]:
    """The 16x8 model lowered with each tensor's int16 range set to int8's chosen threshold."""
    import dataclasses

    import onnx

    from edgepipe.backends.tflite import build_tflite
    from edgepipe.calibrate.result import CalibrationResult

    calibration = CalibrationResult.load(bundle / "calibration.json")
    for name, tensor in calibration.tensors.items():
        calibration.tensors[name] = dataclasses.replace(tensor, min=-tensor.amax, max=tensor.amax)
    out = work / f"{bundle.name}_int8_threshold"
    result = build_tflite(onnx.load(bundle / "reference.onnx"), calibration, out, {"activations": "int16"})
    return out / "model.tflite", result["io"]


def evaluate(bundles: dict, reference_model: Path, feeds: list[dict], timed_runs: int, work: Path,
             decisions: bool) -> dict:
    """SQNR per output and latency medians; `decisions`: the first output's last axis holds class
    scores (classifier, CTC recognizer), so its argmax agreement means something (not a map)."""
    import onnx

    session = graph.make_session(onnx.load(reference_model))
    names = [o.name for o in session.get_outputs()]
    references = [dict(zip(names, session.run(names, feed))) for feed in feeds]
    files = {"int8": (bundles["int8"] / "model.tflite", bundles["int8_io"]),
             "int16": (bundles["int16"] / "model.tflite", bundles["int16_io"]),
             "fp32": (bundles["int8"] / "model.fp32.tflite", fp32_io(bundles["int8_io"])),
             "int16_int8_threshold": int8_threshold_variant(bundles["int8"], work)}
    interpreters = {k: make_interpreter(path, "xnnpack", THREADS) for k, (path, _) in files.items()}
    row: dict = {"sqnr_db": {}, "argmax_agreement": {}}
    for variant, (path, io) in files.items():
        outputs = [run_tflite(path, io, feed, interpreter=interpreters[variant]) for feed in feeds]
        per_output = {}
        for name in names:
            ref = np.concatenate([r[name].ravel() for r in references])
            got = np.concatenate([o[name].ravel() for o in outputs])
            per_output[name] = round(float(quantmath.sqnr_db(ref, got)), 2)
        row["sqnr_db"][variant] = per_output
        if not decisions:
            row["argmax_agreement"][variant] = None
            continue
        first = names[0]
        want = np.concatenate([r[first].reshape(-1, r[first].shape[-1]) for r in references]).argmax(1)
        got = np.concatenate([o[first].reshape(-1, o[first].shape[-1]) for o in outputs]).argmax(1)
        row["argmax_agreement"][variant] = round(float(np.mean(want == got)), 4)
    invokers = {variant: (lambda v=variant: run_tflite(*files[v], feeds[0], interpreter=interpreters[v]))
                for variant in VARIANTS}
    # one single-sample run per file per round, files alternating: same machine state for each
    timed = alternating_rounds(invokers, rounds=timed_runs, iterations=1, warmup=1)
    row["latency_ms_p50"] = {k: round(v["ms"], 3) for k, v in timed.items()}
    row["latency_spread"] = {k: v["spread"] for k, v in timed.items()}
    row["latency_runs"] = timed_runs
    row["eval_samples"] = len(feeds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=rounds_argument, default=9,
                        help="timed single-sample runs per file, files alternating (median), >= 3")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/int16_activations.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="int16_activations_"))
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    report["host"] = {**host_record(), "threads": THREADS,
                      "note": "x86 build host, LiteRT (ai-edge-litert) XNNPACK resolver; not a device number"}
    report["method"] = ("edgepipe build --target arm-cpu twice (backend.activations int8 / int16, same cached "
                        "calibration); SQNR of every output vs ONNX Runtime FP32 on the model given to the CLI; "
                        "latency = median of alternating single-sample runs of the three files")
    report.setdefault("models", {})
    for name in args.models.split(","):
        load_start = load_average()
        model_args, reference_model, feeds = model_inputs(work, name)
        built = {activations: build(work, name, activations, model_args) for activations in ("int8", "int16")}
        bundles = {k: v["bundle"] for k, v in built.items()}
        for k in ("int8", "int16"):
            bundles[f"{k}_io"] = json.loads((bundles[k] / "manifest.json").read_text())["io"]
        if name == "demo":
            feeds, reference_model = demo_feeds(bundles["int8"]), bundles["int8"] / "reference.onnx"
        decisions = name == "demo" or real_models.kind(name) in ("cls", "rec")
        row = evaluate(bundles, reference_model, feeds, args.runs, work, decisions)
        manifest16 = json.loads((bundles["int16"] / "manifest.json").read_text())
        row["int16_nodes"] = len(manifest16["precision"]["int16_nodes"])
        row["int16_fallback"] = manifest16["precision"]["int16_fallback"]
        row["build_wall_s"] = {k: round(v["wall_s"], 1) for k, v in built.items()}
        row["backend_note_int16"] = built["int16"]["backend_note"]
        row["loadavg"] = {"start": load_start, "end": load_average()}
        report["models"][name] = row
        print(f"{name:8s} SQNR int8/int16/fp32/int16(int8 threshold) "
              f"{[min(row['sqnr_db'][v].values()) for v in (*VARIANTS, 'int16_int8_threshold')]} dB  "
              f"p50 {[row['latency_ms_p50'][v] for v in VARIANTS]} ms", flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
