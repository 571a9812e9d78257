"""Real TensorRT: build the demo's engine with the bundle's build_engine.py and run it with the
bundle's Runner. Needs the tensorrt and pycuda packages and an NVIDIA GPU; skips with the reason
otherwise (no mocks: without TensorRT this path is simply not verified here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from edgepipe import graph, quantmath
from edgepipe.templating import render

pytestmark = pytest.mark.tensorrt


def _gpu_missing_reason() -> str | None:
    for module in ("tensorrt", "pycuda"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} Python package is not installed (pip install tensorrt pycuda; needs an NVIDIA GPU)"
    probe = subprocess.run([sys.executable, "-c", "import pycuda.driver as d; d.init(); print(d.Device.count())"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() in ("", "0"):
        return "no CUDA device visible to pycuda (driver missing or no NVIDIA GPU)"
    return None


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    reason = _gpu_missing_reason()
    if reason:
        pytest.skip(reason)
    from edgepipe.backends.tensorrt import build_tensorrt
    from edgepipe.calibrate import calibrate
    from edgepipe.data import load_dataset
    from edgepipe.demo import DEMO_PREPROCESS, demo_calib_dir, demo_data_dir
    from edgepipe.fold.batchnorm import fold_batchnorm
    from edgepipe.stages.export import run_export

    model = run_export("edgepipe.demo.model:build_demo", None, {"image": [1, 3, 32, 32]}, output_names=["logits"])
    model, _ = fold_batchnorm(model)
    specs = {"image": ((1, 3, 32, 32), np.float32)}
    calibration = calibrate(model, load_dataset(demo_calib_dir(), specs, DEMO_PREPROCESS), {"rounds": 1})
    out = tmp_path_factory.mktemp("trt_bundle")
    graph.save_model(model, out / "reference.onnx")
    result = build_tensorrt(model, calibration, out, {"build_engine": True})
    data = np.load(demo_data_dir() / "eval.npz")
    return out, model, result, data["image"][:100].astype(np.float32), data["labels"][:100]


def _runner_class():
    namespace: dict = {}
    exec(compile(render("tensorrt/runner_tensorrt.py.j2"), "runner_tensorrt.py", "exec"), namespace)
    return namespace["Runner"]


def test_engine_builds_on_host(demo_bundle):
    out, _, result, _, _ = demo_bundle
    assert result["engine_built"], result["engine_note"]
    assert (out / "model.plan").stat().st_size > 0 and "model.plan" in result["files"]
    assert (out / "timing.cache").exists()


def test_engine_output_matches_fp32(demo_bundle):
    out, model, _, images, labels = demo_bundle
    fp32 = graph.make_session(model)
    with _runner_class()(out, {}) as runner:
        (name, shape, dtype), = runner.inputs()
        assert (name, tuple(shape)) == ("image", (1, 3, 32, 32))
        got = np.concatenate([runner.infer({"image": im[None]})["logits"] for im in images])
        info = runner.describe()
    ref = np.concatenate([fp32.run(None, {"image": im[None]})[0] for im in images])
    assert quantmath.sqnr_db(ref, got) >= 20
    assert float(np.mean(ref.argmax(1) == got.argmax(1))) >= 0.95
    assert info["tensorrt"] and info["gpu"]


def test_implicit_calibration_cache_build(demo_bundle):
    import tensorrt as trt

    out, _, _, _, _ = demo_bundle
    if not hasattr(trt.BuilderFlag, "INT8"):
        pytest.skip(f"TensorRT {trt.__version__} removed implicit INT8 calibration")
    plan = out / "implicit.plan"
    result = subprocess.run([sys.executable, str(out / "build_engine.py"), "--implicit-calib", "--output", str(plan)],
                            capture_output=True, text=True, cwd=out)
    assert result.returncode == 0, result.stderr
    assert plan.stat().st_size > 0
