"""Streaming histogram: exact re-binning, split independence, range bookkeeping."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.calibrate.histogram import TensorHistogram, power_of_two_above


def _direct(values: np.ndarray, num_bins: int, value_range: float) -> np.ndarray:
    """Reference |x| histogram, split by sign, computed in one shot with np.histogram."""
    edges = np.linspace(0.0, value_range, num_bins + 1)
    pos, _ = np.histogram(values[values >= 0], bins=edges)
    neg, _ = np.histogram(-values[values < 0], bins=edges)
    return np.stack([pos, neg])


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(finite, min_size=1, max_size=40), min_size=1, max_size=6))
def test_rebinning_preserves_counts_and_extremes(batches):
    hist = TensorHistogram("t", num_bins=64, rounds=1)
    for batch in batches:
        hist.update(np.array(batch, dtype=np.float32))
    everything = np.concatenate([np.array(b, dtype=np.float32) for b in batches])
    assert hist.counts.sum() == everything.size
    assert hist.min == float(everything.min()) and hist.max == float(everything.max())
    assert hist.range > np.abs(everything).max()
    assert hist.range == power_of_two_above(float(np.abs(everything).max()))
    # values sit in the bin np.histogram puts them in at the final range (bin edges are exact)
    np.testing.assert_array_equal(hist.counts[0], _direct(everything.astype(np.float64), 64, hist.range))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7))
def test_histogram_does_not_depend_on_batch_split_or_order(seed, pieces):
    rng = np.random.default_rng(seed)
    data = (rng.standard_t(3, size=500) * rng.uniform(0.01, 100)).astype(np.float32)
    one_shot = TensorHistogram("t", 256)
    one_shot.update(data)
    split = TensorHistogram("t", 256)
    cuts = np.sort(rng.integers(0, data.size, size=pieces))
    for part in reversed(np.split(data, cuts)):
        split.update(part)
    np.testing.assert_array_equal(one_shot.counts, split.counts)
    assert (one_shot.range, one_shot.min, one_shot.max) == (split.range, split.min, split.max)


def test_rounds_sum_to_total_and_keep_own_extremes():
    hist = TensorHistogram("t", 128, rounds=3)
    hist.update(np.array([0.5, -0.25]), 0)
    hist.update(np.array([3.0]), 2)
    hist.update(np.array([-7.0, 1.0]), 1)
    assert hist.abs_counts().sum() == 5
    assert [hist.abs_counts(r).sum() for r in range(3)] == [2, 2, 1]
    assert list(hist.round_max) == [0.5, 1.0, 3.0] and list(hist.round_min) == [-0.25, -7.0, 3.0]
    signed = hist.signed_counts()
    assert signed[: hist.num_bins].sum() == 2 and signed[hist.num_bins :].sum() == 3


def test_summary_counts_every_value():
    hist = TensorHistogram("t", 256)
    values = np.random.default_rng(1).normal(size=1000)
    hist.update(values)
    summary = hist.summary(bins=64, amax=1.5)
    assert len(summary["edges"]) == 65 and len(summary["counts"]) == 64
    assert sum(summary["counts"]) == 1000
    assert summary["edges"][0] == values.min() and summary["edges"][-1] == values.max()
    assert summary["amax"] == 1.5


def _shaped(rng, data: np.ndarray, kind: str) -> np.ndarray:
    """`data` as a ReLU output, all negative, half signed zeros (-0.0 and tiny values), or as it is."""
    if kind == "relu":
        return np.maximum(data, 0.0)
    if kind == "negative":
        return -np.abs(data) - 1e-3
    if kind == "zeros":
        return np.where(rng.random(data.size) < 0.5, -0.0, data * 1e-30)
    return data


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([np.float32, np.float64, np.float16]),
       st.sampled_from([64, 96, 2048]), st.sampled_from(["mixed", "relu", "negative", "zeros"]))
def test_fast_binning_matches_reference_bins(seed, dtype, num_bins, kind):
    """Sign-split binning (truncation + negative-zero-bin count, one-step range growth) puts every
    value where np.histogram does, for -0.0, all-negative and all-positive data, float16/64 and
    bin counts that are not powers of two; rounds keep their own counts."""
    rng = np.random.default_rng(seed)
    parts = []
    for scale in rng.uniform(-4, 4, size=3):  # ranges that jump by many powers of two
        data = _shaped(rng, rng.standard_t(3, size=int(rng.integers(1, 300))) * 10.0**scale, kind)
        parts.append(np.clip(data, -6e4, 6e4).astype(dtype))  # finite in float16 too
    hist = TensorHistogram("t", num_bins, rounds=2)
    for i, part in enumerate(parts):
        hist.update(part, i % 2)
    everything = np.concatenate(parts).astype(np.float64)
    assert hist.range == power_of_two_above(float(np.abs(everything).max()))
    per_round = [np.concatenate(parts[r::2]).astype(np.float64) for r in range(2)]
    for r in range(2):
        np.testing.assert_array_equal(hist.counts[r], _direct(per_round[r], num_bins, hist.range))


def test_update_parts_equals_one_update_per_part():
    rng = np.random.default_rng(5)
    parts = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32) for n in (5, 300, 1, 40)]
    parts.append(np.maximum(parts[1], 0))
    one_by_one, together = TensorHistogram("t", 256, rounds=2), TensorHistogram("t", 256, rounds=2)
    for part in parts:
        one_by_one.update(part, 1)
    together.update_parts(parts + [np.zeros(0, np.float32)], 1)
    np.testing.assert_array_equal(one_by_one.counts, together.counts)
    assert (one_by_one.range, one_by_one.min, one_by_one.max, one_by_one.count) == (
        together.range, together.min, together.max, together.count)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([np.float32, np.float64]), st.sampled_from([256, 2048, 2**14]),
       st.sampled_from(["mixed", "relu", "negative", "zeros"]))
def test_sorted_keys_and_add_at_count_the_same(seed, dtype, num_bins, kind):
    """Both ways of counting keys with numpy (sorted int16 keys or np.add.at; the host's speed
    picks one where the compiled loop is missing) put every value in the bin np.histogram puts it
    in, including -0.0 and values just inside a bin."""
    import edgepipe.calibrate.histogram as histogram
    from edgepipe.calibrate import kernels

    rng = np.random.default_rng(seed)
    data = _shaped(rng, rng.standard_t(3, size=int(rng.integers(1, 3000))) * 10.0 ** rng.uniform(-3, 3), kind)
    step = power_of_two_above(float(np.abs(data).max())) / num_bins
    data = np.concatenate([data, -step * rng.integers(0, num_bins // 2, size=8)])  # negatives on bin edges
    parts = np.array_split(data.astype(dtype), 3)
    counts = []
    original = histogram.COUNTING.chosen
    for way in histogram.CountingChoice.WAYS:
        histogram.COUNTING.chosen = way
        try:
            with pytest.MonkeyPatch.context() as monkeypatch:
                monkeypatch.setattr(kernels, "_COMPILED", {})  # numpy's passes
                hist = TensorHistogram("t", num_bins, rounds=1)
                hist.update_parts(parts)
        finally:
            histogram.COUNTING.chosen = original
        counts.append(hist.counts[0])
    np.testing.assert_array_equal(counts[0], counts[1])
    np.testing.assert_array_equal(counts[0], _direct(np.concatenate(parts).astype(np.float64), num_bins, hist.range))


def test_counting_choice_tries_every_way_then_keeps_the_fastest():
    """Until each way has TRIALS timed updates, the least-tried way counts next; then the way
    with the least time per value is kept (updates below MIN_TIMED values are not timed), and
    keys int16 cannot hold are always counted with add_at."""
    from edgepipe.calibrate.histogram import SORTED_KEYS_MAX_BINS, CountingChoice

    choice = CountingChoice()
    seen = []
    for _ in range(2 * CountingChoice.TRIALS):
        way = choice.way(2048)
        seen.append(way)
        choice.record(way, 2.0 if way == "sort" else 1.0, CountingChoice.MIN_TIMED)
        choice.record(way, 100.0, CountingChoice.MIN_TIMED - 1)  # too small to time: ignored
    assert sorted(seen) == sorted(CountingChoice.WAYS * CountingChoice.TRIALS)
    assert choice.chosen == "add_at" and choice.way(2048) == "add_at"
    assert CountingChoice().way(2 * SORTED_KEYS_MAX_BINS) == "add_at"


def test_counting_trials_are_timed_on_the_threads_cpu_clock(monkeypatch):
    """A trial's time is the counting thread's CPU time: a thread descheduled mid-trial on a busy
    host (here: a wall clock that jumps 10 s on every reading) does not decide the way."""
    import types

    import edgepipe.calibrate.histogram as histogram
    from edgepipe.calibrate import kernels

    monkeypatch.setattr(kernels, "_COMPILED", {})  # numpy's passes, where the choice is made
    cpu = iter(np.arange(0.0, 1.0, 1e-6))
    wall = iter(np.arange(0.0, 1e6, 10.0))
    monkeypatch.setattr(histogram, "time", types.SimpleNamespace(thread_time=lambda: float(next(cpu)),
                                                                 perf_counter=lambda: float(next(wall))))
    choice = histogram.CountingChoice()
    monkeypatch.setattr(histogram, "COUNTING", choice)
    data = np.random.default_rng(0).normal(size=histogram.CountingChoice.MIN_TIMED).astype(np.float32)
    hist = TensorHistogram("t", 2048)
    for _ in range(2 * histogram.CountingChoice.TRIALS):
        hist.update(data)
    assert choice.chosen in histogram.CountingChoice.WAYS
    assert all(0.0 < choice.seconds[way] < 1e-4 for way in histogram.CountingChoice.WAYS)  # CPU clock steps only
    assert hist.count == data.size * 2 * histogram.CountingChoice.TRIALS
