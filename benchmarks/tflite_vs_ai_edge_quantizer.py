"""Which engine writes the int8 .tflite: our lowering, or our fp32 .tflite + ai-edge-quantizer?

Compares, on the demo model (a fresh `edgepipe build --target arm-cpu` bundle: folded
reference.onnx, calibration.json, model.tflite, model.fp32.tflite, eval/eval.npz) and on a larger
MobileNet-like CNN (random weights, settled BatchNorm statistics; min/max calibration, 200
structured calibration inputs, 300 other eval inputs, no labels):

- ours      : `model.tflite` from edgepipe's lowering (int8 written directly; float io, and a
              FULLY_CONNECTED writing the float model output stays float)
- ours int8-io: the same lowering with int8 model input/output (`int8_io`), so every layer is
              int8 as in AEQ's static recipe: against aeq+ranges only the lowering differs
- aeq       : ai-edge-quantizer (AEQ) `static_wi8_ai8` applied to our `model.fp32.tflite`,
              calibrated with AEQ's own calibration API on the same calibration inputs
- aeq+ranges: the same, with AEQ's per-tensor min/max replaced by our calibration ranges
              (lo, hi) wherever a tensor name matches (bonus: isolates the engine from the ranges)

Metrics: top-1 vs labels, argmax agreement and SQNR (dB) vs the FP32 reference outputs, file
size, XNNPACK delegate partitions, latency (XNNPACK, 1 thread; all files timed in alternating
rounds, median over rounds of each round's median, with the spread: benchmarks/timing.py) and
conversion time (median of 3 conversions), with the host's CPU features and load average.
AEQ is not an edgepipe dependency (it needs no TensorFlow: ai-edge-litert, absl-py, scipy, ...):
install it into a throwaway venv,

    python -m venv --system-site-packages /tmp/aeq-venv && /tmp/aeq-venv/bin/pip install ai-edge-quantizer
    /tmp/aeq-venv/bin/python benchmarks/tflite_vs_ai_edge_quantizer.py

Writes benchmarks/results/tflite_vs_ai_edge_quantizer.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepipe import graph, quantmath  # noqa: E402
from edgepipe.backends.tflite import build_tflite  # noqa: E402
from edgepipe.calibrate.result import CalibrationResult  # noqa: E402
from benchmarks.timing import (alternating_rounds, host_record, load_average, repeated_seconds,  # noqa: E402
                               rounds_argument, summary)
from tests.tflite_harness import make_interpreter, minmax_calibration, structured_inputs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tflite_vs_ai_edge_quantizer.json"
NHWC = (0, 2, 3, 1)


@dataclass(frozen=True)
class Timing:
    rounds: int  # alternating latency rounds
    repeats: int  # conversions per engine


def convert_repeated(convert, repeats: int) -> dict:
    """`convert()` -> {"calibrate_s", "quantize_s", ...} run `repeats` times: medians, runs and spread."""
    runs = [convert() for _ in range(repeats)]
    total = summary([r["calibrate_s"] + r["quantize_s"] for r in runs], 3)
    row = {key: value for key, value in runs[-1].items() if not key.endswith("_s")}
    for key in ("calibrate_s", "quantize_s"):
        row[key] = summary([r[key] for r in runs], 3)["median"]
    return {**row, "convert_s": total["median"], "convert_runs_s": total["runs"], "convert_spread": total["spread"]}


def to_input(detail: dict, nhwc: np.ndarray) -> np.ndarray:
    """Float NHWC data as the interpreter's input dtype (AEQ's static recipe makes int8 io)."""
    if detail["dtype"] == np.float32:
        return nhwc.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return quantmath.quantize(nhwc, scale, zero_point).astype(detail["dtype"])


def from_output(detail: dict, value: np.ndarray) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return value.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (value.astype(np.float32) - zero_point) * scale


def run_tflite(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Outputs for NCHW float inputs [N, C, H, W] (the .tflite takes NHWC)."""
    interpreter = make_interpreter(path, "xnnpack", 1)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for sample in inputs:
        interpreter.set_tensor(source["index"], to_input(source, sample[None].transpose(NHWC)))
        interpreter.invoke()
        outputs.append(from_output(target, interpreter.get_tensor(target["index"])).reshape(-1))
    return np.stack(outputs)


def partitions(path: Path) -> int:
    interpreter = make_interpreter(path, "xnnpack", 1)
    interpreter.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def latencies(paths: dict[str, Path], iterations: int, rounds: int) -> dict[str, dict]:
    """Per model: median ms over alternating rounds (so host noise hits all alike) and its spread."""
    invokers = {}
    for key, path in paths.items():
        interpreter = make_interpreter(path, "xnnpack", 1)
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], to_input(detail, np.random.default_rng(0).normal(size=detail["shape"])))
        invokers[key] = interpreter.invoke
    return alternating_rounds(invokers, rounds, iterations, warmup=10)


def aeq_quantize(fp32_path: Path, calib_nchw: np.ndarray, out_path: Path, ranges: dict | None = None) -> dict:
    from ai_edge_quantizer import quantizer, recipe

    interpreter = make_interpreter(fp32_path, "xnnpack", 1)
    name = interpreter.get_signature_list()["serving_default"]["inputs"][0]
    data = {"serving_default": [{name: s[None].transpose(NHWC).astype(np.float32)} for s in calib_nchw]}
    start = time.perf_counter()
    quant = quantizer.Quantizer(str(fp32_path), recipe.static_wi8_ai8())
    qsvs = quant.calibrate(data)
    calibrate_s = time.perf_counter() - start
    injected = 0
    if ranges:
        for tensor, qsv in qsvs.items():
            if tensor in ranges and "min" in qsv:
                lo, hi = ranges[tensor]
                qsv["min"] = np.full_like(np.asarray(qsv["min"]), lo)
                qsv["max"] = np.full_like(np.asarray(qsv["max"]), hi)
                injected += 1
    start = time.perf_counter()
    result = quant.quantize(qsvs, enable_progress_report=False)
    quantize_s = time.perf_counter() - start
    out_path.write_bytes(bytes(result.quantized_model))
    return {"calibrate_s": round(calibrate_s, 3), "quantize_s": round(quantize_s, 3), "ranges_injected": injected,
            "tensors_calibrated": len(qsvs)}


def lower_ours(model, calibration: CalibrationResult, work: Path, timing: Timing) -> dict[str, tuple[Path, dict]]:
    """Our lowering, float io and int8 io, each timed over `timing.repeats` conversions."""
    lowered = {}
    for key, options in (("ours", {}), ("ours int8-io", {"int8_io": True})):
        out = work / key.replace(" ", "-")
        convert = repeated_seconds(lambda: build_tflite(model, calibration, out, dict(options)), timing.repeats)
        lowered[key] = (out / "model.tflite", convert)
    return lowered


def compare(case: str, work: Path, ours: dict[str, tuple[Path, dict]], fp32: Path, calibration: CalibrationResult,
            calib: np.ndarray, eval_inputs: np.ndarray, reference: np.ndarray, labels, iterations: int,
            timing: Timing) -> dict:
    ranges = {name: (t.lo, t.hi) for name, t in calibration.tensors.items()}
    models = {key: path for key, (path, _) in ours.items()}
    info = {key: {"convert_s": c["median"], "convert_runs_s": c["runs"], "convert_spread": c["spread"]}
            for key, (_, c) in ours.items()}
    for key, injected in (("aeq", None), ("aeq+ranges", ranges)):
        path = work / f"{key}.tflite"
        try:
            info[key] = convert_repeated(lambda: aeq_quantize(fp32, calib, path, injected), timing.repeats)
            models[key] = path
        except Exception as exc:  # report exactly why AEQ failed, keep the rest of the table
            info[key] = {"error": f"{type(exc).__name__}: {exc}"}
    models["fp32"] = fp32
    info["fp32"] = {}
    latency = latencies(models, iterations, timing.rounds)
    rows = {}
    for key, path in models.items():
        outputs = run_tflite(path, eval_inputs)
        row = dict(info[key])
        row.update({
            "top1": float(np.mean(outputs.argmax(1) == labels)) if labels is not None else None,
            "argmax_agreement": float(np.mean(outputs.argmax(1) == reference.argmax(1))),
            "sqnr_db": round(quantmath.sqnr_db(reference, outputs), 2),
            "size_bytes": path.stat().st_size,
            "io_dtype": str(np.dtype(make_interpreter(path).get_input_details()[0]["dtype"])),
            "delegate_partitions": partitions(path),
            "latency_ms": round(latency[key]["ms"], 4),
            "latency_spread": latency[key]["spread"],
            "latency_over_fp32": round(latency[key]["ms"] / latency["fp32"]["ms"], 3),
        })
        rows[key] = row
    for key in info:
        rows.setdefault(key, info[key])
    return {"model": case, "eval_samples": len(eval_inputs), "calib_samples": len(calib), "rounds": timing.rounds,
            "iterations_per_round": iterations, "results": rows}


def demo_case(work: Path, timing: Timing) -> dict:
    from edgepipe.data import load_dataset
    from edgepipe.settings import data_preprocess, resolve_settings, to_model_domain

    bundle = work / "bundle"
    subprocess.run([sys.executable, "-m", "edgepipe.cli.main", "build", "--target", "arm-cpu", "--out", str(bundle),
                    "--no-host-report"], check=True, cwd=work, capture_output=True)
    settings, _ = resolve_settings({"target": "arm-cpu"}, None)
    model = graph.load_model(bundle / "reference.onnx")
    specs = {i.name: (tuple(graph.tensor_shape(i)), graph.tensor_dtype(i)) for i in graph.graph_inputs(model)}
    calib_ds = to_model_domain(load_dataset(settings["calib"], specs, data_preprocess(settings)), settings)
    input_name = calib_ds.names[0]
    calib = calib_ds.stack(input_name)
    calib = calib[:, 0] if calib.ndim == 5 else calib
    evaluation = np.load(bundle / "eval" / "eval.npz")
    output_name = model.graph.output[0].name
    calibration = CalibrationResult.from_json(json.loads((bundle / "calibration.json").read_text()))
    ours = lower_ours(model, calibration, work, timing)
    ours["ours"] = (bundle / "model.tflite", ours["ours"][1])  # the file the CLI wrote, the re-lowering's time
    return compare("demo", work, ours, bundle / "model.fp32.tflite", calibration, calib,
                   evaluation[f"input:{input_name}"], evaluation[f"reference:{output_name}"],
                   evaluation["labels"] if "labels" in evaluation else None, 100, timing)


def larger_case(work: Path, timing: Timing) -> dict:
    from benchmarks.tflite_latency import onnx_cnn

    model, params = onnx_cnn("mobilenet-like")
    name = graph.graph_inputs(model)[0].name
    calib = np.concatenate([f[name] for f in structured_inputs(model, 200, seed=1)])
    eval_inputs = np.concatenate([f[name] for f in structured_inputs(model, 300, seed=2)])
    start = time.perf_counter()
    calibration = minmax_calibration(model, [{name: s[None]} for s in calib])
    calibrate_s = time.perf_counter() - start
    ours = lower_ours(model, calibration, work, timing)
    reference = np.concatenate([graph.make_session(model).run(None, {name: s[None]})[0] for s in eval_inputs])
    row = compare("mobilenet-like", work, ours, work / "ours" / "model.fp32.tflite", calibration,
                  calib, eval_inputs, reference, None, 10, timing)
    row["params"] = params
    row["results"]["ours"]["calibrate_s (ORT min/max, not in convert_s)"] = round(calibrate_s, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=rounds_argument, default=5, help="alternating latency rounds (median), >= 3")
    parser.add_argument("--repeats", type=rounds_argument, default=3, help="conversions per engine (median), >= 3")
    args = parser.parse_args()
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError as error:
        parser.error(f"{error} (the peer: pip install ai-edge-quantizer, see the docstring)")
    timing = Timing(args.rounds, args.repeats)
    from importlib.metadata import version

    host = host_record()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in (demo_case, larger_case):
            work = Path(tmp) / case.__name__
            work.mkdir()
            cases.append({**case(work, timing), "loadavg_end": load_average()})
    report = {"host": host, "loadavg_end": load_average(),
              "versions": {p: version(p) for p in ("ai-edge-quantizer", "ai-edge-litert", "numpy")},
              "note": "host numbers, not device numbers; latency = XNNPACK 1 thread, all files of a model timed in "
                      "alternating rounds (median over rounds of each round's median); convert s = median of "
                      f"{timing.repeats} conversions",
              "cases": cases}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'model':15} {'engine':11} {'top1':>6} {'agree':>6} {'SQNR dB':>8} {'size':>9} {'parts':>5} "
          f"{'ms':>8} {'/fp32':>6} {'convert s':>9}")
    for case in cases:
        for key, row in case["results"].items():
            if "error" in row:
                print(f"{case['model']:15} {key:11} error: {row['error']}")
                continue
            top1 = f"{row['top1']:.3f}" if row["top1"] is not None else "-"
            print(f"{case['model']:15} {key:11} {top1:>6} {row['argmax_agreement']:>6.3f} {row['sqnr_db']:>8} "
                  f"{row['size_bytes']:>9} {row['delegate_partitions']:>5} {row['latency_ms']:>8} "
                  f"{row['latency_over_fp32']:>6} {row.get('convert_s', '-'):>9}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
