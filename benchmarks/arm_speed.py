"""ARM CPU speed on this host, per real-model corpus model: XNNPACK partitions, TRANSPOSE count
and int8 / fp32 latency.

Why: int8 only pays when the whole graph runs in XNNPACK (one partition, nothing on the builtin
kernels but the input QUANTIZE and output DEQUANTIZE), when layout propagation adds no TRANSPOSE
the ONNX graph did not have, and on CPUs with int8 dot-product instructions (x86 VNNI, ARM
asimddp). This measures all three on every arm-cpu model of the real-model corpus
(tests/realmodels/corpus.py) and records the host's CPU features and load with them.

Per model, the user's path, as tests/test_real_models.py builds it: `edgepipe build` on the file
as shipped (or the `module:factory` with its shipped weights), `--target arm-cpu`, the corpus's
calibration inputs (tests/realmodels/inputs.py). Then, in LiteRT (XNNPACK): partitions and ops
outside them (edgepipe.backends.tflite.delegation, as the build line), the .tflite's TRANSPOSE
count next to the ONNX graph's Transpose count (the shipped file, or the factory's torch export
as the build makes it), and int8 and fp32 latency with 1 and 4 threads, timed in alternating
rounds (median over rounds of the round's median), so the int8/fp32 ratio comes from one run.
The host is shared: `os.getloadavg()` is recorded at the start and end of each model.

    python benchmarks/arm_speed.py [--models a,b] [--rounds 3] [--iterations 10]

Writes benchmarks/results/arm_speed.json, or `--results FILE` (a `--models` subset updates only
those rows, when the file was measured on a CPU with the same features: rows of another host are
not carried over under this host's record); `python benchmarks/summarize.py` prints the table and
the goal counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import alternating_rounds, cpu_features, rounds_argument  # noqa: E402
from edgepipe.backends.tflite import delegation  # noqa: E402
from edgepipe.backends.tflite.runtime import make_interpreter  # noqa: E402
from tests.realmodels import corpus, evaluate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "arm_speed.json"
# The corpus's architectures (the unit for "fully delegated"): an architecture counts when
# every model of it does. Models of one network design share one whatever package ships them.
ARCHITECTURES = {
    "ocr_rec": "SVTR recognizer (PP-OCRv4 rec)",
    "ocr_det": "DBNet detector (PP-OCRv4 det)",
    "ocr_cls": "MobileNetV3 / PP-LCNet classifier",
    "orientation": "MobileNetV3 / PP-LCNet classifier",
    "timm_mobilenetv3": "MobileNetV3 / PP-LCNet classifier",
    "yolo_det": "YOLOv8 detector",
    "layout": "PicoDet detector",
    "mtcnn_pnet": "MTCNN face detector",
    "mtcnn_rnet": "MTCNN face detector",
    "mtcnn_onet": "MTCNN face detector",
    "timm_resnet": "ResNet / ResNeXt",
    "timm_resnext": "ResNet / ResNeXt",
    "timm_convnext": "ConvNeXt",
    "timm_vit": "ViT",
    "vad_lstm": "Silero VAD (STFT, conv encoder, LSTM)",
    "vad_if": "Silero VAD (STFT, conv encoder, LSTM)",
    "wake_melspec": "openWakeWord log-mel frontend (STFT as conv, top-dB floor)",
    "wake_embedding": "openWakeWord speech embedding (conv, LeakyReLU)",
    "wake_timer": "openWakeWord wake-word head (dense)",
    "magika": "Magika byte classifier (one-hot, dense, conv1d)",
    "captcha_rec": "ddddocr captcha recognizer (CNN, BiLSTM, CTC)",
    "captcha_rec_old": "ddddocr captcha recognizer (CNN, BiLSTM, CTC)",
    "captcha_det": "YOLOX detector (ddddocr click captchas)",
    "smart_turn": "Whisper-tiny encoder turn detector (pipecat Smart Turn)",
}
ARM_MODELS = [name for name, spec in corpus.MODELS.items()
              if not (spec.refused_node and "arm-cpu" in spec.refused_on)]
# big inputs: fewer invocations per round so a shared 2-core host finishes (rounds stay >= 3)
ITERATIONS = {"layout": 3, "ocr_det": 5, "yolo_det": 5, "captcha_det": 5}
ROUND_MS, MAX_ITERATIONS = 100.0, 500  # small models: enough invocations for a round of ~100 ms


def build(name: str, work: Path) -> tuple[Path | None, dict]:
    """`edgepipe build --target arm-cpu` as tests/test_real_models.py runs it (calibration only)."""
    spec = corpus.MODELS[name]
    data = evaluate.write_data(name, work / name)
    out = work / name / "bundle"
    args = ["build", *evaluate.model_argument(name), "--target", "arm-cpu", "--calib", str(data.calib_file),
            "--no-host-report", "--out", str(out)]
    if spec.input_shape_flag:
        args += ["--input-shape", f"{spec.input_name}:" + "x".join(map(str, spec.shape))]
    args += [f"--input-value={key}={value}" for key, value in spec.input_values]
    start = time.perf_counter()
    proc = evaluate.cli(*args, cwd=work / name, timeout=3600)
    row = {"build_s": round(time.perf_counter() - start, 2)}
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["failed"]
        return None, {**row, "error": lines[-1][:400]}
    row["build_line"] = next((line.split("  ")[-1].strip() for line in proc.stdout.splitlines()
                              if "XNNPACK" in line), None)
    return out, row


def corpus_builds(names: list[str], work: Path, rows: dict):
    """Each corpus model of `names` built for arm-cpu with its data and ONNX Runtime FP32 reference:
    yields (name, bundle, data, reference, load at the start); a failed build's row goes to `rows`."""
    for name in names:
        load_start = os.getloadavg()
        bundle, built = build(name, work)
        if bundle is None:
            rows[name] = built
            continue
        data = evaluate.write_data(name, work / name)
        yield name, bundle, data, evaluate.fp32_reference(name, data.eval), load_start


def load_window(start) -> dict:
    """The 1/5/15-minute load averages at a row's start and now (the host is shared)."""
    return {"start": [round(x, 2) for x in start], "end": [round(x, 2) for x in os.getloadavg()]}


def write_results(path: Path, result: dict) -> None:
    """`result` with the host's CPU features and the LiteRT version the timings ran on."""
    import ai_edge_litert

    result = {"host": cpu_features(), "litert": getattr(ai_edge_litert, "__version__", "?"), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


def feed_for(interpreter) -> None:
    """Random float inputs; integer ones (token ids, masks) zeros, an index every table holds
    (random normals cast to int32 are negative ids half the time: GATHER refuses them)."""
    import numpy as np

    rng = np.random.default_rng(1)
    for detail in interpreter.get_input_details():
        if np.issubdtype(detail["dtype"], np.floating):
            value = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
        else:
            value = np.zeros(detail["shape"], detail["dtype"])
        interpreter.set_tensor(detail["index"], value)


def timed_pair(paths: list[Path], threads: int, rounds: int, iterations: int) -> tuple[list[float], int]:
    """(median over `rounds` of each model's median latency (ms) in that round, invocations per
    round); models alternate. A round has at least `iterations` invocations and lasts about
    ROUND_MS for the slower model (up to MAX_ITERATIONS), so sub-millisecond models are not timed
    on a handful of calls."""
    interpreters = [make_interpreter(path, "xnnpack", threads) for path in paths]
    slowest = 0.0
    for interpreter in interpreters:
        feed_for(interpreter)
        for _ in range(2):
            start = time.perf_counter()
            interpreter.invoke()
        slowest = max(slowest, (time.perf_counter() - start) * 1000.0)
    iterations = max(iterations, min(MAX_ITERATIONS, math.ceil(ROUND_MS / max(slowest, 1e-3))))
    timed = alternating_rounds({index: interpreter.invoke for index, interpreter in enumerate(interpreters)},
                               rounds, iterations, warmup=0)
    return [timed[index]["ms"] for index in range(len(paths))], iterations


def measure(name: str, bundle: Path, rounds: int, iterations: int) -> dict:
    """Delegation, transposes (the ONNX side: the shipped file, or the factory's torch export as
    the build makes it) and the alternating int8 / fp32 timings."""
    int8, fp32 = bundle / "model.tflite", bundle / "model.fp32.tflite"
    row = {"int8": delegation.measure(int8), "fp32": delegation.measure(fp32),
           "tflite_transposes": evaluate.tflite_transposes(int8),
           "onnx_transposes": evaluate.onnx_transposes(evaluate.peer_source(name, bundle.parent)), "latency_ms": {}}
    row["fully_delegated"] = delegation.fully_delegated(row["int8"])
    row["transposes_ok"] = row["tflite_transposes"] <= row["onnx_transposes"]
    for threads in (1, 4):
        (int8_ms, fp32_ms), used = timed_pair([int8, fp32], threads, rounds, iterations)
        row["latency_ms"][str(threads)] = {"int8": round(int8_ms, 4), "fp32": round(fp32_ms, 4),
                                           "int8_over_fp32": round(int8_ms / fp32_ms, 3), "iterations": used}
    return row


def goals(rows: dict) -> dict:
    """The issue's goals over the measured rows: architectures fully delegated, transposes."""
    by_architecture: dict[str, list[bool]] = {}
    for name, row in rows.items():
        by_architecture.setdefault(ARCHITECTURES.get(name, name), []).append(bool(row.get("fully_delegated")))
    delegated = sorted(a for a, flags in by_architecture.items() if all(flags))
    over = sorted(name for name, row in rows.items() if not row.get("transposes_ok"))
    return {"architectures": len(by_architecture), "architectures_fully_delegated": delegated,
            "models_fully_delegated": sum(bool(r.get("fully_delegated")) for r in rows.values()),
            "models": len(rows), "transposes_over_onnx": over}


def same_host_rows(path: Path) -> dict:
    """The rows of a results file measured on a CPU with this host's features, else none (an
    int8 / fp32 ratio belongs to the CPU it ran on: AMX, VNNI, ARM dot product)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("host") != cpu_features():
        print(f"{path.name} was measured on another host ({data.get('host', {}).get('cpu')}): its rows are not "
              "carried over", flush=True)
        return {}
    return data.get("models", {})


def chosen_models(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The comma-separated corpus models of a --models option; an unknown name is a usage error."""
    names = text.split(",")
    unknown = [n for n in names if n not in ARM_MODELS]
    if unknown:
        parser.error(f"unknown models {unknown} (choose from {ARM_MODELS})")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ARM_MODELS), help=f"subset of: {','.join(ARM_MODELS)}")
    parser.add_argument("--rounds", type=rounds_argument, default=3,
                        help="alternating timing rounds (median reported), >= 3")
    parser.add_argument("--iterations", type=int, default=10,
                        help="least invocations per round (fewer for big inputs; more for fast models)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    args = parser.parse_args()
    names = chosen_models(parser, args.models)
    corpus.fetch_all()
    rows = {name: row for name, row in same_host_rows(args.results).items()
            if name in ARM_MODELS and name not in names}
    with tempfile.TemporaryDirectory(prefix="arm-speed-") as tmp:
        for name in names:
            load_start = os.getloadavg()
            bundle, row = build(name, Path(tmp))
            spec = corpus.MODELS[name]
            iterations = min(args.iterations, ITERATIONS.get(name, args.iterations))
            row.update(description=spec.description, architecture=ARCHITECTURES.get(name, name),
                       shape=list(spec.shape), iterations=iterations, rounds=args.rounds)
            if bundle is not None:
                row.update(measure(name, bundle, args.rounds, iterations))
            row["loadavg"] = load_window(load_start)
            rows[name] = row
            print(name, json.dumps({k: row.get(k) for k in ("int8", "tflite_transposes", "onnx_transposes",
                                                              "latency_ms", "loadavg", "error")}), flush=True)
            ordered = {name: rows[name] for name in ARM_MODELS if name in rows}
            write_results(args.results, {"goals": goals(ordered), "models": ordered})  # each row as it lands


if __name__ == "__main__":
    main()
