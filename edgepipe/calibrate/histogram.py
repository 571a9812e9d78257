"""Fixed-size streaming histograms of one activation tensor.

Why this shape: ONNX Runtime's calibrators keep every activation of every sample before they
histogram, so memory grows with the calibration set. Here each tensor owns a fixed number of
counters whatever the number of samples.

Layout. The range is `[0, R)` with `R` always a power of two strictly above the largest |x| seen
so far. Two count arrays of `num_bins` bins each cover it: `pos` counts x >= 0 by x, `neg` counts
x < 0 by -x. The |x| histogram (symmetric calibration) is `pos + neg`; the signed histogram
(asymmetric calibration) is `reversed(neg) ++ pos` over `[-R, R)`.

Re-binning. When a batch exceeds `R`, `R` doubles (as often as needed) and adjacent bin pairs are
merged, so counts are preserved exactly. Because `R` is a power of two, `x / R` is exact in
floating point and the bin index of a value at the final range equals the merged index at any
smaller range: the histogram does not depend on how the data was split into batches or in which
order it came. The cost: the data fills between half and all of the bins (resolution >= R/2 /
num_bins), which is still 1024+ bins at the default 2048.

Rounds. Counters are kept per round (contiguous chunks of the calibration set) so stability can
be measured from the same single pass; the totals are the sums over rounds.
"""

from __future__ import annotations

import functools
import math
import threading
import time

import numpy as np

from edgepipe.calibrate import kernels

SMALLEST_RANGE = 2.0**-24  # ranges below this are treated as all-zero tensors
SORTED_KEYS_MAX_BINS = 2**14  # keys trunc(x * bins/range) lie in (-bins, bins): int16 up to here


def power_of_two_above(value: float) -> float:
    """Smallest power of two strictly greater than `value` (and >= SMALLEST_RANGE)."""
    if not value > 0.0:
        return SMALLEST_RANGE
    exponent = math.frexp(float(value))[1]  # value = m * 2**e with 0.5 <= m < 1, so value < 2**e
    return max(math.ldexp(1.0, exponent), SMALLEST_RANGE)


class CountingChoice:
    """Which exact way of counting keys is fastest on this host and this data, measured as it bins.

    Two ways count the same keys into the same bins: sort int16 keys and find where each key
    starts (numpy sorts 16-bit integers with SIMD networks where the CPU and the numpy build have
    them, else with a scalar introsort, several times slower), or `np.add.at` on the keys as
    indices (one scalar increment per value; slower where values crowd into few bins, as they do
    in some activations and not in others). Which wins depends on the CPU, the numpy build and
    the data, so it is measured on the data itself: the first TRIALS updates of at least
    MIN_TIMED values per way are spread over the ways, then the one with the least time per value
    is used. The time is the counting thread's own CPU time (`time.thread_time`): on a busy host a
    thread is often descheduled for longer than a trial lasts, and wall time then decided by
    chance. Counts are integers, hence the same whichever way counted them: the choice decides
    only speed. (`add_at` alone where int16 cannot hold the keys: num_bins above 2**14.)
    """

    WAYS = ("sort", "add_at")
    TRIALS = 16
    MIN_TIMED = 1 << 14

    def __init__(self):
        self.lock = threading.Lock()
        self.seconds = dict.fromkeys(self.WAYS, 0.0)
        self.values = dict.fromkeys(self.WAYS, 0)
        self.trials = dict.fromkeys(self.WAYS, 0)
        self.chosen: str | None = None

    def way(self, bins: int) -> str:
        if bins > SORTED_KEYS_MAX_BINS:
            return "add_at"
        if self.chosen is not None:
            return self.chosen
        with self.lock:
            return min(self.WAYS, key=lambda way: self.trials[way])

    def record(self, way: str, seconds: float, values: int) -> None:
        if self.chosen is not None or values < self.MIN_TIMED:
            return
        with self.lock:
            self.seconds[way] += seconds
            self.values[way] += values
            self.trials[way] += 1
            if self.chosen is None and all(self.trials[w] >= self.TRIALS for w in self.WAYS):
                self.chosen = min(self.WAYS, key=lambda w: self.seconds[w] / max(self.values[w], 1))


COUNTING = CountingChoice()
_SCRATCH = threading.local()


def _key_scratch(bins: int) -> np.ndarray:
    """This thread's zeroed int64 [2, 2 * bins] key counters for the compiled loop (kept between
    updates: a fresh 64 KiB array per tensor and batch cost more than counting a small tensor)."""
    keys = getattr(_SCRATCH, "keys", None)
    if keys is None or keys.shape[1] != 2 * bins:
        keys = _SCRATCH.keys = np.zeros((2, 2 * bins), dtype=np.int64)
    return keys


@functools.lru_cache(maxsize=None)
def _key_starts(bins: int) -> np.ndarray:
    """Keys -bins + 1 .. bins: searchsorted on sorted keys gives where each key starts."""
    return np.arange(-bins + 1, bins + 1, dtype=np.int16)


class TensorHistogram:
    """Running min/max plus per-round |x| histograms (split by sign) of one tensor."""

    def __init__(self, name: str, num_bins: int = 2048, rounds: int = 1):
        if num_bins < 2 or num_bins % 2:
            raise ValueError(f"num_bins must be an even number >= 2, got {num_bins}")
        self.name = name
        self.num_bins = int(num_bins)
        self.range = SMALLEST_RANGE
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0  # exact zeros (ReLU, padding): what int8 keeps exactly, unlike tiny values
        # counts[round, 0] = x >= 0 by x ; counts[round, 1] = x < 0 by -x
        self.counts = np.zeros((max(int(rounds), 1), 2, self.num_bins), dtype=np.int64)
        self.round_min = np.full(self.counts.shape[0], math.inf)
        self.round_max = np.full(self.counts.shape[0], -math.inf)

    @property
    def rounds(self) -> int:
        return self.counts.shape[0]

    @property
    def bin_width(self) -> float:
        return self.range / self.num_bins

    def update(self, values: np.ndarray, round_index: int = 0, extremes: tuple[float, float] | None = None) -> None:
        """Add a batch of values. Non-finite values must be rejected by the caller first.

        `extremes`: (min, max) of `values` when the caller already computed them (the collector
        does, for its NaN/Inf check), to save two passes over the data.
        """
        self.update_parts([values], round_index, extremes)

    def update_parts(self, parts: list, round_index: int = 0, extremes: tuple[float, float] | None = None) -> None:
        """Add several arrays of one round at once (one bincount): the same counts as one update each.

        `extremes`: (min, max) over all parts, if known; (min, max, number of negative values)
        saves one more pass.
        """
        parts = [x for x in (np.asarray(p).ravel() for p in parts) if x.size]
        if not parts:
            return
        if extremes is None:
            low, high = min(float(x.min()) for x in parts), max(float(x.max()) for x in parts)
        else:
            low, high = float(extremes[0]), float(extremes[1])
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.round_min[round_index] = min(self.round_min[round_index], low)
        self.round_max[round_index] = max(self.round_max[round_index], high)
        size = sum(x.size for x in parts)
        self.count += size
        self.grow_to(max(abs(low), abs(high)))
        counts = self.counts[round_index]
        dtype = parts[0].dtype
        if self.num_bins & (self.num_bins - 1) or dtype not in (np.float32, np.float64) or any(
                x.dtype != dtype for x in parts):
            self.zeros += self._exact_zeros(parts, low, high)
            counts.reshape(-1)[:] += self._signed_bincount_general(np.concatenate(parts))
            return
        # bins/range is a power of two, so x * bins/range is exact in x's own float type (no
        # float64 copy for float32 data) and |x| < range keeps it strictly inside (-bins, bins):
        # truncation toward zero gives floor(|x| * bins/range) with x's sign, i.e. the bin.
        scale = dtype.type(self.num_bins / self.range)
        if kernels.compiled():  # one pass: keys, negatives and zeros, then added to the round's bins (kernels.py)
            self.zeros += self._compiled_update(parts, scale, counts)
            return
        self.zeros += self._exact_zeros(parts, low, high)
        signed = self._key_counts(parts, scale, size)
        if low >= 0.0:  # no negative values (ReLU outputs): the |x| bins directly
            counts[0] += signed[self.num_bins :]
            return
        # (-bin_width, 0) truncates to 0 as [0, bin_width) does: the negative zero bin is the number
        # of negatives minus those in the other negative bins
        if extremes is not None and len(extremes) > 2 and extremes[2] is not None:
            negatives = int(extremes[2])
        else:
            negatives = sum(int(np.count_nonzero(x < 0)) for x in parts) if high >= 0.0 else size
        zero_negatives = negatives - int(signed[: self.num_bins].sum())
        counts[0] += signed[self.num_bins :]
        counts[0, 0] -= zero_negatives
        counts[1, 0] += zero_negatives
        counts[1, 1:] += signed[self.num_bins - 1 : 0 : -1]

    @staticmethod
    def _exact_zeros(parts: list, low: float, high: float) -> int:
        """Values that are exactly 0 (or -0.0): x == 0, then a count of booleans (numpy counts a
        bool array with SIMD but a float array's non-zeros one element at a time)."""
        if not low <= 0.0 <= high:
            return 0
        return sum(int(np.count_nonzero(x == 0)) for x in parts)

    def _compiled_update(self, parts: list, scale, counts: np.ndarray) -> int:
        """The keys of `parts` counted by the compiled loop and added to one round's bins
        (`counts`, as the numpy path's sums below: kernels.fold_keys); returns the exact zeros
        counted on the way. The key counters are this thread's, reused (zeroed by fold_keys)."""
        keys = _key_scratch(self.num_bins)
        negatives = zeros = outside = 0
        try:
            for x in parts:
                n, z, o = kernels.count_keys(x, scale, self.num_bins, keys)
                negatives, zeros, outside = negatives + int(n), zeros + int(z), outside + int(o)
        except BaseException:
            keys[:] = 0
            raise
        if outside:
            keys[:] = 0
            raise ValueError(f"{outside} values of tensor '{self.name}' lie outside the histogram's range: "
                             "the extremes given to update_parts do not cover them")
        kernels.fold_keys(keys, counts, self.num_bins, negatives)
        return zeros

    def _key_counts(self, parts: list, scale, size: int) -> np.ndarray:
        """How many values of `parts` truncate to each key k = trunc(x * scale) in (-bins, bins),
        at index k + bins (2 * bins counters).

        Each part is scaled straight into its slice of one key array (no concatenated copy), then
        counted by sorting int16 keys or by `np.add.at` on intp keys (np.bincount would cast to
        intp as well, and scan the keys once more for their extremes): the same counts, whichever
        `COUNTING` finds faster here.
        """
        bins = self.num_bins
        way = COUNTING.way(bins)
        start = time.thread_time()
        keys = np.empty(size, dtype=np.int16 if way == "sort" else np.intp)
        offset = 0
        for x in parts:
            np.multiply(x, scale, out=keys[offset : offset + x.size], casting="unsafe")
            offset += x.size
        if way == "sort":
            keys.sort()
            counts = np.diff(np.searchsorted(keys, _key_starts(bins)), prepend=0)
        else:
            keys += bins
            counts = np.zeros(2 * bins, dtype=np.int64)
            np.add.at(counts, keys, 1)
        COUNTING.record(way, time.thread_time() - start, size)
        return counts

    def _signed_bincount_general(self, x: np.ndarray) -> np.ndarray:
        """Signed bins in float64 (bin counts that are not powers of two round when scaling: clipped)."""
        magnitude = np.abs(x.astype(np.float64, copy=False))
        magnitude *= self.num_bins / self.range
        index = magnitude.astype(np.int64)
        np.minimum(index, self.num_bins - 1, out=index)
        index += (x < 0).astype(np.int64) * self.num_bins
        return np.bincount(index, minlength=2 * self.num_bins)

    def grow_to(self, absmax: float) -> None:
        """Double the range until it is strictly above `absmax`, merging bin pairs each time.

        With a power-of-two bin count, k doublings merge groups of 2^k adjacent bins in one step
        (the same integer sums as k pair merges); an empty histogram just takes the new range.
        """
        target = power_of_two_above(absmax)
        if self.range >= target:
            return
        if not self.counts.any():
            self.range = target
            return
        if self.num_bins & (self.num_bins - 1) == 0:
            group = min(int(target / self.range), self.num_bins)  # 2^k, exact for powers of two
            merged = self.counts.reshape(self.rounds, 2, self.num_bins // group, group).sum(axis=-1)
            self.counts[:] = 0
            self.counts[..., : self.num_bins // group] = merged
            self.range = target
            return
        while self.range < target:
            merged = self.counts.reshape(self.rounds, 2, self.num_bins // 2, 2).sum(axis=-1)
            self.counts[:] = 0
            self.counts[..., : self.num_bins // 2] = merged
            self.range *= 2.0

    # --- views -------------------------------------------------------------------------------

    def abs_counts(self, round_index: int | None = None) -> np.ndarray:
        """|x| histogram over [0, range): all rounds summed, or one round."""
        counts = self.counts.sum(axis=0) if round_index is None else self.counts[round_index]
        return counts[0] + counts[1]

    def signed_counts(self) -> np.ndarray:
        """Signed histogram over [-range, range) with 2 * num_bins bins."""
        counts = self.counts.sum(axis=0)
        return np.concatenate([counts[1][::-1], counts[0]])

    def abs_centers(self) -> np.ndarray:
        return (np.arange(self.num_bins) + 0.5) * self.bin_width

    def signed_centers(self) -> np.ndarray:
        return (np.arange(-self.num_bins, self.num_bins) + 0.5) * self.bin_width

    def observed_absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    def zeroed_share(self, lo: float, hi: float) -> float:
        """Share of the non-zero values that the int8 grid of [lo, hi] rounds to 0 (|x| below half
        a step), from the |x| bins (the partly covered bin by its covered fraction)."""
        nonzero = self.count - self.zeros
        if nonzero <= 0 or not hi > lo:
            return 0.0
        half_step = (hi - lo) / 255.0 / 2.0
        edge = half_step / self.bin_width
        full = min(int(edge), self.num_bins)
        counts = self.abs_counts()
        below = float(counts[:full].sum())
        if full < self.num_bins:
            below += float(counts[full]) * (edge - full)
        return min(max((below - self.zeros) / nonzero, 0.0), 1.0)

    def summary(self, bins: int = 64, **thresholds: float) -> dict:
        """Coarse signed histogram over [min, max] for the report, plus the chosen thresholds."""
        signed, centers = self.signed_counts(), self.signed_centers()
        low = self.min if self.count else 0.0
        high = self.max if self.count else 0.0
        if high <= low:
            high = low + max(self.bin_width, 1e-12)
        edges = np.linspace(low, high, bins + 1)
        keep = signed > 0
        coarse, _ = np.histogram(np.clip(centers[keep], low, high), bins=edges, weights=signed[keep])
        return {
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in np.rint(coarse)],
            **{key: float(value) for key, value in thresholds.items()},
        }
