"""The compiled key-counting loop (edgepipe/calibrate/kernels.py) against numpy's passes: the same
counts, zeros, negatives and extremes, hence the same calibration."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.calibrate import calibrate, kernels
from edgepipe.calibrate.histogram import TensorHistogram, power_of_two_above
from tests.test_calibrate_engine import iid, tiny_model
from tests.test_calibrate_histogram import _direct, _shaped


def test_the_compiled_loop_is_installed():
    """numba is a dependency: the build bins with the compiled loop (the numpy passes are the
    fallback of a stripped install, compared below)."""
    assert kernels.compiled()


def test_the_compiler_is_loaded_only_when_calibrating():
    """Importing the CLI (every command) does not import numba; the first calibration does."""
    import subprocess
    import sys

    code = ("import sys, edgepipe.cli.main, edgepipe.calibrate; assert 'numba' not in sys.modules; "
            "from edgepipe.calibrate import kernels; assert kernels.compiled() and 'numba' in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def _histogram(parts, num_bins, compiled: bool, monkeypatch, extremes=None) -> TensorHistogram:
    with monkeypatch.context() as patch:
        if not compiled:
            patch.setattr(kernels, "_COMPILED", {})
        hist = TensorHistogram("t", num_bins, rounds=2)
        hist.update_parts(parts[:2], 0, extremes)
        hist.update_parts(parts[2:], 1)
    return hist


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([np.float32, np.float64]), st.sampled_from([64, 2048, 2**15]),
       st.sampled_from(["mixed", "relu", "negative", "zeros"]))
def test_compiled_counts_equal_numpy_counts(seed, dtype, num_bins, kind):
    """Every value in the same bin as numpy's passes and np.histogram put it (values on bin
    edges, -0.0, all-negative and ReLU data, parts of several sizes, two rounds), the same exact
    zeros, and the negatives the collector left to the loop (None) counted right."""
    rng = np.random.default_rng(seed)
    data = _shaped(rng, rng.standard_t(3, size=int(rng.integers(4, 3000))) * 10.0 ** rng.uniform(-3, 3), kind)
    step = power_of_two_above(float(np.abs(data).max())) / num_bins
    edges = step * rng.integers(0, num_bins // 2, size=8)
    data = np.concatenate([data, -edges if kind != "relu" else edges]).astype(dtype)
    parts = np.array_split(data, 4)
    low, high = float(data[: sum(p.size for p in parts[:2])].min()), float(data[: sum(p.size for p in parts[:2])].max())
    with pytest.MonkeyPatch.context() as monkeypatch:
        compiled = _histogram(parts, num_bins, True, monkeypatch, (low, high, None))
        numpy_passes = _histogram(parts, num_bins, False, monkeypatch, (low, high, None))
    np.testing.assert_array_equal(compiled.counts, numpy_passes.counts)
    assert (compiled.zeros, compiled.min, compiled.max, compiled.count, compiled.range) == (
        numpy_passes.zeros, numpy_passes.min, numpy_passes.max, numpy_passes.count, numpy_passes.range)
    assert compiled.zeros == int(np.count_nonzero(data == 0))
    np.testing.assert_array_equal(compiled.counts.sum(axis=0), _direct(data.astype(np.float64), num_bins,
                                                                         compiled.range))


@pytest.mark.parametrize("values", [[0.5, -0.25, 3.0], [3.0, 0.5, -0.25, 0.1], [0.5, -9.0, -0.25, 0.1]])
def test_values_beyond_the_given_extremes_are_an_error_not_a_wrapped_key(values):
    """The loop writes counters by index: a value the caller's extremes do not cover (its key
    outside the counters, above or below, in a pair or the odd last value) is refused, naming the
    tensor, instead of landing in another bin."""
    hist = TensorHistogram("conv1_out", 64)
    with pytest.raises(ValueError, match="conv1_out"):
        hist.update(np.array(values, dtype=np.float32), 0, (-0.25, 0.5, None))


def test_calibration_is_the_same_with_either_counting(monkeypatch):
    """Through the collector (negatives left to the loop, buffered flushes, rounds): the same
    calibration as numpy's passes, every tensor's range, method and statistics."""
    model, data = tiny_model(), iid(24, seed=11)
    compiled = calibrate(model, data, {"method": "auto"}).to_json()
    monkeypatch.setattr(kernels, "_COMPILED", {})
    numpy_passes = calibrate(model, data, {"method": "auto"}).to_json()
    assert compiled == numpy_passes


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 127, 128, 129, 135, 256, 1000, 4096, 4097, 70001])
def test_pairwise_sum_is_numpys_sum_bit_for_bit(size):
    """The row sum behind the compiled error model adds in np.add.reduce's pairwise order: equal
    bits on lengths around every block and split boundary, with values whose sum depends on it."""
    rng = np.random.default_rng(size)
    values = rng.standard_normal(size) * 10.0 ** rng.uniform(-8, 8, size)
    assert kernels._loaded()["pairwise_sum"](values, size) == np.add.reduce(values)
    assert np.float64(kernels._loaded()["pairwise_sum"](values, size)).tobytes() == np.sum(values).tobytes()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["symmetric", "asymmetric", "signed symmetric"]),
       st.integers(1, 5000), st.integers(1, 300))
def test_compiled_error_model_equals_numpy_blocks(seed, grid, bins, candidates):
    """expected_error through the compiled loop equals its numpy blocks bit for bit, for |x| bins
    (upper limit only), signed bins with symmetric grids and shifted (asymmetric) grids, so every
    threshold search picks the same candidate."""
    from edgepipe.calibrate import error_model

    rng = np.random.default_rng(seed)
    centers = np.sort(rng.uniform(-4.0, 4.0, bins)) * 10.0 ** rng.uniform(-3, 3)
    counts = rng.integers(1, 10**6, bins).astype(np.float64)
    scales = rng.uniform(1e-4, 0.1, candidates) * np.abs(centers).max()
    zero_points = np.zeros(candidates)
    qmin, qmax = -127, 127
    if grid == "symmetric":
        centers, qmin = np.abs(centers), 0
    elif grid == "asymmetric":
        zero_points = np.rint(rng.uniform(-128, 127, candidates))
        qmin = -128
    compiled = error_model.expected_error(centers, counts, scales, zero_points, qmin, qmax)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(kernels, "_COMPILED", {})  # kernels.compiled() is False: numpy blocks
        numpy_blocks = error_model.expected_error(centers, counts, scales, zero_points, qmin, qmax)
    assert compiled.tobytes() == numpy_blocks.tobytes()


def test_a_refused_update_leaves_no_counts_behind_for_the_next_tensor():
    """The compiled loop counts into key counters reused from update to update (one set per
    thread): an update refused half-way (a value outside the given extremes, after other values
    were counted) leaves them zeroed, so the next tensor binned on this thread gets only its own
    values."""
    refused = TensorHistogram("conv1_out", 64)
    with pytest.raises(ValueError, match="conv1_out"):
        refused.update(np.array([0.1, 0.2, 0.3, 9.0], dtype=np.float32), 0, (0.1, 0.3, None))
    data = np.array([0.5, -0.25, 0.125, 0.0], dtype=np.float32)
    after = TensorHistogram("next", 64)
    after.update(data, 0, (-0.25, 0.5, None))
    np.testing.assert_array_equal(after.counts.sum(axis=0), _direct(data.astype(np.float64), 64, after.range))
    assert after.counts.sum() == data.size and not refused.counts.any()
