"""The accuracy goals of issue 14, measured on the models as shipped, through the CLI.

Why one script: each goal (recognizer agreement, char accuracy and TRANSPOSE count; YOLOv8n SQNR;
DBNet IoU; the jetson Q/DQ recognizer) needs the same protocol — rendered data with known labels,
the .onnx file exactly as its wheel ships it (tests/realmodels/corpus.py), `edgepipe build` as a
user runs it, FP32 = ONNX Runtime on the original file — and an accuracy lever only becomes a
default after it moves these rows (`--config NAME:edgepipe.yaml` adds a row built with it).

Data (tests/realmodels/inputs.py, benchmarks/real_models.py): recognizer text lines rendered
from the label text (every label character is in the recognizer's dictionary, checked), 64
calibration lines (seed 1) and 200 eval lines (seed 2); detectors: 64 calibration and 64 eval
images (documents for DBNet, scenes for YOLOv8n).

Metrics (definitions used in the README too):
- CTC greedy decoding: argmax per time step, repeats merged, blank (class 0) dropped, classes
  mapped through the dictionary the model file ships in its `character` metadata (+ ' ' last).
- char accuracy = mean over lines of 1 - edit_distance(pred, label) / max(len(pred), len(label), 1)
  (PaddleOCR's `norm_edit_dis`, spaces kept). `fp32 agreement` is the same formula with the
  FP32 model's own reading as the label: character-level agreement with FP32. The exact-line
  agreement is reported next to it, and so are the per-step argmax agreement and the SQNR of the
  centered log-probabilities (the logits up to a constant per step: a metric every step weighs).
- TRANSPOSE: TRANSPOSE ops in the int8 .tflite (LiteRT op list, no delegate) vs Transpose nodes
  in the original ONNX file.
- YOLOv8n: SQNR (dB) of the raw [1, 4+C, anchors] output vs FP32; QUANTIZE ops counted.
- DBNet: IoU of the probability maps thresholded at 0.3, mean over images.
- jetson: `model.qdq.onnx` in ONNX Runtime (host emulation of the TensorRT engine), char
  accuracy; `dq_fed` = fraction of Conv/MatMul/Gemm nodes whose first two inputs both come from
  DequantizeLinear (activation and weight quantized, what TensorRT needs to run them in int8).
Peer: ONNX Runtime `quantize_static` (benchmarks/ort_peer.py, MinMax, same calibration data), run
in ONNX Runtime on the same eval data.

Run by hand:  python benchmarks/accuracy_goals.py [--rows rec_arm,rec_jetson,yolo,det] [--config ROW:TAG:cfg.yaml]
Writes benchmarks/results/accuracy_goals.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models  # noqa: E402
from calibration_real_models import ctc_decode  # noqa: E402
from edgepipe.quantmath import edit_distance  # noqa: E402
from tests.realmodels import evaluate as corpus_eval  # noqa: E402

SEEDS = {"calib": 1, "eval": 2}
ROWS = {  # row -> (corpus model, target, calibration samples, eval samples)
    "rec_arm": ("ocr_rec", "arm-cpu", 64, 200),
    "rec_jetson": ("ocr_rec", "jetson", 64, 200),
    "yolo": ("yolo_det", "arm-cpu", 64, 64),
    "det": ("ocr_det", "arm-cpu", 64, 64),
}
GOALS = {  # (metric, comparison, value) from issue 14
    "rec_arm": [("fp32_agreement", ">=", 0.976), ("char_accuracy", ">=", 0.977), ("transpose_ops", "<=", 11)],
    "rec_jetson": [("char_accuracy", ">=", 0.972), ("dq_fed", ">=", 0.90)],
    "yolo": [("sqnr_db", ">=", 30.3)],
    "det": [("map_iou", ">=", 0.92)],
}


# --- metrics -------------------------------------------------------------------------------


def char_accuracy(predictions: list[str], labels: list[str]) -> float:
    """Mean of 1 - normalized edit distance (PaddleOCR's norm_edit_dis, spaces kept)."""
    return float(np.mean([1.0 - edit_distance(p, t) / max(len(p), len(t), 1) for p, t in zip(predictions, labels)]))


def no_spaces(*texts: list[str]) -> list[list[str]]:
    return [[t.replace(" ", "") for t in group] for group in texts]


def reading_metrics(fp32: np.ndarray, out: np.ndarray, labels: list[str]) -> dict:
    chars = real_models.characters("ocr_rec")
    ref_text, out_text = ctc_decode(fp32, chars), ctc_decode(out, chars)
    return {"fp32_agreement": char_accuracy(out_text, ref_text),
            "line_agreement": float(np.mean([a == b for a, b in zip(out_text, ref_text)])),
            "char_accuracy": char_accuracy(out_text, labels),
            "fp32_char_accuracy": char_accuracy(ref_text, labels),
            "char_accuracy_ignoring_spaces": char_accuracy(*no_spaces(out_text, labels)),
            "fp32_char_accuracy_ignoring_spaces": char_accuracy(*no_spaces(ref_text, labels)),
            "fp32_agreement_ignoring_spaces": char_accuracy(*no_spaces(out_text, ref_text)),
            "step_agreement": float(np.mean(fp32.argmax(-1) == out.argmax(-1))),
            "logit_sqnr_db": corpus_eval.sqnr_db(centered_log_probs(fp32), centered_log_probs(out)),
            "sqnr_db": corpus_eval.sqnr_db(fp32, out)}


def centered_log_probs(probs: np.ndarray) -> np.ndarray:
    """log p minus its mean over the classes: the logits up to a per-step constant (the model ends
    in Softmax). Their SQNR weighs every step, where the probabilities' SQNR is mostly the few
    steps whose top class flipped."""
    logs = np.log(np.maximum(probs.astype(np.float64), 1e-30))
    return logs - logs.mean(axis=-1, keepdims=True)


def map_iou(fp32: np.ndarray, out: np.ndarray, threshold: float = 0.3) -> float:
    a, b = fp32 > threshold, out > threshold
    axes = tuple(range(1, a.ndim))
    union = np.logical_or(a, b).sum(axis=axes)
    return float(np.where(union > 0, np.logical_and(a, b).sum(axis=axes) / np.maximum(union, 1), 1.0).mean())


def task_metrics(row: str, fp32: np.ndarray, out: np.ndarray, data: dict) -> dict:
    if row.startswith("rec"):
        return reading_metrics(fp32, out, [str(t) for t in data["texts"]])
    if row == "det":
        return {"map_iou": map_iou(fp32, out), "sqnr_db": corpus_eval.sqnr_db(fp32, out)}
    return {"sqnr_db": corpus_eval.sqnr_db(fp32, out),
            "score_sqnr_db": corpus_eval.sqnr_db(fp32[:, 4:], out[:, 4:]),
            "box_sqnr_db": corpus_eval.sqnr_db(fp32[:, :4], out[:, :4])}


# --- graph counts --------------------------------------------------------------------------


def tflite_op_counts(path: Path) -> dict[str, int]:
    ops = corpus_eval.interpreter(path, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")._get_ops_details()
    names = [op["op_name"] for op in ops]
    return {n: names.count(n) for n in sorted(set(names))}


def dq_fed_fraction(path: Path) -> dict:
    """Conv/MatMul/Gemm nodes whose first two inputs both come from DequantizeLinear."""
    model = onnx.load(str(path))
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    fed = [n for n in nodes if all(producer.get(t) == "DequantizeLinear" for t in n.input[:2])]
    missing = [n.name for n in nodes if n not in fed]
    return {"dq_fed": len(fed) / max(len(nodes), 1), "weighted_nodes": len(nodes), "dq_fed_nodes": len(fed),
            "not_fed_examples": missing[:8]}


# --- runs ----------------------------------------------------------------------------------


def cli_build(name: str, target: str, work: Path, tag: str, config: Path | None) -> tuple[Path, dict]:
    """`edgepipe build` as a user runs it, in a fresh project folder (no shared stage cache)."""
    project = work / f"{name}_{target}_{tag}"
    project.mkdir(parents=True, exist_ok=True)
    out = project / "bundle"
    args = ["build", "--model", str(real_models.raw_model_path(name)), "--target", target,
            "--calib", str(work / f"{name}_calib.npz"), "--eval", str(work / f"{name}_eval.npz"),
            *real_models.input_shape_args(name), "--no-host-report", "--json", "--out", str(out)]
    if config is not None:
        args += ["--config", str(config)]
    start = time.perf_counter()
    proc = corpus_eval.cli(*args, cwd=project, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["edgepipe build failed"])[-1][:400])
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    stages = {s["name"]: s.get("seconds") for s in summary.get("stages", []) if isinstance(s, dict)}
    return out, {"cli_wall_s": round(wall, 1), "stages_s": stages,
                 "warnings": [line for line in proc.stderr.splitlines() if line.startswith("warning:")]}


def deployed_output(target: str, bundle: Path, name: str, images: np.ndarray) -> np.ndarray:
    return corpus_eval.bundle_outputs(name, target, bundle, images)["int8"][0]


def measure(row: str, work: Path, fp32: np.ndarray, data: dict, tag: str, config: Path | None) -> dict:
    name, target, _, _ = ROWS[row]
    bundle, info = cli_build(name, target, work, tag, config)
    result = {"build": info, **task_metrics(row, fp32, deployed_output(target, bundle, name, data["x"]), data)}
    if (bundle / "precision.json").exists():  # a precision.budget row: what the search kept float
        plan = json.loads((bundle / "precision.json").read_text())
        search = plan.get("search", {})
        result["precision"] = {"float_nodes": plan.get("float_nodes"), "met": plan.get("met"),
                               **{k: search.get(k) for k in ("ops", "int8_ops", "int8_fraction", "float_ops",
                                                             "ranking_evaluations", "search_evaluations",
                                                             "confirm_evaluations")},
                               "search_s": info["stages_s"].get("precision")}
    check = json.loads((bundle / "calibration.json").read_text()).get("bias_correction")
    if check:  # calibration.bias_correction: auto, what the held-out check decided
        result["bias_correction_check"] = {k: check.get(k) for k in ("kept", "reason", "held_out_sqnr_db")}
    if target == "arm-cpu":
        ops = tflite_op_counts(bundle / "model.tflite")
        result.update({"transpose_ops": ops.get("TRANSPOSE", 0), "quantize_ops": ops.get("QUANTIZE", 0),
                       "dequantize_ops": ops.get("DEQUANTIZE", 0), "tflite_ops": sum(ops.values())})
    else:
        result.update(dq_fed_fraction(bundle / "model.qdq.onnx"))
    return result


def ort_peer_row(row: str, work: Path, fp32: np.ndarray, data: dict) -> dict:
    from ort_peer import ort_quantize_static

    name = ROWS[row][0]
    input_name = real_models.MODELS[name].input_name
    calib = np.load(work / f"{name}_calib.npz")[input_name]
    out = work / f"{name}_ort_minmax.onnx"
    if not out.exists():
        ort_quantize_static(real_models.raw_model_path(name), out, len(calib),
                            lambda i: {input_name: calib[i : i + 1]}, method="MinMax")
    outputs = corpus_eval.run_onnx_file(out, input_name, data["x"])
    result = task_metrics(row, fp32, list(outputs.values())[0], data)
    if row.startswith("rec"):
        result.update(dq_fed_fraction(out))
    return {"method": "ort quantize_static MinMax (Q/DQ in ONNX Runtime)", **result}


def goal_table(row: str, result: dict) -> list[dict]:
    table = []
    for metric, op, goal in GOALS[row]:
        value = result.get(metric)
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        entry = {"metric": metric, "value": value, "goal": f"{op} {goal}", "met": bool(met)}
        spaceless = result.get(f"{metric}_ignoring_spaces")
        if spaceless is not None:  # the same metric with spaces dropped from both strings
            entry.update({"value_ignoring_spaces": spaceless, "met_ignoring_spaces": bool(spaceless >= goal)})
        table.append(entry)
    return table


def prepare(name: str, calib_n: int, eval_n: int, work: Path) -> dict:
    spec = real_models.MODELS[name]
    calib = real_models.make_inputs(name, calib_n, SEEDS["calib"])
    data = real_models.make_inputs(name, eval_n, SEEDS["eval"])
    if "texts" in data:
        dictionary = set(real_models.characters(name))
        assert all(c in dictionary for t in data["texts"] for c in str(t)), "label outside the dictionary"
    np.savez(work / f"{name}_calib.npz", **{spec.input_name: calib["x"]})
    np.savez(work / f"{name}_eval.npz", **{spec.input_name: data["x"]})
    return data



def recognizer_study(name: str, row: str, work: Path, **extra) -> tuple[dict, np.ndarray, dict]:
    """The shared start of the recognizer studies: data of `row`, FP32 outputs and the report header."""
    _, _, calib_n, eval_n = ROWS[row]
    data = prepare(name, calib_n, eval_n, work)
    spec = real_models.MODELS[name]
    fp32 = list(corpus_eval.run_onnx_file(real_models.raw_model_path(name), spec.input_name,
                                          data["x"]).values())[0]
    report = {"host": {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
              "model": name, "package": real_models.package(name), "calib_samples": calib_n,
              "eval_samples": eval_n, **extra, "targets": {}}
    return data, fp32, report

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--config", action="append", default=[],
                        help="ROW:TAG:edgepipe.yaml  an extra run of ROW built with that config (a lever)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-default", action="store_true", help="only the --config runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/accuracy_goals.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    work = Path(tempfile.mkdtemp(prefix="accuracy_goals_"))  # builds and data: removed at the end
    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    report["host"] = {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()}
    report["protocol"] = ("models as shipped; edgepipe build CLI; FP32 = ONNX Runtime on the original file; "
                          "char accuracy / fp32 agreement = mean 1 - edit distance / max length (spaces kept)")
    report.setdefault("rows", {})
    extra: dict[str, list[tuple[str, Path]]] = {}
    for spec in args.config:
        row, tag, path = spec.split(":", 2)
        extra.setdefault(row, []).append((tag, Path(path).resolve()))
    prepared: dict[str, dict] = {}
    for row in args.rows.split(","):
        name, target, calib_n, eval_n = ROWS[row]
        if name not in prepared:
            data = prepare(name, calib_n, eval_n, work)
            spec = real_models.MODELS[name]
            data["fp32"] = list(corpus_eval.run_onnx_file(real_models.raw_model_path(name), spec.input_name,
                                                          data["x"]).values())[0]
            prepared[name] = data
        data = prepared[name]
        entry = report["rows"].get(row, {})
        entry.update({"model": name, "target": target, "package": real_models.package(name),
                      "calib_samples": calib_n, "eval_samples": eval_n})
        if row == "rec_arm":
            entry["onnx_transpose_nodes"] = sum(n.op_type == "Transpose" for n in
                                                onnx.load(str(real_models.raw_model_path(name))).graph.node)
        if not args.no_default:
            result = measure(row, work, data["fp32"], data, "default", None)
            entry["default"] = result
            entry["goals"] = goal_table(row, result)
            print(row, "default", json.dumps({g["metric"]: g["value"] for g in entry["goals"]}), flush=True)
        entry.setdefault("levers", {})
        for tag, config in extra.get(row, []):
            result = measure(row, work, data["fp32"], data, tag, config)
            result["config"] = config.read_text()
            result["goals"] = goal_table(row, result)
            entry["levers"][tag] = result
            print(row, tag, json.dumps({g["metric"]: g["value"] for g in result["goals"]}), flush=True)
        if not args.no_peer:
            try:
                entry["peer"] = ort_peer_row(row, work, data["fp32"], data)
            except Exception as exc:  # a peer that fails is a result too
                entry["peer"] = {"error": str(exc)[:300]}
        report["rows"][row] = entry
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print("wrote", out_path)


if __name__ == "__main__":
    main()
