"""The int8 .tflite gives the same answers on real ARM instructions (qemu-aarch64) as on x86.

The shipped demo CNN (conv+BN+relu, hardswish, depthwise, residual add, pooling, classifier) is
converted by our own pipeline (export, fold, calibrate, `build_tflite`) to an fp32 and a
full-integer int8 .tflite. The same script then runs both models on the same 16 inputs
with x86 LiteRT in-process and with aarch64 LiteRT (and tflite-runtime 2.14) in ONE emulated
Python process (`edgepipe.emulation`). x86 and ARM int8 kernels may round a few values
differently, so int8 outputs are compared as argmax + "within one quantization step"; fp32
outputs within 1e-5 relative. Emulated timings are never measured or reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgepipe import emulation, quantmath
from tests.ci import missing_tool


N_INPUTS = 16
INPUT_SHAPE = (1, 16, 16, 3)
ACTIVATIONS = ("x", "c1", "dw", "res", "c2", "pool", "logits")

# The same runner on both architectures: python3 RUNNER JOB.json. Each run writes its outputs
# (stacked over inputs) to an .npz; meta.json records where and how it ran.
RUNNER = textwrap.dedent('''
    import json, platform, sys
    import numpy as np

    job = json.load(open(sys.argv[1]))
    inputs = np.load(job["inputs"])
    meta = {"machine": platform.machine(), "numpy": np.__version__, "runs": {}}
    for run in job["runs"]:
        if run["runtime"] == "ai-edge-litert":
            import ai_edge_litert as pkg
            from ai_edge_litert import interpreter as tfl
        else:
            import tflite_runtime as pkg
            from tflite_runtime import interpreter as tfl
        it = tfl.Interpreter(model_path=run["model"], num_threads=1,
                             experimental_op_resolver_type=tfl.OpResolverType[run["resolver"]])
        it.allocate_tensors()
        ops = [op["op_name"] for op in it._get_ops_details()]
        inp, outs = it.get_input_details()[0], it.get_output_details()
        results = [[] for _ in outs]
        for x in inputs:
            it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
            it.invoke()
            for acc, out in zip(results, outs):
                acc.append(it.get_tensor(out["index"])[0].copy())
        np.savez(run["out"], *[np.stack(r) for r in results])
        meta["runs"][run["name"]] = {"runtime": f"{run['runtime']} {pkg.__version__}", "ops": ops}
    json.dump(meta, open(job["meta"], "w"), indent=1)
''')


# --- the models: our own pipeline's output for the shipped demo ------------------------------

def demo_models(work):
    """fp32 + int8 .tflite of the demo exactly as `edgepipe build --target arm-cpu` makes them
    (export, fold with mean/std folded into the first conv, calibrate, lower), plus 16 eval inputs."""
    from edgepipe import config
    from edgepipe.backends.tflite import build_tflite
    from edgepipe.build import prepare_model
    from edgepipe.settings import demo_settings, typed_sections
    from edgepipe.calibrate import calibrate
    from edgepipe.pipeline import Pipeline

    settings = config.merge(config.defaults(), demo_settings())
    settings["calibration"]["max_samples"] = 64
    settings["report"]["eval_limit"] = N_INPUTS
    settings = typed_sections(settings)
    prepared = prepare_model(settings, Pipeline(None))
    calibration = calibrate(prepared.model, prepared.calib, {"method": "auto"})
    result = build_tflite(prepared.model, calibration, work, {})
    inputs = prepared.eval.stack(prepared.eval.names[0]).transpose(0, 2, 3, 1)  # NCHW eval -> NHWC model
    output = result["io"]["outputs"][0]["name"]
    return {"fp32": work / "model.fp32.tflite", "int8": work / "model.tflite"}, inputs, \
        calibration.asymmetric_params(output)[0]


# --- running on both architectures -----------------------------------------------------------

RUNS = [  # name, model, runtime, resolver
    ("int8-xnnpack", "int8", "ai-edge-litert", "AUTO"),
    ("int8-builtin", "int8", "ai-edge-litert", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"),
    ("fp32-xnnpack", "fp32", "ai-edge-litert", "AUTO"),
    ("fp32-builtin", "fp32", "ai-edge-litert", "BUILTIN_WITHOUT_DEFAULT_DELEGATES"),
    ("int8-tflite-runtime", "int8", "tflite-runtime", "AUTO"),  # ARM only (needs numpy<2)
]


def write_job(dirpath, models, inputs_path, runs):
    dirpath.mkdir(exist_ok=True)
    job = {"inputs": str(inputs_path), "meta": str(dirpath / "meta.json"),
           "runs": [{"name": name, "model": str(models[kind]), "runtime": runtime, "resolver": resolver,
                     "out": str(dirpath / f"{name}.npz")} for name, kind, runtime, resolver in runs]}
    (dirpath / "job.json").write_text(json.dumps(job))
    return dirpath / "job.json"


def load_results(dirpath):
    meta = json.loads((dirpath / "meta.json").read_text())
    outputs = {name: [a[f"arr_{i}"] for i in range(len(a.files))]
               for name in meta["runs"] for a in [np.load(dirpath / f"{name}.npz")]}
    return meta, outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    reason = emulation.available()
    if reason is not None:
        missing_tool(f"arm64 emulation unavailable: {reason}")
    rootfs = emulation.ensure_rootfs(log=print)
    work = tmp_path_factory.mktemp("arm")
    models, inputs, logits_step = demo_models(work)
    np.save(work / "inputs.npy", inputs.astype(np.float32))
    (work / "runner.py").write_text(RUNNER)

    host_job = write_job(work / "x86", models, work / "inputs.npy", RUNS[:4])
    subprocess.run([sys.executable, str(work / "runner.py"), str(host_job)], check=True, timeout=300)
    arm_job = write_job(work / "arm", models, work / "inputs.npy", RUNS)
    proc = emulation.run_in_arm64(rootfs, work / "runner.py", [arm_job], cwd=work, timeout=600)
    assert proc.returncode == 0, f"emulated runner failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return {"x86": load_results(work / "x86"), "arm": load_results(work / "arm"), "steps": [logits_step]}


def int8_agreement(ref, test, steps):
    """(argmax same for all inputs, fraction of values within 1 step, max |diff| in steps, bit-equal fraction)."""
    diffs = [np.abs(t.astype(np.float64) - r) / s for r, t, s in zip(ref, test, steps)]
    flat = np.concatenate([d.ravel() for d in diffs])
    argmax_same = bool(np.array_equal(ref[-1].argmax(axis=1), test[-1].argmax(axis=1)))
    return argmax_same, float(np.mean(flat <= 1.0 + 1e-3)), float(flat.max()), float(np.mean(flat < 1e-3))


@pytest.mark.arm
@pytest.mark.slow
def test_runs_on_emulated_aarch64_with_xnnpack(runs):
    (x86_meta, _), (arm_meta, _) = runs["x86"], runs["arm"]
    assert x86_meta["machine"] == "x86_64"
    assert arm_meta["machine"] == "aarch64"
    assert arm_meta["runs"]["int8-xnnpack"]["runtime"] == "ai-edge-litert 2.3.0"
    # The default path really is XNNPACK on ARM (a rejected node would make this a builtin run).
    assert "DELEGATE" in arm_meta["runs"]["int8-xnnpack"]["ops"]
    assert "DELEGATE" not in arm_meta["runs"]["int8-builtin"]["ops"]
    assert "CONV_2D" in arm_meta["runs"]["int8-builtin"]["ops"]


@pytest.mark.arm
@pytest.mark.slow
def test_int8_model_is_a_meaningful_quantization_of_fp32(runs):
    _, out = runs["x86"]
    fp32, int8 = out["fp32-builtin"], out["int8-builtin"]
    assert np.std(int8[-1], axis=0).max() > 5 * runs["steps"][-1]  # outputs depend on the input
    for ref, test in zip(fp32, int8):
        assert quantmath.cosine(ref, test) > 0.99
    assert np.mean(fp32[-1].argmax(axis=1) == int8[-1].argmax(axis=1)) >= 0.9


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.parametrize("run, x86_run", [("int8-xnnpack", "int8-xnnpack"), ("int8-builtin", "int8-builtin"),
                                          ("int8-tflite-runtime", "int8-builtin")])
def test_int8_arm_matches_x86(runs, run, x86_run):
    steps = runs["steps"]
    argmax_same, within_one, max_steps, bit_equal = int8_agreement(runs["x86"][1][x86_run], runs["arm"][1][run], steps)
    print(f"{run} (ARM) vs {x86_run} (x86): argmax same={argmax_same}, within 1 step={within_one:.4%}, "
          f"bit-equal={bit_equal:.4%}, max diff={max_steps:.1f} steps")
    assert argmax_same
    assert within_one >= 0.99


@pytest.mark.arm
@pytest.mark.slow
@pytest.mark.parametrize("run", ["fp32-xnnpack", "fp32-builtin"])
def test_fp32_arm_matches_x86(runs, run):
    for ref, test in zip(runs["x86"][1][run], runs["arm"][1][run]):
        print(f"{run}: max |ARM - x86| / max |x86| = {np.abs(test - ref).max() / np.abs(ref).max():.2e}")
        np.testing.assert_allclose(test, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


# --- the rootfs cache itself (no qemu needed) -----------------------------------------------

def test_available_names_the_missing_tool(monkeypatch):
    monkeypatch.setattr(emulation.shutil, "which", lambda tool: None)
    assert "qemu-aarch64-static" in emulation.available()
    monkeypatch.setattr(emulation.shutil, "which", lambda tool: None if tool == "debootstrap" else f"/usr/bin/{tool}")
    monkeypatch.setenv("EDGEPIPE_CACHE", "/nonexistent/edgepipe-cache")
    assert "debootstrap" in emulation.available()


def test_interrupted_build_is_never_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPIPE_CACHE", str(tmp_path))

    def failing_build(root, log):
        (root / "half-written").write_text("x")
        raise RuntimeError("network went away")

    monkeypatch.setattr(emulation, "_build", failing_build)
    with pytest.raises(RuntimeError, match="network went away"):
        emulation.ensure_rootfs(log=lambda msg: None)
    assert emulation.cached_rootfs() is None
    assert list(tmp_path.iterdir()) == []  # the partial directory is gone, nothing at the final path

    built = []
    monkeypatch.setattr(emulation, "_build", lambda root, log: built.append(root))
    rootfs = emulation.ensure_rootfs(log=lambda msg: None)
    assert rootfs == emulation.rootfs_path() and (rootfs / emulation.MARKER).is_file()
    assert built[0] != rootfs  # built elsewhere, then renamed into place
    assert emulation.ensure_rootfs(log=lambda msg: None) == rootfs and len(built) == 1  # reused
