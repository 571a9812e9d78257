"""Token-ID text classifiers (int64 input_ids + attention_mask) built through `edgepipe build`.

What it measures: the int8 model each target deploys against ONNX Runtime FP32 on the exported
file, on padded samples (4-15 real tokens of 16): logits SQNR and argmax agreement, for both
PyTorch exporters (legacy TorchScript, opset 17; the default dynamo exporter, the committed file
in tests/dynamo_exported), on arm-cpu (the .tflite in LiteRT with XNNPACK, with its partition
count and the ops left on builtin kernels) and jetson (the Q/DQ ONNX in ONNX Runtime, host
emulation), and on arm-cpu once more with the embedding lookup kept float (`precision.float_nodes`)
to compare the int8 table with a float island. The model is tests/fixture_models.py's
TokenClassifier (untrained weights: its logits are close together, so argmax agreement is a
harder test than on a trained classifier).

    python benchmarks/token_models.py   # writes benchmarks/results/token_models.json
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fixture_models  # noqa: E402

CALIB, EVAL = 256, 200


def export_legacy(path: Path) -> Path:
    import torch

    model = fixture_models.build_token_classifier()
    feed = {k: torch.from_numpy(v) for k, v in fixture_models.token_batch(1, 0).items()}
    torch.onnx.export(model, (feed["input_ids"], feed["attention_mask"]), str(path), input_names=list(feed),
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def deployed(bundle: Path, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    if (bundle / "model.tflite").exists():
        from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite

        io = json.loads((bundle / "manifest.json").read_text())["io"]
        interpreter = make_interpreter(bundle / "model.tflite")
        rows = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(len(feed["input_ids"]))]
        return np.concatenate([run_tflite(bundle / "model.tflite", io, row, interpreter=interpreter)["logits"]
                               for row in rows])
    session = ort.InferenceSession(str(bundle / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feed.items()})[0]
                           for i in range(len(feed["input_ids"]))])


def sqnr_db(reference, got) -> float:
    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((got - reference) ** 2), 1e-30)))


def measure(model: Path, target: str, work: Path, float_nodes: list[str] | None = None) -> dict:
    import onnxruntime as ort

    np.savez(work / "calib.npz", **fixture_models.token_batch(CALIB, 1))
    feed = fixture_models.token_batch(EVAL, 2)
    np.savez(work / "eval.npz", **feed)
    bundle = work / f"bundle-{target}"
    args = [sys.executable, "-m", "edgepipe", "build", "--model", str(model), "--target", target,
            "--calib", str(work / "calib.npz"), "--eval", str(work / "eval.npz"), "--out", str(bundle)]
    if float_nodes:
        (work / "edgepipe.yaml").write_text(json.dumps({"precision": {"float_nodes": float_nodes}}))
        args += ["--config", str(work / "edgepipe.yaml")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=work)
    if done.returncode:
        raise SystemExit(done.stderr)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {k: v[i:i + 1] for k, v in feed.items()})[0] for i in range(EVAL)])
    got = deployed(bundle, feed)
    row = {"target": target, "logits_sqnr_db": round(sqnr_db(reference, got), 2),
           "argmax_agreement": float(np.mean(reference.argmax(1) == got.argmax(1))), "eval_samples": EVAL,
           "calibration_samples": CALIB, "float_nodes": float_nodes or []}
    line = next((l for l in done.stdout.splitlines() if l.startswith("backend")), "")
    delegation = re.search(r"XNNPACK int8: (.*)$", line)
    if delegation:
        row["xnnpack"] = delegation.group(1).strip()
        row["tflite_bytes"] = (bundle / "model.tflite").stat().st_size
    calibration = json.loads((bundle / "calibration.json").read_text())
    row["unbounded_tensors"] = len(calibration.get("unbounded", []))
    return row


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"legacy_opset17": export_legacy(tmp / "legacy.onnx"),
                  "dynamo": ROOT / "tests" / "dynamo_exported" / "token_classifier.onnx"}
        embedding = {"legacy_opset17": "/emb/Gather", "dynamo": "node_embedding"}
        for exporter, path in models.items():
            for target, float_nodes in (("arm-cpu", None), ("jetson", None), ("arm-cpu", [embedding[exporter]])):
                work = tmp / f"{exporter}-{target}-{bool(float_nodes)}"
                work.mkdir()
                row = {"exporter": exporter, **measure(path, target, work, float_nodes)}
                print(json.dumps(row))
                rows.append(row)
    out = ROOT / "benchmarks" / "results" / "token_models.json"
    out.write_text(json.dumps({"benchmark": "token_models", "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
