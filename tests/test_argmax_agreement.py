"""Per-output argmax agreement: one decision per position along the class axis, not one argmax
over the flattened sample (a [1, 32, 2] sequence tagger at 35.7 dB was reported at 0.5).

References are numpy loops written here and outputs run in ONNX Runtime / LiteRT directly; the
code under test is quantmath.argmax_agreement, compare.host_accuracy and the bundle's run.py.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.accuracy.compare import host_accuracy
from edgepipe.backends.tflite.build import build_tflite
from edgepipe.delivery.bundle import write_bundle
from tests.test_runner_harness import TARGET, run_py
from tests.tflite_harness import minmax_calibration

STEPS, CLASSES, FEATURES, SAMPLES = 32, 4, 8, 12


def flipped_sequence(seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """[N, T, C] scores whose every step peaks at the same height (the flattened argmax is a tie
    broken by noise), and a copy with small noise plus 2 steps per sample given to another class."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0.0, 1.0, (SAMPLES, STEPS, CLASSES)).astype(np.float32)
    best = rng.integers(0, CLASSES, (SAMPLES, STEPS))
    np.put_along_axis(ref, best[..., None], 5.0, axis=-1)
    got = ref + rng.normal(0.0, 0.01, ref.shape).astype(np.float32)
    for n in range(SAMPLES):
        for t in rng.choice(STEPS, 2, replace=False):
            got[n, t, (best[n, t] + 1) % CLASSES] = 6.0
    expected = 1.0 - 2.0 / STEPS
    return ref, got, expected


def per_position(ref: np.ndarray, got: np.ndarray, axis: int) -> float:
    """The independent reference: an explicit loop over every position other than `axis`."""
    agree = total = 0
    moved_ref, moved_got = np.moveaxis(ref, axis, -1), np.moveaxis(got, axis, -1)
    for index in np.ndindex(moved_ref.shape[:-1]):
        agree += int(np.argmax(moved_ref[index]) == np.argmax(moved_got[index]))
        total += 1
    return agree / total


def test_sequence_output_agrees_per_step():
    ref, got, expected = flipped_sequence()
    flattened = float(np.mean(ref.reshape(SAMPLES, -1).argmax(1) == got.reshape(SAMPLES, -1).argmax(1)))
    assert flattened < 0.5  # the figure edgepipe reported before: meaningless
    assert quantmath.class_axis(ref.shape) == 2
    assert quantmath.argmax_agreement(ref, got) == pytest.approx(expected)
    assert quantmath.argmax_agreement(ref, got) == pytest.approx(per_position(ref, got, 2))


def test_classifier_output_is_unchanged():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 10)).astype(np.float32)
    got = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    assert quantmath.class_axis(ref.shape) == 1
    assert quantmath.argmax_agreement(ref, got) == float(np.mean(ref.argmax(1) == got.argmax(1)))


def test_image_map_agrees_per_pixel_on_the_onnx_channel_axis():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)  # [N, C, H, W]
    got = ref + 0.2 * rng.standard_normal(ref.shape).astype(np.float32)
    assert quantmath.class_axis(ref.shape) == 1
    assert quantmath.argmax_agreement(ref, got) == pytest.approx(per_position(ref, got, 1))


@pytest.mark.parametrize("shape", [(), (1,), (4, 1), (4, 6, 1), (4, 1, 8, 8)])
def test_no_class_axis_no_figure(shape):
    ref = np.random.default_rng(3).standard_normal(shape)
    assert quantmath.class_axis(shape) is None
    assert quantmath.argmax_agreement(ref, ref) is None


def test_time_major_ctc_output_agrees_per_step():
    """[T, 1, C] (a time-major CTC head as PyTorch writes it): per step, also once a batch axis is
    put in front of each sample's output (as run.py and host_accuracy stack them)."""
    ref, got, expected = flipped_sequence()
    time_major_ref, time_major_got = ref.transpose(1, 0, 2)[:, :1], got.transpose(1, 0, 2)[:, :1]  # [T, 1, C]
    assert quantmath.class_axis(time_major_ref.shape) == 2
    stacked = quantmath.argmax_agreement(time_major_ref[None], time_major_got[None], axis=3)
    assert stacked == pytest.approx(per_position(time_major_ref, time_major_got, 2))


def sequence_model() -> onnx.ModelProto:
    """x[1, T, F] -> MatMul(F -> C) -> Add(bias) -> y[1, T, C]: a per-step tagger head whose int8
    output (the Add) flips a few steps at ~37 dB (a float-output MatMul alone would stay float)."""
    rng = np.random.default_rng(4)
    weights = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    bias = rng.standard_normal(CLASSES).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, STEPS, CLASSES])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="head"), helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    model = helper.make_model(helper.make_graph(nodes, "tagger", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class FakeProbe:
    """Hands host_accuracy a fixed 'deployed' output per sample (what an int8 run returned)."""

    def __init__(self, outputs: np.ndarray):
        self.outputs, self.index = outputs, 0

    def run(self, feed, reference):
        value = self.outputs[self.index:self.index + 1]
        self.index += 1
        return {"y": value}

    def close(self):
        pass


def test_host_accuracy_reports_per_step_agreement(tmp_path):
    ref, got, expected = flipped_sequence()
    bundle = tmp_path / "bundle"
    (bundle / "eval").mkdir(parents=True)
    onnx.save(sequence_model(), bundle / "reference.onnx")
    inputs = np.zeros((SAMPLES, STEPS, FEATURES), np.float32)
    np.savez(bundle / "eval" / "eval.npz", **{"input:x": inputs, "reference:y": ref})
    accuracy = host_accuracy(bundle, FakeProbe(got))
    entry = accuracy["outputs"]["y"]
    assert entry["argmax_agreement"] == pytest.approx(expected)
    assert entry["argmax_axis"] == 2
    assert accuracy["argmax_agreement"] is None and accuracy["classifier_output"] is None


def test_host_accuracy_reads_a_time_major_output_per_step(tmp_path):
    ref, got, _ = flipped_sequence()
    ref, got = ref[:, :, None], got[:, :, None]  # [N, T, 1, C]: per sample [T, 1, C]
    bundle = tmp_path / "bundle"
    (bundle / "eval").mkdir(parents=True)
    onnx.save(sequence_model(), bundle / "reference.onnx")
    np.savez(bundle / "eval" / "eval.npz", **{"input:x": np.zeros((SAMPLES, STEPS, FEATURES), np.float32),
                                              "reference:y": ref})

    class TimeMajor(FakeProbe):
        def run(self, feed, reference):
            return {"y": super().run(feed, reference)["y"][0]}  # [T, 1, C], no leading batch axis

    entry = host_accuracy(bundle, TimeMajor(got))["outputs"]["y"]
    assert entry["argmax_axis"] == 3
    assert entry["argmax_agreement"] == pytest.approx(per_position(ref, got, 3))


@pytest.fixture(scope="module")
def sequence_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequence")
    model = sequence_model()
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal((1, STEPS, FEATURES)).astype(np.float32)} for _ in range(SAMPLES)]
    built = build_tflite(model, minmax_calibration(model, feeds), root / "backend", {})
    session = graph.make_session(model)
    reference = np.concatenate([session.run(None, f)[0] for f in feeds])
    eval_data = {"inputs": {"x": np.concatenate([f["x"] for f in feeds])}, "labels": None,
                 "reference": {"y": reference}}
    bundle = root / "bundle"
    write_bundle(bundle, target=TARGET, files={f: root / "backend" / f for f in built["files"]},
                 template_context={"runner_template": "runner_tflite.py.j2", "model_file": "model.tflite"},
                 io=built["io"], stages=[], source={"sha256": "0" * 64}, extra_manifest={}, eval_data=eval_data)
    return bundle, feeds, reference


def test_run_py_reports_per_step_agreement(sequence_bundle):
    """The bundle's own run.py on a real int8 .tflite: its figure equals a per-step count over
    LiteRT outputs read here, and it is near 1 where the flattened figure was not."""
    from ai_edge_litert.interpreter import Interpreter

    bundle, feeds, reference = sequence_bundle
    completed = run_py(bundle, "--where", "host", "--threads", "1")
    assert completed.returncode == 0, completed.stderr
    entry = json.loads((bundle / "report" / "results.json").read_text())["accuracy"]["outputs"]["y"]
    interpreter = Interpreter(model_path=str(bundle / "model.tflite"))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    got = []
    for feed in feeds:
        interpreter.set_tensor(inp["index"], feed["x"])
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"]).copy())
    got = np.concatenate(got)
    flattened = float(np.mean(reference.reshape(SAMPLES, -1).argmax(1) == got.reshape(SAMPLES, -1).argmax(1)))
    assert entry["argmax_agreement"] == pytest.approx(per_position(reference, got, 2))
    assert 0.9 < entry["argmax_agreement"] < 1.0 and entry["argmax_agreement"] != pytest.approx(flattened)
    assert entry["argmax_axis"] == 2


def test_run_py_mirrors_the_class_axis_rule(sequence_bundle):
    bundle, _, _ = sequence_bundle
    spec = importlib.util.spec_from_file_location("bundle_run", bundle / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for shape in [(), (1,), (7,), (4, 1), (4, 10), (4, 6, 1), (4, 6, 3), (4, 1, 8, 8), (4, 3, 8, 8), (2, 3, 4, 5, 6)]:
        assert module.class_axis(shape) == quantmath.class_axis(shape), shape
    ref, got, expected = flipped_sequence(seed=6)
    stats = module.OutputStats(ref[:1])
    for i in range(SAMPLES):
        stats.add(got[i:i + 1], ref[i:i + 1])
    assert stats.entry()["argmax_agreement"] == pytest.approx(quantmath.argmax_agreement(ref, got))
    image = np.random.default_rng(7).standard_normal((SAMPLES, 3, 4, 5)).astype(np.float32)
    noisy = image + 0.3 * np.random.default_rng(8).standard_normal(image.shape).astype(np.float32)
    stats = module.OutputStats(image[:1])
    for i in range(SAMPLES):
        stats.add(noisy[i:i + 1], image[i:i + 1])
    assert stats.entry()["argmax_agreement"] == pytest.approx(per_position(image, noisy, 1))


# -- regress with results written before the per-position rule ----------------------------------
def results(entry: dict, classifier: dict | None = None) -> dict:
    outputs = {"tags": entry, **({"logits": classifier} if classifier else {})}
    return {"accuracy": {"outputs": outputs, "classifier_output": "logits" if classifier else None,
                         "argmax_agreement": classifier["argmax_agreement"] if classifier else None},
            "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2}}


OLD_TAGS = {"shape": [32, 2], "sqnr_db": 35.7, "cosine": 0.999, "argmax_agreement": 0.5}  # flattened, no axis
NEW_TAGS = {"shape": [32, 2], "sqnr_db": 35.7, "cosine": 0.999, "argmax_agreement": 0.99, "argmax_axis": 2}
CLASSIFIER = {"shape": [10], "sqnr_db": 30.0, "cosine": 0.999, "argmax_agreement": 0.97}  # old 2-D: same rule


@pytest.mark.parametrize("old_side", ["baseline", "candidate"])
def test_regress_notes_an_old_flattened_figure_and_compares_the_rest(old_side):
    from edgepipe.delivery.regress import run_regression

    old, new = results(OLD_TAGS, CLASSIFIER), results(NEW_TAGS, {**CLASSIFIER, "argmax_axis": 1})
    baseline, candidate = (old, new) if old_side == "baseline" else (new, old)
    result = run_regression(baseline, candidate)
    names = {c.name for c in result.checks}
    assert result.passed and "accuracy.argmax_agreement[tags]" not in names
    assert {"accuracy.argmax_agreement", "accuracy.sqnr_db[tags]"} <= names
    assert any("argmax_agreement[tags] not compared" in n and old_side in n and "flattened" in n for n in result.notes)


def test_regress_gates_a_sequence_output_per_step_and_fails_closed_when_it_vanishes():
    from edgepipe.delivery.regress import run_regression

    worse = run_regression(results(NEW_TAGS), results({**NEW_TAGS, "argmax_agreement": 0.9}))
    assert [c.name for c in worse.failures] == ["accuracy.argmax_agreement[tags]"]
    gone = {k: v for k, v in NEW_TAGS.items() if k not in ("argmax_agreement", "argmax_axis")}
    assert [c.name for c in run_regression(results(NEW_TAGS), results(gone)).failures] == [
        "accuracy.argmax_agreement[tags]"]
    assert run_regression(results(OLD_TAGS), results(gone)).passed  # old baseline, no figure now: a note


def test_regress_asked_for_agreement_on_an_old_baseline_says_why(tmp_path):
    from edgepipe.delivery.regress import run_regression
    from edgepipe.errors import UserError
    from edgepipe.settings import RegressSettings

    with pytest.raises(UserError, match="flattened output .*rerun the baseline's run.py"):
        run_regression(results(OLD_TAGS), results(NEW_TAGS), RegressSettings(metrics=["argmax_agreement"]))


def test_results_check_refuses_a_bad_axis(tmp_path):
    from edgepipe.delivery.regress import check_results
    from edgepipe.errors import UserError

    with pytest.raises(UserError, match="argmax_axis"):
        check_results(results({**NEW_TAGS, "argmax_axis": "2"}), tmp_path / "r.json", "candidate")


def test_report_names_the_class_axis_and_hides_an_old_flattened_figure():
    from edgepipe.delivery.report import output_rows

    rows = {r["name"]: r["argmax_agreement"] for r in output_rows(results(OLD_TAGS, CLASSIFIER), None)}
    assert rows == {"tags": "- (older run.py: flattened argmax, rerun)", "logits": "0.97"}
    rows = {r["name"]: r["argmax_agreement"] for r in output_rows(results(NEW_TAGS), None)}
    assert rows == {"tags": "0.99 per position (class axis 2)"}


# -- the decisions a precision budget counts: the same class axis ------------------------------
def test_budget_decisions_follow_the_class_axis():
    rng = np.random.default_rng(9)
    image = rng.standard_normal((2, 3, 4, 5))  # [N, C, H, W]: per pixel, as the report
    assert np.array_equal(quantmath.class_decisions(image), image.argmax(1).ravel())
    head = rng.standard_normal((2, 6, 1, 1))  # a conv classifier head: per sample
    assert np.array_equal(quantmath.class_decisions(head), head[:, :, 0, 0].argmax(1))
    sequence = rng.standard_normal((2, 7, 4))
    assert np.array_equal(quantmath.class_decisions(sequence), sequence.argmax(-1).ravel())
    assert len(quantmath.class_decisions(rng.standard_normal((5, 1)))) == 5  # no class axis: rows, always agreeing


def test_litert_evaluator_counts_pixels_of_a_map():
    """backends/tflite/evaluate.py (what arm-cpu's precision search measures) on a [1, C, H, W]
    output: per-pixel agreement, as an explicit loop computes it."""
    from edgepipe.backends.tflite.evaluate import Reference, measure

    rng = np.random.default_rng(10)
    reference = [{"map": rng.standard_normal((1, 3, 4, 5)).astype(np.float32)} for _ in range(6)]
    tests = [{"map": r["map"] + 0.4 * rng.standard_normal(r["map"].shape).astype(np.float32)} for r in reference]
    metrics = measure(Reference(reference), iter(tests))
    want = np.concatenate([r["map"] for r in reference])
    got = np.concatenate([t["map"] for t in tests])
    assert metrics["argmax_agreement"] == pytest.approx(per_position(want, got, 1))
