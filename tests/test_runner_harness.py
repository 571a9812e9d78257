"""The bundle's run.py end to end against a real .tflite built by the TFLite backend.

The expected numbers are computed independently here (our own interpreter loop + quantmath),
never copied from a previous run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepipe import graph, quantmath
from edgepipe.backends.tflite.build import build_tflite
from edgepipe.delivery.bundle import write_bundle
from tests.helpers import tiny_conv_model
from tests.tflite_harness import minmax_calibration, structured_inputs

SAMPLES = 24
TARGET = {"name": "arm-cpu", "backend": "tflite", "description": "Arm CPU (test)", "precision": "int8",
          "layout": "NHWC", "runtime_requirements": ["ai-edge-litert>=2.3"], "device_readme": ""}


def make_bundle(root: Path, **options) -> tuple[Path, dict]:
    model = tiny_conv_model()
    feeds = structured_inputs(model, SAMPLES, seed=3)
    backend_dir = root / "backend"
    built = build_tflite(model, minmax_calibration(model, feeds), backend_dir, options)
    session = graph.make_session(model)
    inputs = np.concatenate([f["x"] for f in feeds])
    reference = np.concatenate([session.run(None, f)[0] for f in feeds])
    labels = reference.argmax(axis=1)
    labels[::4] = (labels[::4] + 1) % reference.shape[1]  # some wrong labels: top1 < 1
    eval_data = {"inputs": {"x": inputs}, "labels": labels, "reference": {"y": reference}}
    bundle = root / "bundle"
    write_bundle(bundle, target=TARGET, files={f: backend_dir / f for f in built["files"]},
                 template_context={"runner_template": "runner_tflite.py.j2", "model_file": "model.tflite"},
                 io=built["io"], stages=[], source={"sha256": "0" * 64}, extra_manifest={}, eval_data=eval_data)
    return bundle, {"io": built["io"], **eval_data}


def run_py(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "run.py"), "--iterations", "100", "--warmup", "5", *args],
                          capture_output=True, text=True, timeout=120)


def interpreter_outputs(path: Path, io: dict, inputs: np.ndarray) -> np.ndarray:
    """Our own loop over the interpreter (NCHW -> NHWC, int8 I/O by hand)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    in_q, out_q = io["inputs"][0]["quantization"], io["outputs"][0]["quantization"]
    results = []
    for sample in inputs:
        x = np.transpose(sample[None], (0, 2, 3, 1))
        if inp["dtype"] == np.int8:
            x = quantmath.quantize(x, in_q["scale"], in_q["zero_point"])
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            y = quantmath.dequantize(y, out_q["scale"], out_q["zero_point"])
        results.append(np.asarray(y, dtype=np.float32))
    return np.concatenate(results)


@pytest.fixture(scope="module")
def float_io_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("harness"))


def test_run_py_measures_accuracy_agreement_and_latency(float_io_bundle):
    bundle, data = float_io_bundle
    completed = run_py(bundle, "--where", "host", "--threads", "1")
    assert completed.returncode == 0, completed.stderr
    results = json.loads((bundle / "report" / "results.json").read_text())

    ours = interpreter_outputs(bundle / "model.tflite", data["io"], data["inputs"]["x"])
    accuracy = results["accuracy"]
    assert results["samples"] == SAMPLES and results["where"] == "host" and results["verified"] is True
    assert accuracy["top1"] == pytest.approx(float(np.mean(ours.argmax(1) == data["labels"])))
    assert accuracy["fp32_top1"] == pytest.approx(float(np.mean(data["reference"]["y"].argmax(1) == data["labels"])))
    assert accuracy["top1"] < 1.0
    assert accuracy["outputs"]["y"]["sqnr_db"] == pytest.approx(quantmath.sqnr_db(data["reference"]["y"], ours), rel=1e-6)
    assert accuracy["outputs"]["y"]["cosine"] == pytest.approx(quantmath.cosine(data["reference"]["y"], ours), rel=1e-9)
    assert accuracy["argmax_agreement"] == pytest.approx(float(np.mean(ours.argmax(1) == data["reference"]["y"].argmax(1))))
    bins = accuracy["ece_bins"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == SAMPLES
    assert 0.0 <= accuracy["ece"] <= 1.0

    latency = results["latency_ms"]
    assert latency["iterations"] == 100 and len(latency["samples"]) == 100
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= max(latency["samples"]) + 1e-9
    assert results["size_bytes"] == (bundle / "model.tflite").stat().st_size
    assert results["device"]["runtime"].startswith(("ai-edge-litert", "tflite-runtime"))
    assert results["device"]["threads"] == 1 and results["peak_rss_mb"] > 0


def test_run_py_fp32_model_option_agrees_closely(float_io_bundle, tmp_path):
    bundle, _ = float_io_bundle
    out = tmp_path / "fp32.json"
    completed = run_py(bundle, "--model", "model.fp32.tflite", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    fp32 = json.loads(out.read_text())
    assert fp32["model"] == "model.fp32.tflite"
    assert fp32["accuracy"]["argmax_agreement"] == 1.0
    assert fp32["accuracy"]["outputs"]["y"]["sqnr_db"] is None or fp32["accuracy"]["outputs"]["y"]["sqnr_db"] > 80


def test_run_py_refuses_a_tampered_bundle(tmp_path):
    bundle, _ = make_bundle(tmp_path)
    model = bundle / "model.tflite"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    refused = run_py(bundle)
    assert refused.returncode != 0
    assert "model.tflite" in refused.stderr and not (bundle / "report" / "results.json").exists()
    (bundle / "eval" / "eval.npz").unlink()
    assert "eval/eval.npz: missing" in run_py(bundle).stderr


def test_run_py_quantizes_int8_model_io(tmp_path):
    bundle, data = make_bundle(tmp_path, int8_io=True)
    assert data["io"]["inputs"][0]["dtype"] == "int8"
    completed = run_py(bundle)
    assert completed.returncode == 0, completed.stderr
    results = json.loads((bundle / "report" / "results.json").read_text())
    ours = interpreter_outputs(bundle / "model.tflite", data["io"], data["inputs"]["x"])
    assert results["accuracy"]["outputs"]["y"]["sqnr_db"] == pytest.approx(quantmath.sqnr_db(data["reference"]["y"], ours), rel=1e-6)
    assert results["accuracy"]["outputs"]["y"]["sqnr_db"] > 15


def test_run_py_metrics_mirror_quantmath(float_io_bundle):
    bundle, _ = float_io_bundle
    spec = importlib.util.spec_from_file_location("bundle_run", bundle / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 10)).astype(np.float32)
    b = a + 0.05 * rng.standard_normal(a.shape).astype(np.float32)
    assert module.sqnr_db(a, b) == pytest.approx(quantmath.sqnr_db(a, b), rel=1e-12)
    assert module.cosine(a, b) == pytest.approx(quantmath.cosine(a, b), rel=1e-12)
    assert module.sqnr_db(a, a) == float("inf")
    probs = module.probabilities(a)
    assert np.allclose(probs.sum(1), 1.0) and np.array_equal(probs.argmax(1), a.argmax(1))
    nchw = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    spec_nhwc = {"layout": "NHWC", "onnx_layout": "NCHW", "dtype": "float32"}
    assert module.to_model_input(nchw, spec_nhwc).shape == (1, 4, 5, 3)
    assert np.array_equal(module.from_model_output(module.to_model_input(nchw, spec_nhwc), spec_nhwc), nchw)
