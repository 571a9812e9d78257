"""End to end: `edgepipe build` on the shipped demo for every built-in target.

One module-scoped build per target keeps the suite fast; the stage cache is shared, so the
second target must reuse export/simplify/fold/calibrate (the foundation issue's contract).
"""

import json
import shutil

import numpy as np
import onnx
import pytest

from tests.helpers import run_cli, tiny_conv_model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="module")
def arm_build(workdir):
    result = run_cli("build", "--target", "arm-cpu", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def jetson_build(workdir, arm_build):
    result = run_cli("build", "--target", "jetson", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_arm_cpu_bundle_contents(arm_build, workdir):
    bundle = workdir / "build" / "arm-cpu"
    for name in ("manifest.json", "model.tflite", "model.fp32.tflite", "run.py", "README.md", "calibration.json",
                 "reference.onnx", "eval/eval.npz", "SHA256SUMS"):
        assert (bundle / name).exists(), name
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert "model.tflite" in listed and "manifest.json" not in listed
    assert [s["name"] for s in arm_build["stages"]][:4] == ["export", "simplify", "fold", "calibrate"]


def test_arm_cpu_host_report_accuracy(arm_build, workdir):
    results = arm_build["results"]
    assert results is not None and results["where"] == "host"
    accuracy = results["accuracy"]
    # the foundation issue's bar: int8 top-1 within 0.5 points of FP32 on the demo
    assert accuracy["top1"] >= accuracy["fp32_top1"] - 0.005
    assert accuracy["fp32_top1"] >= 0.9
    assert results["latency_ms"]["iterations"] >= 100
    assert (workdir / "build" / "arm-cpu" / "report" / "report.html").exists()


def test_arm_cpu_host_report_times_int8_and_fp32_in_one_run(arm_build, workdir):
    from tests.tflite_harness import delegate_partitions

    bundle = workdir / "build" / "arm-cpu"
    results = arm_build["results"]
    fp32 = results["compare"]
    assert fp32["model"] == "model.fp32.tflite" and fp32["latency_ms"]["p50"] > 0
    assert abs(results["speedup"] - fp32["latency_ms"]["p50"] / results["latency_ms"]["p50"]) < 1e-9
    partitions = len(delegate_partitions(bundle / "model.tflite"))
    assert results["delegation"] == {"partitions": partitions, "outside": {}}
    backend = next(s for s in arm_build["stages"] if s["name"] == "backend")
    assert f"XNNPACK int8: {partitions} partition" in backend["note"]
    report = (bundle / "report" / "report.md").read_text()
    assert "| XNNPACK partitions | 1 |" in report and "speed-up vs compared model" in report


def test_second_target_reuses_cached_stages(jetson_build):
    cached = {s["name"]: s["cached"] for s in jetson_build["stages"]}
    # export always runs (its graph keys the later stages); everything after it is reused
    assert not cached["export"] and cached["simplify"] and cached["fold"] and cached["calibrate"]


def test_jetson_bundle_has_tensorrt_kit(jetson_build, workdir):
    bundle = workdir / "build" / "jetson"
    for name in ("model.qdq.onnx", "calibration.cache", "build_engine.py", "build_engine.sh", "run.py"):
        assert (bundle / name).exists(), name
    header = (bundle / "calibration.cache").read_text().splitlines()[0]
    assert header.startswith("TRT-") and header.endswith("EntropyCalibration2")


def test_rebuild_is_byte_identical(jetson_build, workdir):
    first = workdir / "build" / "jetson"
    copy = workdir / "jetson-first"
    shutil.copytree(first, copy)
    result = run_cli("build", "--target", "jetson", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    for path in sorted(p for p in copy.rglob("*") if p.is_file() and "report" not in p.parts):
        assert path.read_bytes() == (first / path.relative_to(copy)).read_bytes(), path


def test_failed_build_leaves_old_bundle_intact(jetson_build, workdir, tmp_path):
    bundle = workdir / "build" / "jetson"
    before = (bundle / "manifest.json").read_bytes()
    calib = tmp_path / "bad.npz"
    np.savez(calib, image=np.full((4, 3, 32, 32), np.nan, dtype=np.float32))
    result = run_cli("build", "--target", "jetson", "--calib", str(calib), "--out", str(bundle), cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (bundle / "manifest.json").read_bytes() == before
    leftovers = [p for p in bundle.parent.iterdir() if p.name.startswith(".") and p.name != ".cache"]
    assert not leftovers, f"temp dirs left behind: {leftovers}"


def test_unsupported_op_fails_before_writing(tmp_path):
    model = tiny_conv_model()
    # an op no backend lowers: a custom-domain node
    node = onnx.helper.make_node("FancyOp", ["y"], ["z"], name="fancy_node", domain="com.example")
    model.graph.node.append(node)
    model.graph.output[0].name = "z"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--calib", str(calib), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    assert "fancy_node" in result.stderr and "FancyOp" in result.stderr
    assert not out.exists()


def test_given_ranges_replace_calibration(jetson_build, workdir, tmp_path):
    """calibration.ranges (e.g. QAT's learned ranges) is used as is: same ranges, same Q/DQ model."""
    ranges = workdir / "build" / "jetson" / "calibration.json"
    out = tmp_path / "from-ranges"
    config = tmp_path / "edgepipe.yaml"
    config.write_text(f"target: jetson\ncalibration:\n  ranges: {ranges}\nout: {out}\n")
    result = run_cli("build", "--config", str(config), "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    stages = {s["name"]: s for s in json.loads(result.stdout)["stages"]}
    assert "given" in stages["calibrate"]["artifact"]
    assert (out / "model.qdq.onnx").read_bytes() == (workdir / "build" / "jetson" / "model.qdq.onnx").read_bytes()


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_requirements_txt_is_installable_syntax(jetson_build, workdir, target):
    from packaging.requirements import Requirement

    lines = (workdir / "build" / target / "requirements.txt").read_text().split()
    names = [Requirement(line).name for line in lines]  # raises on anything pip would reject
    assert "numpy" in names and len(names) == len(set(names))


def test_disk_full_while_writing_leaves_old_bundle_intact(jetson_build, workdir):
    """A write that fails mid-bundle (here: RLIMIT_FSIZE, i.e. 'File too large', as on a full
    disk) is one clean error; the previous bundle is untouched and no temp dir is left."""
    import resource
    import subprocess
    import sys

    bundle = workdir / "build" / "jetson"
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    result = subprocess.run([sys.executable, "-m", "edgepipe", "build", "--target", "jetson", "--out", str(bundle)],
                            cwd=workdir, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(bundle) in lines[0] and "previous bundle is unchanged" in lines[0]
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before
    leftovers = [p for p in bundle.parent.iterdir() if p.name.startswith(".") and p.name != ".cache"]
    assert not leftovers, leftovers
