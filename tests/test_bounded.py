"""Cost that does not grow with the data: lazy data reading, the streamed and budgeted eval data
of the bundle, and the calibration holdout used when no --eval is given."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgepipe import graph
from edgepipe.build import hold_out, reference_eval_data
from edgepipe.delivery.eval_data import EvalSamples, write_eval_npz
from edgepipe.data import load_dataset
from edgepipe.sampling import holdout_split
from edgepipe.settings import ReportSettings
from tests.helpers import run_cli, tiny_conv_model
from tests.test_runner_harness import make_bundle, run_py

SPEC = {"x": ((1, 3, 4, 5), np.float32)}


def _samples(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 4, 5)).astype(np.float32)


def _eager(ds, name="x"):
    return np.concatenate([ds.sample(i)[name] for i in range(len(ds))])


# --- lazy loading ------------------------------------------------------------------------------


@pytest.mark.parametrize("save", ["savez", "savez_compressed", "npy", "npy_fortran"])
def test_lazy_loader_yields_the_samples_numpy_loads(tmp_path, save):
    x = _samples(37)
    if save.startswith("savez"):
        path = tmp_path / "d.npz"
        getattr(np, save)(path, x=x, labels=np.arange(37) % 3)
        expected, labels = np.load(path)["x"], np.load(path)["labels"]
    else:
        path = tmp_path / "d.npy"
        np.save(path, np.asfortranarray(x) if save == "npy_fortran" else x)
        expected, labels = np.load(path), None
    ds = load_dataset(path, SPEC)
    assert len(ds) == 37
    np.testing.assert_array_equal(_eager(ds), expected)
    if labels is not None:
        assert ds.labels.tolist() == labels.tolist()
    # out of order (a deflated member is reopened when a read goes backwards) and limited sets
    for i in (30, 2, 36, 0):
        np.testing.assert_array_equal(ds.sample(i)["x"][0], expected[i])
    limited = load_dataset(path, SPEC, limit=5)
    np.testing.assert_array_equal(_eager(limited), expected[(np.arange(5) * 37) // 5])


def test_lazy_loader_multi_input_integer_and_batch_dim_forms(tmp_path):
    a = np.arange(6 * 4, dtype=np.int32).reshape(6, 4)
    b = _samples(6)
    np.savez(tmp_path / "d.npz", a=a, b=b, notes=np.zeros(2))
    specs = {"a": ((1, 4), np.int64), "b": ((1, 3, 4, 5), np.float32)}
    ds = load_dataset(tmp_path / "d.npz", specs)
    sample = ds.sample(4)
    assert sample["a"].dtype == np.int64 and sample["a"].tolist() == [a[4].tolist()]
    np.testing.assert_array_equal(sample["b"][0], b[4])


def test_truncated_npz_member_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=_samples(50))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    from edgepipe.errors import UserError

    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "cut.npz", SPEC)
    assert "cut.npz" in str(err.value) and "\n" not in str(err.value)


# --- memory does not grow with N -----------------------------------------------------------------

PEAK_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from edgepipe.delivery.eval_data import EvalSamples, write_eval_npz
    from edgepipe.data import load_dataset

    def hwm_mb():  # this process's own peak (VmHWM is per address space, not inherited)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0

    path, out = Path(sys.argv[1]), Path(sys.argv[2])
    start = hwm_mb()
    ds = load_dataset(path, {"x": ((1, 3, 32, 32), np.float32)})
    total = sum(float(ds.sample(i)["x"][0, 0, 0, 0]) for i in range(len(ds)))
    rows = lambda: (({"x": ds.sample(i)["x"]}, {"y": ds.sample(i)["x"][:, :1]}, i % 7) for i in range(len(ds)))
    entry = write_eval_npz(out, EvalSamples(len(ds), rows, True))
    print(json.dumps({"growth_mb": hwm_mb() - start, "samples": entry["samples"], "total": total}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_loading_and_writing_eval_data_memory_does_not_scale_with_samples(tmp_path, save):
    growth = {}
    for count in (100, 4000):  # 1.2 MB and 47 MB of data
        x = (np.arange(count * 3 * 32 * 32, dtype=np.float32) % 251).reshape(count, 3, 32, 32)
        save(tmp_path / f"{count}.npz", x=x)
        done = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(tmp_path / f"{count}.npz"),
                               str(tmp_path / f"eval{count}.npz")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["samples"] == count and report["total"] == pytest.approx(float(x[:, 0, 0, 0].sum()))
        growth[count] = report["growth_mb"]
        with np.load(tmp_path / f"eval{count}.npz") as written:  # and it wrote every sample correctly
            np.testing.assert_array_equal(written["input:x"], x)
            np.testing.assert_array_equal(written["reference:y"], x[:, :1])
            assert written["labels"].tolist() == [i % 7 for i in range(count)]
    # eager loading + in-memory eval writing would grow by > 2 x 46 MB at 4000 samples
    assert growth[4000] < growth[100] + 20, growth


# --- eval budget ---------------------------------------------------------------------------------


def _dataset(tmp_path, count, labels=None):
    model = tiny_conv_model()
    shape = tuple(graph.tensor_shape(graph.graph_inputs(model)[0]))
    x = np.random.default_rng(2).standard_normal((count, *shape[1:])).astype(np.float32)
    arrays = {"x": x} if labels is None else {"x": x, "labels": labels}
    np.savez(tmp_path / "d.npz", **arrays)
    return model, load_dataset(tmp_path / "d.npz", {"x": (shape, np.float32)}), x


def test_eval_budget_keeps_evenly_spaced_samples_within_count_and_bytes(tmp_path):
    model, ds, x = _dataset(tmp_path, 40)
    per_sample = x[0].nbytes + 4 * int(np.prod(graph.make_session(model).run(None, ds.sample(0))[0].shape))
    budget_mb = 7.5 * per_sample / 2**20  # room for 7 samples
    data = reference_eval_data(model, ds, ReportSettings(eval_limit=30, eval_max_mb=budget_mb), "eval")
    assert data.count == 7 and data.info["available"] == 40 and data.info["bytes_per_sample"] == per_sample
    entry = write_eval_npz(tmp_path / "eval.npz", data)
    assert entry["samples"] == 7 and entry["available"] == 40 and entry["source"] == "eval"
    with np.load(tmp_path / "eval.npz") as written:
        kept = written["input:x"]
        assert kept.nbytes + written["reference:y"].nbytes <= budget_mb * 2**20
        positions = [int(np.flatnonzero((x == row).all(axis=(1, 2, 3)))[0]) for row in kept]
        assert positions == sorted(positions) and positions[-1] - positions[0] >= 30  # spread over the set
        np.testing.assert_allclose(written["reference:y"],
                                   np.concatenate([graph.make_session(model).run(None, {"x": r[None]})[0]
                                                   for r in kept]), rtol=1e-6)
    by_count = reference_eval_data(model, ds, ReportSettings(eval_limit=3, eval_max_mb=100), "eval")
    assert by_count.count == 3
    assert reference_eval_data(model, ds, ReportSettings(eval_limit=30, eval_max_mb=1e-6), "eval") is None


def test_run_py_streams_eval_data_and_reports_the_sample_count(tmp_path):
    bundle, data = make_bundle(tmp_path)
    done = run_py(bundle, "--limit", "7")
    assert done.returncode == 0, done.stderr
    results = json.loads((bundle / "report" / "results.json").read_text())
    assert results["samples"] == 7 and results["eval"]["samples"] == 7
    assert "7 samples" in results["eval"]["note"] and "7 samples" in done.stdout
    full = run_py(bundle)
    assert json.loads((bundle / "report" / "results.json").read_text())["samples"] == len(data["labels"])
    assert full.returncode == 0


def test_run_py_streamed_metrics_equal_whole_array_metrics(tmp_path):
    bundle, _ = make_bundle(tmp_path)
    spec = importlib.util.spec_from_file_location("bundle_run", bundle / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((9, 2, 6)).astype(np.float32)
    got = ref + 0.1 * rng.standard_normal(ref.shape).astype(np.float32)
    stats = module.OutputStats(got[:1])
    for i in range(len(ref)):
        stats.add(got[i:i + 1], ref[i:i + 1])
    entry = stats.entry()
    assert entry["sqnr_db"] == pytest.approx(module.sqnr_db(ref, got), rel=1e-9)
    assert entry["cosine"] == pytest.approx(module.cosine(ref, got), rel=1e-9)
    # [N, 2, 6]: one decision per position of the last (class) axis, quantmath.class_axis
    assert entry["argmax_agreement"] == pytest.approx(np.mean(ref.argmax(-1) == got.argmax(-1)))
    assert entry["max_abs_error"] == pytest.approx(float(np.abs(ref - got).max()), rel=1e-6)


def test_eval_samples_from_arrays_and_streaming_agree(tmp_path):
    x, y = _samples(5), np.arange(10, dtype=np.float32).reshape(5, 2)
    a = write_eval_npz(tmp_path / "a.npz", {"inputs": {"x": x}, "reference": {"y": y}, "labels": np.arange(5)})
    rows = lambda: (({"x": x[i:i + 1]}, {"y": y[i:i + 1]}, i) for i in range(5))  # noqa: E731
    b = write_eval_npz(tmp_path / "b.npz", EvalSamples(5, rows, True))
    assert a == b and (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert sorted(archive.namelist()) == ["input:x.npy", "labels.npy", "reference:y.npy"]


# --- holdout -------------------------------------------------------------------------------------


def test_holdout_is_deterministic_disjoint_and_stratified(tmp_path):
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    _, ds, _ = _dataset(tmp_path, 100, labels=labels)
    keep, held = holdout_split(ds, 0.1)
    again_keep, again_held = holdout_split(ds, 0.1)
    assert keep.tolist() == again_keep.tolist() and held.tolist() == again_held.tolist()
    assert len(held) == 10 and not set(keep) & set(held) and sorted([*keep, *held]) == list(range(100))
    assert np.bincount(labels[held]).tolist() == [5, 3, 2]  # each class gives its share
    assert len(holdout_split(ds, 0.1, max_count=4)[1]) == 4
    assert len(holdout_split(ds, 0.0)[1]) == 0
    assert len(holdout_split(ds, 0.001)[1]) == 1  # at least one sample


def test_hold_out_calibrates_on_other_samples_than_it_evaluates(tmp_path):
    _, ds, x = _dataset(tmp_path, 30)
    calib, evaluation, source, note = hold_out(ds, ReportSettings(holdout=0.2, eval_limit=500))
    assert source == "holdout" and len(calib) == 24 and len(evaluation) == 6
    calib_rows = {_eager(calib)[i].tobytes() for i in range(len(calib))}
    eval_rows = {_eager(evaluation)[i].tobytes() for i in range(len(evaluation))}
    assert not calib_rows & eval_rows and len(calib_rows | eval_rows) == 30
    assert "6 of 30 calibration samples held out" in note
    unlabeled = hold_out(ds, ReportSettings(holdout=0, eval_limit=500))
    assert unlabeled[1] is None and unlabeled[2] == "none" and "no accuracy" in unlabeled[3]


def test_build_without_eval_reports_holdout_and_budget(tmp_path):
    """--calib only, labeled: the build output, manifest, results and report say what was measured."""
    import onnx

    model = tiny_conv_model()
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(5).standard_normal((60, 3, 8, 8)).astype(np.float32)
    session = graph.make_session(model)
    labels = np.array([int(session.run(None, {"x": s[None]})[0].argmax()) for s in x])
    np.savez(tmp_path / "calib.npz", x=x, labels=labels)
    per_sample = x[0].nbytes + 5 * 4 + 8
    (tmp_path / "edgepipe.yaml").write_text(f"report:\n  eval_max_mb: {4.5 * per_sample / 2**20}\n  iterations: 100\n")
    done = run_cli("build", "--model", "m.onnx", "--target", "arm-cpu", "--calib", "calib.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 of 60 calibration samples held out for evaluation, stratified by label" in done.stdout
    assert "calibrating on the other 54" in done.stdout and "the bundle keeps 4 of 6" in done.stdout
    manifest = json.loads((tmp_path / "build" / "arm-cpu" / "manifest.json").read_text())
    assert manifest["eval"]["source"] == "holdout" and manifest["eval"]["available"] == 6
    assert manifest["eval"]["samples"] == 4 and manifest["eval"]["bytes_per_sample"] == per_sample
    results = json.loads((tmp_path / "build" / "arm-cpu" / "report" / "results.json").read_text())
    assert results["samples"] == 4 and results["eval"]["source"] == "holdout"
    assert results["accuracy"]["fp32_top1"] == 1.0  # the held-out labels travelled with the samples
    html = (tmp_path / "build" / "arm-cpu" / "report" / "report.html").read_text()
    assert "accuracy measured on 4 samples held out of the calibration set" in html
