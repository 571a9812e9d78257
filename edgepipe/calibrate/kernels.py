"""Calibration's innermost loops compiled (numba): histogram key counting (and adding the counts
to a round's bins) and the error model's sums; numpy's passes where numba is missing.

Why: binning every activation value of every calibration sample is most of the collect phase.
In numpy it takes several passes over each batch (scale into int16 keys, sort them, find where
each key starts, count the negatives and the exact zeros); compiled, it is two loops over the
batch: one counts signs and zeros, one increments each value's key counter.

Same integers either way: a value's key is the same multiply in the value's own float type
(float32 data times a float32 power of two, exact) truncated toward zero, as numpy's unsafe cast
to int16 truncates; negatives are `x < 0` and zeros `x == 0` (so -0.0 is a zero), as numpy's
`count_nonzero(x < 0)` and `count_nonzero(x == 0)`. The error model's sums likewise: the same
float64 operations per element and numpy's pairwise summation order, so the same bits.
tests/test_calibrate_kernels.py holds both ways to the same results.
"""

from __future__ import annotations

import threading

import numpy as np


def _count_keys(values, scale, bins, counts):
    """counts[k % 2, trunc(x * scale) + bins] += 1 for the k-th value x of `values` (1-D,
    contiguous; counts: int64 [2, 2 * bins], summed over its first axis by the caller); returns
    (negatives, zeros, out of range). A key outside [0, 2 * bins) is not counted but reported
    (the caller's range did not cover the values: an error, never a silent wrap).

    Signs and zeros in their own loop (the compiler vectorizes it); keys into two alternating
    rows of counters, so a run of equal keys does not wait on its own previous increment."""
    negatives = 0
    zeros = 0
    for index in range(values.size):
        value = values[index]
        negatives += value < 0
        zeros += value == 0
    outside = 0
    size = np.uint64(counts.shape[1])  # a negative key wraps to a huge unsigned one: one comparison
    pairs = values.size // 2
    for pair in range(pairs):
        first = np.uint64(np.int64(values[2 * pair] * scale) + bins)
        second = np.uint64(np.int64(values[2 * pair + 1] * scale) + bins)
        if first < size:
            counts[0, first] += 1
        else:
            outside += 1
        if second < size:
            counts[1, second] += 1
        else:
            outside += 1
    if values.size % 2:
        last = np.uint64(np.int64(values[values.size - 1] * scale) + bins)
        if last < size:
            counts[0, last] += 1
        else:
            outside += 1
    return negatives, zeros, outside


def _fold_keys(keys, counts, bins, negatives):
    """Add the signed key counts of `_count_keys` (`keys`: its two rows of 2 * bins counters) to
    one round's |x| counters (`counts`: [0] x >= 0 by key, [1] x < 0 by -key), then zero `keys`
    for the next update. A negative value with key 0 (-bin width < x < 0) counts as negative: the
    negatives (`negatives`, all of them) minus those with a negative key are moved from [0, 0] to
    [1, 0]. The integer sums TensorHistogram.update_parts makes with numpy, in one call."""
    below = 0
    for j in range(bins):
        below += keys[0, j] + keys[1, j]
    zero_negatives = negatives - below
    for j in range(bins):
        counts[0, j] += keys[0, bins + j] + keys[1, bins + j]
    counts[0, 0] -= zero_negatives
    counts[1, 0] += zero_negatives
    for j in range(1, bins):
        counts[1, j] += keys[0, bins - j] + keys[1, bins - j]
    for row in range(2):
        for j in range(2 * bins):
            keys[row, j] = 0


PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE: rows up to this long are summed by 8 accumulators


def _block_sum(values, start, n):
    """numpy's pairwise_sum leaf: n <= PAIRWISE_BLOCK values, 8 interleaved accumulators."""
    if n < 8:
        total = 0.0
        for i in range(start, start + n):
            total += values[i]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = 8
    stop = n - n % 8
    while i < stop:
        at = start + i
        r0 += values[at]
        r1 += values[at + 1]
        r2 += values[at + 2]
        r3 += values[at + 3]
        r4 += values[at + 4]
        r5 += values[at + 5]
        r6 += values[at + 6]
        r7 += values[at + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += values[start + i]
        i += 1
    return total


def _pairwise_sum(values, n):
    """values[:n] summed in numpy's order for a contiguous float64 row (np.add.reduce's pairwise
    summation: halves rounded down to a multiple of 8 until a block fits PAIRWISE_BLOCK), so a
    sum here is bit for bit numpy's. Iterative (an explicit stack of halves): numba's on-disk
    cache cannot hold a recursive function."""
    starts = np.empty(64, np.int64)
    sizes = np.empty(64, np.int64)
    right = np.zeros(64, np.bool_)  # the frame's left half is done (in lefts), its right half runs
    lefts = np.empty(64)
    starts[0] = 0
    sizes[0] = n
    depth = 1
    while True:
        top = depth - 1
        if sizes[top] > PAIRWISE_BLOCK:  # split: run the left half first
            half = sizes[top] // 2
            half -= half % 8
            right[top] = False
            starts[depth] = starts[top]
            sizes[depth] = half
            depth += 1
            continue
        value = _block_sum(values, starts[top], sizes[top])
        depth -= 1
        while depth > 0 and right[depth - 1]:  # a right half is done: its frame's sum is complete
            value = lefts[depth - 1] + value
            depth -= 1
        if depth == 0:
            return value
        parent = depth - 1  # its left half is done: keep it, run the right half
        lefts[parent] = value
        right[parent] = True
        half = sizes[parent] // 2
        half -= half % 8
        starts[depth] = starts[parent] + half
        sizes[depth] = sizes[parent] - half
        depth += 1


def _squared_errors(centers, counts, scales, zero_points, qmin, qmax, shifted, upper_only, out):
    """out[k] = the count-weighted squared error of grid k over the bins, unnormalized: what
    error_model.expected_error computes with numpy for one row (the same float64 operations in
    the same order for every element, then numpy's pairwise sum of the row), without its
    passes over a candidates x bins block."""
    row = np.empty(centers.size)
    for k in range(scales.size):
        scale = scales[k]
        zero_point = zero_points[k]
        for j in range(centers.size):
            level = np.rint(centers[j] / scale)
            if shifted:
                level = min(max(level + zero_point, qmin), qmax) - zero_point
            elif upper_only:
                level = min(level, qmax)
            else:
                level = min(max(level, qmin), qmax)
            error = centers[j] - level * scale
            row[j] = error * error * counts[j]
        out[k] = _pairwise_sum(row, centers.size)


_LOCK = threading.Lock()
_COMPILED: dict | None = None  # name -> compiled loop once loaded; {} where numba is missing


def _compile() -> dict:
    """numba's versions of the loops above, or {} without numba. Imported on first use, not with
    edgepipe (commands that never calibrate do not load a compiler). Each loop is compiled on its
    first call for each input type and kept on disk (cache=True), so a later process loads the
    machine code; nogil: the binning threads count tensors side by side."""
    try:  # a dependency of edgepipe; without it (a stripped install) numpy's passes are used
        import numba
    except ImportError:
        return {}
    module = globals()
    for name in ("_block_sum", "_pairwise_sum", "_count_keys", "_fold_keys", "_squared_errors"):
        try:
            compiled = numba.njit(nogil=True, cache=True)(module[name])
        except RuntimeError:  # no writable cache location (read-only install and home): compile per process
            compiled = numba.njit(nogil=True)(module[name])
        module[name] = compiled  # they call each other by these names: numba reads them when it compiles
    return {"count_keys": module["_count_keys"], "fold_keys": module["_fold_keys"],
            "squared_errors": module["_squared_errors"], "pairwise_sum": module["_pairwise_sum"]}


def _loaded() -> dict:
    global _COMPILED
    if _COMPILED is None:
        with _LOCK:
            if _COMPILED is None:
                _COMPILED = _compile()
    return _COMPILED


def compiled() -> bool:
    """Whether the compiled loops are available (numpy's passes are used otherwise)."""
    return bool(_loaded())


def count_keys(values, scale, bins, counts):
    """The compiled `_count_keys` (only where `compiled()`)."""
    return _loaded()["count_keys"](values, scale, bins, counts)


def fold_keys(keys, counts, bins, negatives):
    """The compiled `_fold_keys` (only where `compiled()`)."""
    return _loaded()["fold_keys"](keys, counts, bins, negatives)


def squared_errors(centers, counts, scales, zero_points, qmin, qmax, shifted, upper_only, out):
    """The compiled `_squared_errors` (only where `compiled()`)."""
    return _loaded()["squared_errors"](centers, counts, scales, zero_points, qmin, qmax, shifted, upper_only, out)
