"""Range choosers against straightforward references on raw data or small histograms."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe import quantmath
from edgepipe.calibrate import error_model, methods
from edgepipe.calibrate.methods.entropy import entropy_amax
from edgepipe.calibrate.methods.minmax import minmax_range
from edgepipe.calibrate.methods.mse import mse_amax, mse_range
from edgepipe.calibrate.methods.percentile import percentile_amax, percentile_range
from edgepipe.calibrate.histogram import TensorHistogram


def reference_entropy_amax(hist, bin_width, levels=128, eps=1e-4):
    """The KL algorithm written out with plain loops (see entropy.py's docstring)."""
    hist = [float(h) for h in hist]
    hist[0] = hist[1]
    stop = max(k for k, h in enumerate(hist) if h > 0) + 1
    if stop <= levels:
        return stop * bin_width
    best_i, best_kl = None, math.inf
    for i in range(levels, stop + 1):
        p = hist[:i]
        p[-1] += sum(hist[i:])
        group = i // levels
        q = [0.0] * i
        for j in range(levels):
            start, end = j * group, (i if j == levels - 1 else (j + 1) * group)
            total = sum(hist[start:end])
            nonempty = [k for k in range(start, end) if p[k] != 0]
            for k in nonempty:
                q[k] = total / len(nonempty)

        def smooth(d):
            zeros = sum(1 for v in d if v == 0)
            if zeros == len(d):
                return None
            taken = eps * zeros / (len(d) - zeros)
            return [eps if v == 0 else v - taken for v in d]

        ps, qs = smooth(p), smooth(q)
        if ps is None or qs is None or min(qs) <= 0:
            kl = math.inf
        else:
            sp, sq = sum(ps), sum(qs)
            kl = sum((a / sp) * math.log((a / sp) / (b / sq)) for a, b in zip(ps, qs) if a > 0)
        if kl <= best_kl:
            best_i, best_kl = i, kl
    return best_i * bin_width


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([160, 256, 300]), st.sampled_from([0.0, 0.3, 0.8]))
def test_entropy_matches_reference_loop_implementation(seed, size, empty_fraction):
    rng = np.random.default_rng(seed)
    decay = rng.uniform(5, 80)
    hist = np.rint(rng.exponential(1.0, size) * 1000 * np.exp(-np.arange(size) / decay)).astype(np.int64)
    hist[rng.random(size) < empty_fraction] = 0
    hist[-1] += rng.integers(0, 3)  # a few far outliers
    if hist.sum() == 0:
        hist[0] = 1
    width = rng.uniform(0.001, 1.0)
    assert entropy_amax(hist, width) == pytest.approx(reference_entropy_amax(hist, width), rel=1e-12)


def test_entropy_clips_a_long_tail_but_not_a_uniform_range():
    tail = np.rint(1e6 * np.exp(-np.arange(2048) / 40.0)).astype(np.int64)
    assert entropy_amax(tail, 1.0) < 1024
    uniform = np.full(1024, 1000)
    assert entropy_amax(uniform, 1.0) == 1024


def _hist(values, num_bins=2048):
    hist = TensorHistogram("t", num_bins)
    hist.update(values)
    return hist


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_one_bin(percentile):
    values = np.random.default_rng(3).standard_t(4, size=200_000)
    hist = _hist(values)
    amax = percentile_amax(hist.abs_counts(), hist.bin_width, percentile)
    assert abs(amax - np.percentile(np.abs(values), percentile)) <= hist.bin_width
    lo, hi = percentile_range(hist, percentile)
    assert abs(hi - np.percentile(values, percentile)) <= hist.bin_width
    assert abs(lo - np.percentile(values, 100 - percentile)) <= hist.bin_width


def _actual_symmetric_mse(values, amax):
    scale = quantmath.symmetric_scale(amax)
    return float(np.mean((values - quantmath.fake_quantize(values, scale, 0, narrow=True)) ** 2))


@pytest.mark.parametrize("kind", ["normal", "laplace", "relu_t"])
def test_mse_threshold_is_near_the_brute_force_optimum_on_raw_samples(kind):
    rng = np.random.default_rng(7)
    values = {
        "normal": rng.normal(size=100_000),
        "laplace": rng.laplace(size=100_000),
        "relu_t": np.maximum(rng.standard_t(3, size=100_000), 0.0),
    }[kind]
    hist = _hist(values)
    amax = mse_amax(hist.abs_counts(), hist.bin_width)
    grid = np.linspace(hist.observed_absmax() / 200, hist.observed_absmax(), 400)
    brute = np.array([_actual_symmetric_mse(values, a) for a in grid])
    best = grid[int(np.argmin(brute))]
    assert _actual_symmetric_mse(values, amax) <= brute.min() * 1.03
    assert abs(amax - best) <= 0.15 * best  # MSE is flat near its optimum: same neighbourhood


def test_mse_range_beats_minmax_on_skewed_data_and_keeps_zero():
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.exponential(1.0, 50_000), -rng.exponential(0.1, 50_000)])
    hist = _hist(values)
    lo, hi = mse_range(hist)
    assert hist.min <= lo <= 0.0 <= hi <= hist.max

    def actual(lo_, hi_):
        scale, zp = quantmath.asymmetric_params(lo_, hi_)
        return float(np.mean((values - quantmath.fake_quantize(values, scale, zp)) ** 2))

    assert actual(lo, hi) < actual(hist.min, hist.max)
    scale, zp = quantmath.asymmetric_params(lo, hi)
    assert quantmath.fake_quantize(np.zeros(1), scale, zp)[0] == 0.0


def test_minmax_is_exact():
    values = np.array([-3.25, 0.5, 7.125, -0.0])
    hist = _hist(values, 256)
    assert methods.fixed_choice(methods.get("minmax"), hist, {}).amax == 7.125
    assert minmax_range(hist) == (-3.25, 7.125)
    positive = _hist(np.array([0.5, 2.0]), 256)
    assert minmax_range(positive) == (0.0, 2.0)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e3, 0.0, allow_nan=False), st.floats(0.0, 1e3, allow_nan=False), st.floats(0, 1))
def test_asymmetric_params_zero_exact_and_round_trip_within_half_step(lo, hi, where):
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    scale, zero_point = quantmath.asymmetric_params(lo, hi)
    qmin, qmax = quantmath.qrange(8)
    assert qmin <= zero_point <= qmax
    assert quantmath.fake_quantize(np.zeros(1), scale, zero_point)[0] == 0.0
    x = np.array([lo + where * (hi - lo), lo, hi])
    error = np.abs(quantmath.fake_quantize(x, scale, zero_point).astype(np.float64) - x)
    # float32 dequantize adds relative rounding on top of the half step
    assert np.all(error <= scale / 2 + 1e-6 * max(abs(lo), abs(hi)) + 1e-9)


def test_vectorized_asymmetric_grids_match_quantmath_exactly():
    from edgepipe import quantmath
    from edgepipe.calibrate.error_model import asymmetric_grids

    rng = np.random.default_rng(3)
    lo = np.concatenate([-rng.uniform(0, 5, 500), [0.0, -0.0, 1.0, -1e-13, -2.5, -127.5 / 255]])
    hi = np.concatenate([rng.uniform(0, 5, 500), [0.0, 0.0, 2.0, 0.0, 0.0, 127.5 / 255]])
    lo[::7] *= 1e-3  # zero points near the clip limits and half-way roundings
    scales, zero_points = asymmetric_grids(lo, hi)
    for l, h, s, z in zip(lo, hi, scales, zero_points):
        assert (s, z) == quantmath.asymmetric_params(l, h)


def test_candidate_error_does_not_depend_on_its_batch_of_candidates():
    """expected_error works in blocks of candidates with plain row sums: a candidate's error is
    the same bit for bit alone, in a small call or in a large one."""
    rng = np.random.default_rng(11)
    centers = np.sort(rng.uniform(-3.0, 5.0, 3000))
    counts = rng.integers(1, 1000, centers.size).astype(np.float64)
    scales = rng.uniform(0.001, 0.05, 130)
    zero_points = np.rint(rng.uniform(-128, 127, 130))
    together = error_model.expected_error(centers, counts, scales, zero_points, -128, 127)
    for k in (0, 7, 129):
        alone = error_model.expected_error(centers, counts, scales[k : k + 1], zero_points[k : k + 1], -128, 127)
        assert alone[0] == together[k]
    # reference: the direct matrix formula
    levels = np.clip(np.rint(centers[None, :] / scales[:, None]) + zero_points[:, None], -128, 127)
    direct = ((centers[None, :] - (levels - zero_points[:, None]) * scales[:, None]) ** 2 * counts).sum(1) / counts.sum()
    np.testing.assert_allclose(together, direct, rtol=1e-12)
