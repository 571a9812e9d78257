"""The XNNPACK-friendly lowerings give the same answers on emulated aarch64 as on x86.

A small model with every form `ops/` writes to stay inside the delegate (grouped CONV_2D, PRelu
with slopes below and above 1 as 1x1 depthwise convs and an ADD, a standalone Relu as a
saturating QUANTIZE, a padded MaxPool after it over a zero PAD, HardSigmoid by saturation, nearest 2x upscaling as CONCATENATION + RESHAPE, an
unequal Split as SLICEs, Softmax in float between DEQUANTIZE / QUANTIZE) runs with the runner
of tests/test_arm_emulation.py in LiteRT on x86 and under qemu-aarch64, and in tflite-runtime
2.14 there (the older runtime boards still carry). Emulated timings are never reported.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from edgepipe import emulation
from tests.ci import missing_tool
from tests.test_arm_emulation import RUNNER, RUNS, int8_agreement, load_results, write_job
from tests.tflite_harness import convert, make_model, structured_inputs

RNG = np.random.default_rng(23)


def _model():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c1", "slope"], ["p"], name="prelu"),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["mp"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["mp", "w2"], ["g"], name="grouped", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["g"], ["h"], name="gate", alpha=0.3, beta=0.5),
             helper.make_node("Mul", ["g", "h"], ["m"], name="gated"),
             helper.make_node("Resize", ["m", "", "s"], ["u"], name="up", mode="nearest"),
             helper.make_node("Conv", ["u", "w3"], ["c3"], name="head", strides=[2, 2]),
             helper.make_node("Split", ["c3", "parts"], ["c3a", "c3b"], name="split", axis=1),
             helper.make_node("Concat", ["c3b", "c3a"], ["c3r"], name="reorder", axis=1),
             helper.make_node("Softmax", ["c3r"], ["y"], name="softmax", axis=1)]
    return make_model(nodes, {"x": [1, 4, 8, 8]}, ["y"], {
        "w1": RNG.normal(size=(8, 4, 3, 3)).astype(np.float32) * 0.4,
        "slope": RNG.uniform(0.05, 1.5, size=(8, 1, 1)).astype(np.float32),
        "parts": np.array([2, 4], np.int64),
        "w2": RNG.normal(size=(8, 2, 3, 3)).astype(np.float32) * 0.4,
        "s": np.array([1, 1, 2, 2], np.float32),
        "w3": RNG.normal(size=(6, 8, 2, 2)).astype(np.float32) * 0.4})


@pytest.mark.arm
@pytest.mark.slow
def test_delegated_lowerings_agree_on_aarch64(tmp_path):
    reason = emulation.available()
    if reason is not None:
        missing_tool(f"arm64 emulation unavailable: {reason}")
    rootfs = emulation.ensure_rootfs(log=print)
    model = _model()
    feeds = structured_inputs(model, 16, seed=4)
    result, calibration = convert(model, tmp_path, feeds[:8])
    outside_forms = {"PRELU", "MINIMUM", "RESIZE_NEAREST_NEIGHBOR", "SPLIT", "SPLIT_V", "PADV2", "RELU"}
    assert not outside_forms & set(result["op_histogram"])
    models = {"fp32": tmp_path / "model.fp32.tflite", "int8": tmp_path / "model.tflite"}
    np.save(tmp_path / "inputs.npy", np.stack([f["x"][0].transpose(1, 2, 0) for f in feeds]).astype(np.float32))
    (tmp_path / "runner.py").write_text(RUNNER)
    host_job = write_job(tmp_path / "x86", models, tmp_path / "inputs.npy", RUNS[:4])
    subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(host_job)], check=True, timeout=300)
    arm_job = write_job(tmp_path / "arm", models, tmp_path / "inputs.npy", RUNS)
    proc = emulation.run_in_arm64(rootfs, tmp_path / "runner.py", [arm_job], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (x86_meta, x86), (arm_meta, arm) = load_results(tmp_path / "x86"), load_results(tmp_path / "arm")
    assert arm_meta["machine"] == "aarch64"
    assert arm_meta["runs"]["int8-xnnpack"]["ops"].count("DELEGATE") == 1  # one partition on ARM too
    step = [float(result["io"]["outputs"][0]["quantization"]["scale"]) if result["io"]["outputs"][0]["quantization"]
            else calibration.asymmetric_params("y")[0]]
    for run, x86_run in (("int8-xnnpack", "int8-xnnpack"), ("int8-builtin", "int8-builtin"),
                         ("int8-tflite-runtime", "int8-builtin")):
        _, within_one, max_steps, _ = int8_agreement(x86[x86_run], arm[run], step)
        print(f"{run} (ARM) vs {x86_run} (x86): within 1 step {within_one:.4%}, max {max_steps:.1f} steps")
        # as for the demo: ARM's builtin kernels round a few values differently (the softmax at the
        # end amplifies a one-step logit difference); XNNPACK, the default path, agrees closely
        assert within_one >= 0.99, (run, within_one, max_steps)
        if run == "int8-xnnpack":
            assert max_steps <= 2.0, max_steps
    for run in ("fp32-xnnpack", "fp32-builtin"):
        for ref, test in zip(x86[run], arm[run]):
            np.testing.assert_allclose(test, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
