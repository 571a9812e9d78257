"""`edgepipe compare` and the host int8-vs-FP32 report of every build (demo bundles, real runtimes).

References are independent of the code under test: FP32 outputs from ONNX Runtime on
reference.onnx, deployed outputs from LiteRT / ONNX Runtime run here directly on the bundle file.
"""

import json

import numpy as np
import pytest
import yaml

from edgepipe import graph, quantmath
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("compare")


@pytest.fixture(scope="module")
def arm_bundle(workdir):
    built = run_cli("build", "--target", "arm-cpu", "--json", cwd=workdir)
    assert built.returncode == 0, built.stderr
    return workdir / "build" / "arm-cpu", json.loads(built.stdout)


@pytest.fixture(scope="module")
def jetson_bundle(workdir, arm_bundle):
    built = run_cli("build", "--target", "jetson", "--json", cwd=workdir)
    assert built.returncode == 0, built.stderr
    return workdir / "build" / "jetson", json.loads(built.stdout)


def eval_arrays(bundle, count):
    with np.load(bundle / "eval" / "eval.npz") as data:
        return data["input:image"][:count], data["labels"][:count]


def fp32_outputs(bundle, images):
    session = graph.make_session(bundle / "reference.onnx")
    return np.concatenate([session.run(["logits"], {"image": x[None]})[0] for x in images])


def test_demo_builds_are_quiet(arm_bundle, jetson_bundle):
    """No stability warning (the thresholds that vary do not move the output) and no accuracy warning.
    A speed warning depends on the host (int8 pays with VNNI / dot-product instructions): there is
    one exactly when the int8 model ran more than SLOWER_MARGIN slower than model.fp32.tflite."""
    from edgepipe.delivery.host_report import SLOWER_MARGIN

    for _, summary in (arm_bundle, jetson_bundle):
        speed = summary["results"].get("speed_warnings") or []
        assert [w for w in summary["warnings"] if w not in speed] == [], summary["warnings"]
        speedup = summary["results"].get("speedup")
        assert bool(speed) == (speedup is not None and speedup * SLOWER_MARGIN < 1.0), (speedup, speed)
        assert all(w in summary["warnings"] and w.startswith("speed: model.tflite ran") for w in speed)
        effect = summary["calibration_stability"]  # the demo has unstable tensors; they do not matter
        assert effect["tensors"] and not effect["warn"]
        assert summary["results"]["accuracy_warnings"] == []


def test_jetson_build_reports_host_emulation(jetson_bundle):
    bundle, summary = jetson_bundle
    results = summary["results"]
    assert results["where"] == "host emulation, not device"
    assert json.loads((bundle / "report" / "results.json").read_text())["where"] == results["where"]
    assert "host emulation, not device" in (bundle / "report" / "report.html").read_text()
    images, labels = eval_arrays(bundle, None)
    qdq = graph.make_session(bundle / "model.qdq.onnx")
    got = np.concatenate([qdq.run(["logits"], {"image": x[None]})[0] for x in images])
    want = fp32_outputs(bundle, images)
    accuracy = results["accuracy"]
    assert accuracy["top1"] == pytest.approx(float(np.mean(got.argmax(1) == labels)))
    assert accuracy["fp32_top1"] == pytest.approx(float(np.mean(want.argmax(1) == labels)))
    assert accuracy["outputs"]["logits"]["sqnr_db"] == pytest.approx(quantmath.sqnr_db(want, got), abs=1e-6)
    assert 15.0 < accuracy["outputs"]["logits"]["sqnr_db"] < 60.0  # int8 really ran, not the FP32 graph
    assert run_cli("verify", str(bundle)).returncode == 0  # the report folder is outside the sealed files


def test_compare_arm_cpu_tensors_match_litert(arm_bundle, workdir):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    bundle, _ = arm_bundle
    result = run_cli("compare", str(bundle), "--max-samples", "16", "--alone-samples", "8", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {t["name"]: t for t in data["tensors"]}
    assert data["where"] == "host" and data["samples"] == 16
    sqnrs = [t["sqnr_db"] for t in data["tensors"] if t["sqnr_db"] is not None]
    assert sqnrs == sorted(sqnrs)  # worst first
    # the graph output: LiteRT's own output (no delegate) vs ONNX Runtime FP32
    images, _ = eval_arrays(bundle, 16)
    interpreter = Interpreter(model_path=str(bundle / "model.tflite"),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    got = []
    for x in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None].transpose(0, 2, 3, 1).copy())
        interpreter.invoke()
        got.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    want = fp32_outputs(bundle, images)
    assert rows["logits"]["output"] and rows["logits"]["sqnr_db"] == pytest.approx(
        quantmath.sqnr_db(want, np.concatenate(got)), abs=1e-4)
    # NHWC intermediates read back in ONNX layout: a wrong layout would be near 0 dB
    conv_relu = rows["/stem/stem.2/Relu_output_0"]
    assert conv_relu["sqnr_db"] > 20.0 and conv_relu["cosine"] > 0.99
    # alone: only the readers of one tensor quantized does less damage than quantizing everything
    alone = [t for t in data["tensors"] if t["alone_sqnr_db"] is not None]
    assert alone and all(t["alone_nodes"] for t in alone)
    assert "arm-cpu's own int8 grids" in data["scheme"]  # the .tflite's placement, not TensorRT's Q/DQ
    assert min(t["alone_sqnr_db"] for t in alone) > rows["logits"]["sqnr_db"] - 3.0
    # the per-layer chart lands in the bundle's report
    html = (bundle / "report" / "report.html").read_text()
    assert "Where the accuracy goes" in html and "/stem/stem.2/Relu_output_0" in html
    table = run_cli("compare", str(bundle), "--max-samples", "4", "--no-alone", "--top", "3", cwd=workdir)
    assert table.returncode == 0 and "worst first" in table.stdout
    assert sum(line[:1].isdigit() for line in table.stdout.splitlines()) == 3  # --top 3 rows


def test_compare_jetson_is_host_emulation(jetson_bundle, workdir, tmp_path):
    bundle, _ = jetson_bundle
    out = tmp_path / "c.json"
    result = run_cli("compare", str(bundle), "--max-samples", "8", "--no-alone", "--out", str(out), cwd=workdir)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["where"] == "host emulation, not device" and "model.qdq.onnx" in data["deployed"]
    rows = {t["name"]: t for t in data["tensors"]}
    images, _ = eval_arrays(bundle, 8)
    qdq = graph.make_session(bundle / "model.qdq.onnx")
    got = np.concatenate([qdq.run(["logits"], {"image": x[None]})[0] for x in images])
    assert rows["logits"]["sqnr_db"] == pytest.approx(quantmath.sqnr_db(fp32_outputs(bundle, images), got), abs=1e-4)


def test_compare_a_bundle_built_from_a_profile_of_its_own_name(workdir, arm_bundle, tmp_path):
    """A profile YAML with its own name (not an installed target): compare runs the bundle with the
    plugin the profile derives from, recorded in the manifest."""
    profile = tmp_path / "my-board.yaml"
    profile.write_text("name: my-board\nbase: arm-cpu\noptions:\n  threads: 1\n")
    out = tmp_path / "bundle"
    built = run_cli("build", "--target", str(profile), "--out", str(out), "--no-host-report", cwd=workdir)
    assert built.returncode == 0, built.stderr
    target = json.loads((out / "manifest.json").read_text())["target"]
    assert (target["name"], target["plugin"]) == ("my-board", "arm-cpu")
    compared = run_cli("compare", str(out), "--max-samples", "4", "--no-alone", cwd=workdir)
    assert compared.returncode == 0, compared.stderr
    assert json.loads((out / "report" / "compare.json").read_text())["tensors"]


def test_compare_refuses_a_folder_that_is_no_bundle(tmp_path):
    result = run_cli("compare", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not an edgepipe bundle (no manifest.json); pass the folder `edgepipe build` wrote"]


def test_poor_accuracy_warns_once_with_the_way_out(workdir, arm_bundle, tmp_path):
    config = tmp_path / "edgepipe.yaml"
    config.write_text(yaml.safe_dump({"report": {"min_sqnr_db": 80, "min_agreement": 0.5}}))
    built = run_cli("build", "--target", "jetson", "--config", str(config), "--out", str(tmp_path / "b"), "--json",
                    cwd=workdir)
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    warnings = [w for w in summary["warnings"] if w.startswith("accuracy:")]
    assert len(warnings) == 1 and "SQNR" in warnings[0] and "< 80 dB" in warnings[0]
    assert "argmax agreement" not in warnings[0]  # 0.5 is met
    assert "edgepipe compare" in warnings[0] and "precision.budget" in warnings[0]
    assert summary["results"]["accuracy_warnings"] == warnings
    assert "Accuracy warnings" in (tmp_path / "b" / "report" / "report.html").read_text()


def test_unstable_calibration_that_moves_the_output_warns(workdir, arm_bundle, tmp_path):
    """Contiguous rounds of a set whose first quarter is dark: round 1's thresholds clip the rest."""
    images, _ = eval_arrays(workdir / "build" / "arm-cpu", 128)
    images = images.copy()
    images[:32] *= 0.15
    np.savez(tmp_path / "drift.npz", image=images)
    built = run_cli("build", "--target", "jetson", "--calib", str(tmp_path / "drift.npz"), "--no-host-report",
                    "--out", str(tmp_path / "b"), "--json", cwd=workdir)
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    warnings = [w for w in summary["warnings"] if "across calibration rounds" in w]
    assert len(warnings) == 1 and "change the output" in warnings[0]
    effect = summary["calibration_stability"]
    assert effect["warn"] and min(effect["sqnr_rounds_db"]) < effect["floor_db"]
    assert effect["drop_db"] == pytest.approx(effect["sqnr_chosen_db"] - min(effect["sqnr_rounds_db"]))


def test_per_layer_section_escapes_tensor_names():
    from edgepipe.delivery.report import report_context
    from edgepipe.templating import render

    evil = "<script>alert(1)</script>"
    compare = {"deployed": evil, "where": "host", "samples": 2, "tensors": [
        {"name": evil, "producer": "Conv", "position": 1, "sqnr_db": 12.5, "cosine": 0.99, "alone_sqnr_db": None},
        {"name": "b", "producer": "Relu", "position": 2, "sqnr_db": None, "cosine": 1.0, "alone_sqnr_db": 40.0}]}
    results = {"target": "arm-cpu", "where": "host", "model": "model.tflite", "samples": 2, "verified": True,
               "latency_ms": {}, "accuracy": {},
               "accuracy_warnings": [f"accuracy: {evil}"]}
    context = report_context(results, compare=compare)
    assert [row["name"] for row in context["layers"]["rows"]] == [evil]  # identical tensors are not charted
    html = render("report.html.j2", **context)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_compare_refuses_recorded_backend_settings_it_cannot_use(tmp_path):
    """The manifest's backend settings drive compare's placement emulation: a value of the wrong
    type (a tampered or foreign manifest) is one error line naming the file and the key."""
    from edgepipe.accuracy.compare import _backend_settings
    from edgepipe.errors import UserError

    manifest = tmp_path / "manifest.json"
    assert _backend_settings({"backend_settings": {"wide_range_float": False}}, manifest) == {"wide_range_float": False}
    assert _backend_settings({}, manifest) == {}  # a bundle from before they were recorded: the defaults
    with pytest.raises(UserError, match=r"manifest.json: 'backend_settings.wide_range_float' must be bool"):
        _backend_settings({"backend_settings": {"wide_range_float": "no"}}, manifest)
    with pytest.raises(UserError, match="unknown key 'backend_settings.evil'"):
        _backend_settings({"backend_settings": {"evil": 1}}, manifest)
    with pytest.raises(UserError, match="must be a mapping"):
        _backend_settings({"backend_settings": ["wide_range_float"]}, manifest)
