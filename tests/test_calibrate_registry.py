"""Calibration methods come from one registry; the demo's ranges match independent numpy references."""

from pathlib import Path

import numpy as np
import pytest

from edgepipe import config, graph
from edgepipe.calibrate import calibrate, methods

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ("auto", "entropy", "percentile", "mse", "minmax")


def test_cli_schema_and_validation_list_the_registry():
    from edgepipe.cli.main import build
    from edgepipe.stages.calibrate import validate_settings

    assert methods.names() == BUILT_IN
    assert [m.name for m in methods.auto_candidates()] == ["entropy", "percentile", "mse", "minmax"]
    option = next(p for p in build.params if p.name == "calib_method")
    assert tuple(option.type.choices) == methods.names()
    assert config.SCHEMA["calibration"]["method"].choices == methods.names()
    with pytest.raises(Exception, match="use one of: auto, entropy, percentile, mse, minmax"):
        validate_settings({"method": "kl"})


def calibration_recipe() -> str:
    """The code of docs/ARCHITECTURE.md's recipe "A new calibration method", as written there."""
    section = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("### A new calibration method", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def halfmax():
    methods.registry()
    namespace: dict = {}
    exec(compile(calibration_recipe(), "edgepipe/calibrate/methods/halfmax.py", "exec"), namespace)  # registers
    yield namespace["HalfMax"]
    del methods._REGISTRY["halfmax"]


def _small_model_and_data(tmp_path):
    from edgepipe.data import load_dataset
    from tests.helpers import tiny_conv_model

    model = tiny_conv_model()
    value = graph.graph_inputs(model)[0]
    shape = tuple(graph.tensor_shape(value))
    data = np.random.default_rng(0).normal(size=(16,) + shape[1:]).astype(np.float32)
    np.savez(tmp_path / "calib.npz", **{value.name: data})
    return model, load_dataset(str(tmp_path / "calib.npz"), {value.name: (shape, np.float32)}, None)


def test_a_registered_method_is_usable_and_auto_only_scores_declared_candidates(tmp_path, halfmax):
    from edgepipe.stages.calibrate import validate_settings

    model, dataset = _small_model_and_data(tmp_path)
    assert methods.names()[-1] == "halfmax"
    result = calibrate(model, dataset, validate_settings({"method": "halfmax", "num_bins": 256}))
    for t in result.tensors.values():
        absmax = max(abs(t.min), abs(t.max))
        assert t.method == "halfmax" and t.reason == "requested (halfmax)"
        assert t.amax == pytest.approx(0.5 * absmax, rel=1e-12)
        assert t.lo == pytest.approx(max(min(t.min, 0.0), -t.amax)) and t.hi == pytest.approx(min(max(t.max, 0.0), t.amax))
    auto = calibrate(model, dataset, {"method": "auto", "num_bins": 256})
    assert all("halfmax" not in t.reason and t.method != "halfmax" for t in auto.tensors.values())
    halfmax.auto_candidate = True
    scored = calibrate(model, dataset, {"method": "auto", "num_bins": 256})
    assert any("halfmax" in t.reason for t in scored.tensors.values())


@pytest.fixture(scope="module")
def demo():
    """The demo model as `build` deploys it, its calibration set, and every activation's raw values."""
    from edgepipe import settings as settings_module
    from edgepipe.build import prepare_model
    from edgepipe.pipeline import Pipeline

    resolved, _ = settings_module.resolve_settings({"target": "arm-cpu"}, None)
    prepared = prepare_model(resolved, Pipeline(None))
    return prepared.model, prepared.calib


def _raw_values(model, dataset, names):
    exposed = graph.expose_tensors(model, names)
    session = graph.make_session(exposed)
    values = {n: [] for n in names}
    for i in range(len(dataset)):
        for name, out in zip(names, session.run(names, dataset.sample(i))):
            values[name].append(np.asarray(out, np.float64).ravel())
    return {n: np.concatenate(v) for n, v in values.items()}


def _raw_mse(x, amax):
    scale = amax / 127.0
    return float(np.mean((x - scale * np.clip(np.rint(x / scale), -127, 127)) ** 2))


def _percentile_tolerance(values, percentile, width):
    """np.percentile interpolates between order statistics, the histogram inside a bin: both lie
    between the two values around the rank, so they agree to that gap plus a bin or two."""
    ordered = np.sort(values)
    rank = percentile / 100.0 * (ordered.size - 1)
    below = int(np.floor(rank))
    return ordered[min(below + 1, ordered.size - 1)] - ordered[below] + 2 * width


def _entropy_reference(counts, width, levels=128, eps=1e-4):
    """TensorRT's KL threshold, one candidate at a time (the algorithm in entropy.py's docstring)."""
    hist = counts.astype(np.float64).copy()
    hist[0] = hist[1]
    stop = int(np.flatnonzero(hist)[-1]) + 1
    if stop <= levels:
        return stop * width
    best_i, best_kl = stop, np.inf
    for i in range(levels, stop + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        group = i // levels
        starts = np.arange(levels) * group
        filled = p != 0
        per_level = np.add.reduceat(hist[:i], starts) / np.maximum(np.add.reduceat(filled.astype(float), starts), 1)
        q = np.repeat(per_level, np.diff(np.append(starts, i))) * filled  # level's mean over P's non-empty bins
        ps, qs = [np.where(d == 0, eps, d - eps * (d == 0).sum() / max((d != 0).sum(), 1)) for d in (p, q)]
        if (q != 0).sum() == 0 or (qs <= 0).any():
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return best_i * width


@pytest.mark.slow
def test_demo_ranges_match_independent_numpy_references(demo):
    """Every method on the shipped demo, checked against numpy on the raw activations.

    Why: the method registry replaced an if-chain; the ranges (hence calibration.json) must be
    what each method's definition says, computed here without edgepipe's method code.
    """
    model, dataset = demo
    settings = {"num_bins": 2048, "percentile": 99.99}
    results = {m: calibrate(model, dataset, {**settings, "method": m}) for m in BUILT_IN}
    names = sorted(results["minmax"].tensors)
    raw = _raw_values(model, dataset, names)
    for name in names:
        x = raw[name]
        absx = np.abs(x)
        absmax = float(absx.max())
        top = 2.0 ** (np.floor(np.log2(absmax)) + 1)  # histogram range: a power of two above max|x|
        width = top / 2048
        mm = results["minmax"].tensors[name]
        assert mm.amax == pytest.approx(absmax, rel=1e-6), name
        assert (mm.lo, mm.hi) == pytest.approx((min(x.min(), 0.0), max(x.max(), 0.0)), rel=1e-6, abs=1e-12)
        pct = results["percentile"].tensors[name]
        assert abs(pct.amax - np.percentile(absx, 99.99)) <= _percentile_tolerance(absx, 99.99, width), name
        assert abs(pct.hi - max(np.percentile(x, 99.99), 0.0)) <= _percentile_tolerance(x, 99.99, width), name
        assert abs(pct.lo - min(np.percentile(x, 0.01), 0.0)) <= _percentile_tolerance(x, 0.01, width), name
        mse = results["mse"].tensors[name]
        best = min(_raw_mse(x, t) for t in np.linspace(absmax / 64, absmax, 64))
        assert _raw_mse(x, mse.amax) <= best * 1.05 + 1e-18, name
        counts = np.bincount(np.minimum((absx / width).astype(np.int64), 2047), minlength=2048)
        ent = results["entropy"].tensors[name]
        assert ent.amax == pytest.approx(min(_entropy_reference(counts, width), absmax), abs=2 * width), name
        chosen = results["auto"].tensors[name]
        same = results[chosen.method].tensors[name]
        if "tail guard" not in chosen.reason:
            assert (chosen.amax, chosen.lo, chosen.hi) == (same.amax, same.lo, same.hi), name
