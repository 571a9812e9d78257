"""Where our int8 recognizer parts from ai-edge-quantizer's, tensor by tensor.

Both int8 files come from the same float graph: `model.fp32.tflite` of an `edgepipe build
--target arm-cpu` bundle of the PP-OCRv4 recognizer as shipped (the accuracy_goals.py data: 64
calibration lines, 200 eval lines of seed 2). "ours" is the bundle's `model.tflite`; "aeq" is
ai-edge-quantizer (`static_wi8_ai8`, its min/max calibration) applied to that `model.fp32.tflite`
with the same 64 calibration lines. Per calibration draw (int8_noise_floor.py's three: seeds 1,
3, 4) both files' readings (accuracy_goals.py metrics, XNNPACK, all eval lines) and, per time
step, the argmax flips and ours' systematic blank/space shift. On the first draw every file runs
in LiteRT's reference kernels with `experimental_preserve_all_tensors=True` on the first
`--lines` eval lines; each activation tensor of a quantized file whose name is also a float
tensor of `model.fp32.tflite` (both writers keep the float graph's names) is dequantized and
compared with it: SQNR in dB, in the fp32 file's operator order, and the tensors where ours is
`--margin` dB or more below aeq ("parting").

AEQ is not an edgepipe dependency: it runs in a throwaway venv given by `--aeq-python`
(python3.11 -m venv --system-site-packages /tmp/aeq-venv && /tmp/aeq-venv/bin/pip install
ai-edge-quantizer); this file is its worker too (`--aeq-worker`, numpy and AEQ only).

Run by hand:  python benchmarks/aeq_tensor_diff.py --aeq-python /tmp/aeq-venv/bin/python [--config cfg.yaml]
Writes benchmarks/results/aeq_tensor_diff.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = "ocr_rec"


def aeq_worker(fp32_path: str, calib_npz: str, out_path: str) -> None:
    """Runs inside the AEQ venv: quantize `fp32_path` with the NCHW lines of `calib_npz`."""
    from ai_edge_quantizer import quantizer, recipe

    calib = np.load(calib_npz)
    lines = calib[calib.files[0]]
    data = {"serving_default": [{"x": s[None].transpose(0, 2, 3, 1).astype(np.float32)} for s in lines]}
    quant = quantizer.Quantizer(fp32_path, recipe.static_wi8_ai8())
    result = quant.quantize(quant.calibrate(data), enable_progress_report=False)
    Path(out_path).write_bytes(bytes(result.quantized_model))


def all_tensors(path: Path, lines: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """name -> float values over `lines` (dequantized when int8) and the operator-output order."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    source = interp.get_input_details()[0]
    details = interp.get_tensor_details()
    order = [details[i]["name"] for op in interp._get_ops_details() for i in op["outputs"]]
    values: dict[str, list[np.ndarray]] = {}
    for line in lines:
        value = line[None].transpose(0, 2, 3, 1)
        if source["dtype"] == np.int8:
            scale, zero = source["quantization"]
            value = np.clip(np.round(value / scale) + zero, -128, 127)
        interp.set_tensor(source["index"], np.ascontiguousarray(value, source["dtype"]))
        interp.invoke()
        for d in details:
            if d["dtype"] not in (np.int8, np.float32, np.int16):
                continue
            try:
                raw = interp.get_tensor(d["index"])
            except ValueError:
                continue
            if d["dtype"] != np.float32:
                scales, zeros = d["quantization_parameters"]["scales"], d["quantization_parameters"]["zero_points"]
                if len(scales) != 1:
                    continue  # per-channel: a weight
                raw = (raw.astype(np.float32) - zeros[0]) * scales[0]
            values.setdefault(d["name"], []).append(np.asarray(raw, np.float32).ravel())
    return {k: np.concatenate(v) for k, v in values.items()}, order


def tensor_rows(fp32: dict, fp32_order: list[str], files: dict[str, dict]) -> list[dict]:
    from tests.realmodels.evaluate import sqnr_db

    rows = []
    for name in dict.fromkeys(fp32_order):
        if name not in fp32:
            continue
        row = {"tensor": name}
        for key, values in files.items():
            if name in values and values[name].shape == fp32[name].shape:
                row[key] = round(sqnr_db(fp32[name], values[name]), 2)
        if len(row) > 1:
            rows.append(row)
    return rows


def step_profile(fp32: np.ndarray, out: np.ndarray) -> dict:
    """Per time step: argmax flips vs FP32, and the mean shift of the blank (class 0) and space
    (last class) centered log-probabilities (a systematic shift, not noise, moves a CTC reading's
    spaces). Meaningless for an int8 probability output (log of its zeros): ours only."""
    from accuracy_goals import centered_log_probs

    shift = centered_log_probs(out) - centered_log_probs(fp32)
    return {"flips": [int(v) for v in (fp32.argmax(-1) != out.argmax(-1)).sum(0)],
            "blank_shift": [round(float(v), 3) for v in shift[..., 0].mean(0)],
            "space_shift": [round(float(v), 3) for v in shift[..., -1].mean(0)]}


def tied_steps(out: np.ndarray) -> int:
    """Time steps whose two largest probabilities are equal (an int8 probability output's 1/256
    grid; greedy decoding then takes the lower class index, the blank before any character)."""
    top = np.sort(out, axis=-1)[..., -2:]
    return int(np.sum(top[..., 0] == top[..., 1]))


def first_parting(rows: list[dict], margin: float) -> list[dict]:
    """Rows where ours is `margin` dB or more below aeq, in graph order."""
    return [r for r in rows if "ours" in r and "aeq" in r and r["aeq"] - r["ours"] >= margin]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aeq-worker", nargs=3, metavar=("FP32", "CALIB", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--aeq-python", default="/tmp/aeq-venv/bin/python")
    parser.add_argument("--config", help="edgepipe.yaml of our build (a lever)")
    parser.add_argument("--calib-seeds", default="1,3,4", help="calibration draws (int8_noise_floor.py's three)")
    parser.add_argument("--lines", type=int, default=16, help="eval lines for the per-tensor comparison")
    parser.add_argument("--margin", type=float, default=3.0, help="dB below aeq that counts as parting")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/aeq_tensor_diff.json"))
    args = parser.parse_args()
    if args.aeq_worker:
        aeq_worker(*args.aeq_worker)
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import accuracy_goals as goals
    import real_models
    from tests.realmodels import evaluate as corpus_eval

    work = Path(tempfile.mkdtemp(prefix="aeq_tensor_diff_"))
    config = Path(args.config).resolve() if args.config else None
    data, fp32_out, report = goals.recognizer_study(NAME, "rec_arm", work, config=config.read_text() if config else None)
    texts = [str(t) for t in data["texts"]]
    calibration_file = work / f"{NAME}_calib.npz"
    draws = []
    for seed in [int(s) for s in args.calib_seeds.split(",")]:
        if seed != goals.SEEDS["calib"]:  # the other draws of int8_noise_floor.py
            calib = real_models.make_inputs(NAME, report["calib_samples"], seed)["x"]
            np.savez(calibration_file, **{real_models.MODELS[NAME].input_name: calib})
        bundle, info = goals.cli_build(NAME, "arm-cpu", work, f"ours_seed{seed}", config)
        aeq_path = work / f"aeq_seed{seed}.tflite"
        subprocess.run([args.aeq_python, __file__, "--aeq-worker", str(bundle / "model.fp32.tflite"),
                        str(calibration_file), str(aeq_path)], check=True, capture_output=True)
        files = {"ours": bundle / "model.tflite", "aeq": aeq_path}
        io = json.loads((bundle / "manifest.json").read_text())["io"]
        outputs = {key: corpus_eval.invoke(corpus_eval.interpreter(path), io, data["x"])[0] for key, path in files.items()}
        readings = {key: {k: float(v) for k, v in goals.reading_metrics(fp32_out, out, texts).items()}
                    for key, out in outputs.items()}
        draws.append({"calib_seed": seed, "build": info, "readings": readings,
                      "steps": {"ours": step_profile(fp32_out, outputs["ours"]),
                                "aeq_flips": step_profile(fp32_out, outputs["aeq"])["flips"],
                                "aeq_tied_steps": tied_steps(outputs["aeq"])}})
        print(seed, json.dumps({k: round(v["fp32_agreement"], 4) for k, v in readings.items()}), flush=True)
        if len(draws) == 1:  # the per-tensor walk on the first draw
            lines = data["x"][: args.lines]
            fp32, order = all_tensors(bundle / "model.fp32.tflite", lines)
            rows = tensor_rows(fp32, order, {key: all_tensors(path, lines)[0] for key, path in files.items()})
    means = {key: {m: float(np.mean([d["readings"][key][m] for d in draws]))
                   for m in ("fp32_agreement", "char_accuracy", "step_agreement", "sqnr_db")} for key in ("ours", "aeq")}
    report.update({"draws": draws, "mean_over_draws": means, "tensor_lines": args.lines, "tensor_draw": draws[0]["calib_seed"],
                   "margin_db": args.margin, "parting": first_parting(rows, args.margin), "tensors": rows})
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print("parting rows:", len(report["parting"]), report["parting"][:5])
    print(json.dumps(means, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
