"""How close the float graph edgepipe rebuilds from a QOperator file is to the model it came from,
and what the rebuilt model deploys at.

The four float models of tests/test_qoperator.py (residual CNN, MobileNet-like block, MatMul / Gemm /
Softmax head, Concat / MaxPool / Resize / Pad / Split pyramid) quantized by ONNX Runtime's
`quantize_static(quant_format=QOperator)`, with uint8 and with int8 activations (int8 per-channel
weights), 16 calibration samples. On 32 held-out samples, per output, worst SQNR in dB of:
- rebuilt_vs_float: ONNX Runtime on the rebuilt float graph vs on the original float model;
- shipped_vs_float: ONNX Runtime on the shipped int8 file vs on the original float model;
- rebuilt_vs_shipped: the rebuilt float graph vs the shipped int8 file;
- deployed_vs_rebuilt[target]: `edgepipe build` of the shipped file (CLI, 32 calibration samples),
  its int8 model (arm-cpu: LiteRT, jetson: the Q/DQ ONNX in ONNX Runtime) vs ONNX Runtime FP32 on
  the rebuilt float graph.

Run by hand:  python benchmarks/qoperator_sqnr.py
Writes benchmarks/results/qoperator_sqnr.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgepipe.dequantize import float_from_quantized  # noqa: E402
from tests import test_qoperator as cases  # noqa: E402
from tests.helpers import deployed_outputs, run_cli, sqnr_db  # noqa: E402


def quantize(name: str, activations: str, folder: Path) -> tuple[Path, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    float_path, qop_path = folder / f"{name}.float.onnx", folder / f"{name}.{activations}.onnx"
    onnx.save(cases.MODELS[name][0](np.random.default_rng(0)), str(float_path))
    kind = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
    quantize_static(str(float_path), str(qop_path), Reader(cases._feeds(name, 16, seed=0)),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=kind,
                    weight_type=QuantType.QInt8)
    return float_path, qop_path


def worst(references: list, values: list) -> float:
    return round(min(sqnr_db(r, v.reshape(r.shape)) for r, v in zip(references, values)), 1)


def measure(name: str, activations: str, folder: Path) -> dict:
    float_path, qop_path = quantize(name, activations, folder)
    rebuilt, count = float_from_quantized(onnx.load(str(qop_path)))
    feeds = cases._feeds(name, 32, seed=1)
    original, ours, int8 = cases._run(str(float_path), feeds), cases._run(rebuilt, feeds), cases._run(str(qop_path), feeds)
    row = {"model": name, "activations": activations, "rewritten_nodes": count,
           "shipped_ops": sorted({n.op_type for n in onnx.load(str(qop_path)).graph.node}),
           "rebuilt_ops": sorted({n.op_type for n in rebuilt.graph.node}),
           "rebuilt_vs_float": worst(original, ours), "shipped_vs_float": worst(original, int8),
           "rebuilt_vs_shipped": worst(int8, ours), "deployed_vs_rebuilt": {}}
    np.savez(folder / "calib.npz", x=cases._samples(name, 32, seed=5))
    for target in ("arm-cpu", "jetson"):
        out = folder / f"{name}.{activations}.{target}"
        proc = run_cli("build", "--model", str(qop_path), "--target", target, "--calib", str(folder / "calib.npz"),
                       "--no-host-report", "--out", str(out), cwd=folder)
        if proc.returncode:
            row["deployed_vs_rebuilt"][target] = proc.stderr.strip().splitlines()[-1]
            continue
        got = [np.concatenate(o) for o in zip(*(deployed_outputs(out, feed) for feed in feeds))]
        row["deployed_vs_rebuilt"][target] = worst(ours, got)
    return row


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(cases.MODELS):
            for activations in ("uint8", "int8"):
                rows.append(measure(name, activations, Path(tmp)))
                print(json.dumps(rows[-1]))
    out = ROOT / "benchmarks" / "results" / "qoperator_sqnr.json"
    out.write_text(json.dumps({"benchmark": "qoperator_sqnr", "held_out_samples": 32, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
