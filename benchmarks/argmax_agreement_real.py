"""Per-output argmax agreement on real sequence models: the flattened figure run.py used to report
vs the per-position figure it reports now (quantmath.class_axis).

Why: a [N, T, C] tagger or CTC head was reported as "argmax agreement 0.5" at 35 dB, one argmax
over T * C scores per sample. This builds corpus models as shipped for arm-cpu through the CLI,
runs the bundle's own run.py, and recomputes both figures independently from LiteRT outputs of
model.tflite and ONNX Runtime FP32 outputs of the shipped file (tests/realmodels/evaluate.py).

Run by hand:  python benchmarks/argmax_agreement_real.py [--models tashkeel_rawi,captcha_rec]
Writes benchmarks/results/argmax_agreement_real.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgepipe import quantmath  # noqa: E402
from tests.realmodels import corpus, evaluate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "argmax_agreement_real.json"


def flattened(reference: np.ndarray, test: np.ndarray, samples: int) -> float:
    """The figure before the change: one argmax over each flattened sample (the outputs of all
    samples joined on their first axis, a time-major [T, 1, C] one too)."""
    return float(np.mean(reference.reshape(samples, -1).argmax(1) == test.reshape(samples, -1).argmax(1)))


def measure(name: str, work: Path) -> dict:
    data = evaluate.write_data(name, work)
    bundle = work / "bundle"
    built = evaluate.build(name, "arm-cpu", data, bundle)
    if built.returncode:
        return {"model": name, "error": built.stderr.strip().splitlines()[-1][:300]}
    run = subprocess.run([sys.executable, str(bundle / "run.py"), "--where", "host", "--threads", "1",
                          "--iterations", "3", "--warmup", "1"], capture_output=True, text=True, timeout=1800)
    if run.returncode:
        return {"model": name, "error": run.stderr.strip().splitlines()[-1][:300]}
    reported = json.loads((bundle / "report" / "results.json").read_text())["accuracy"]["outputs"]
    reference = evaluate.fp32_reference(name, data.eval)
    int8 = evaluate.bundle_outputs(name, "arm-cpu", bundle, data.eval)["int8"]
    names = [o["onnx_name"] if "onnx_name" in o else o["name"] for o in evaluate.manifest(bundle)["io"]["outputs"]]
    rows = []
    for output, ref, got in zip(names, reference, int8):
        got = got.reshape(ref.shape)
        entry = reported.get(output, {})
        rows.append({"output": output, "shape": list(ref.shape[1:]), "sqnr_db": quantmath.sqnr_db(ref, got),
                     "class_axis": quantmath.class_axis(ref.shape),
                     "flattened_agreement": flattened(ref, got, len(data.eval)),
                     "per_position_agreement": quantmath.argmax_agreement(ref, got),
                     "run_py_agreement": entry.get("argmax_agreement"), "run_py_axis": entry.get("argmax_axis")})
    note = ("run.py compares with the bundle's reference.onnx (float layers); the independent figures use ONNX "
            "Runtime on the shipped int8 file, whose run-time quantization noise moves a few decisions"
            if corpus.MODELS[name].shipped_quantized else None)
    return {"model": name, "samples": int(len(data.eval)), "outputs": rows, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tashkeel_rawi,captcha_rec")
    args = parser.parse_args()
    corpus.fetch_all()
    models = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"agree-{name}-") as work:
            models.append(measure(name, Path(work)))
            print(json.dumps(models[-1]), flush=True)
    RESULTS.write_text(json.dumps({"code": "benchmarks/argmax_agreement_real.py", "host": platform.machine(),
                                   "models": models}, indent=1) + "\n")


if __name__ == "__main__":
    main()
