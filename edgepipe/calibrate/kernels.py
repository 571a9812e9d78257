"""The histogram's key counting as one compiled loop (numba), numpy's passes when numba is missing.

Why: binning every activation value of every calibration sample is most of the collect phase.
In numpy it takes several passes over each batch (scale into int16 keys, sort them, find where
each key starts, count the negatives and the exact zeros); a compiled loop makes one pass that
reads each value once and increments its key's counter.

Same integers either way: a value's key is the same multiply in the value's own float type
(float32 data times a float32 power of two, exact) truncated toward zero, as numpy's unsafe cast
to int16 truncates; negatives are `x < 0` and zeros `x == 0` (so -0.0 is a zero), as numpy's
`count_nonzero(x < 0)` and `count_nonzero(x == 0)`. tests/test_calibrate_kernels.py holds both
ways to the same counts.
"""

from __future__ import annotations

import numpy as np

try:  # a dependency of edgepipe; without it (a stripped install) histogram.py counts with numpy
    import numba
except ImportError:  # pragma: no cover - exercised by the tests through `numpy_only`
    numba = None


def _count_keys(values, scale, bins, counts):
    """counts[trunc(x * scale) + bins] += 1 for every x of `values` (1-D, contiguous);
    returns (negatives, zeros, out of range). A key outside [0, 2 * bins) is not counted but
    reported (the caller's range did not cover the values: an error, never a silent wrap)."""
    negatives = 0
    zeros = 0
    outside = 0
    size = counts.size
    for index in range(values.size):
        value = values[index]
        key = np.int64(value * scale) + bins
        if 0 <= key < size:
            counts[key] += 1
        else:
            outside += 1
        negatives += value < 0
        zeros += value == 0
    return negatives, zeros, outside


# compiled on first use for each input type (float32, float64) and kept on disk (cache=True), so
# a later process loads the machine code; nogil: the binning threads count tensors side by side
count_keys = numba.njit(nogil=True, cache=True)(_count_keys) if numba is not None else None


def compiled() -> bool:
    """Whether the compiled loop is available (histogram.py uses numpy's passes otherwise)."""
    return count_keys is not None
