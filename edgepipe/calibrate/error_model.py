"""Histogram-estimated int8 quantization error: what `mse` minimizes and what `auto` compares.

Why on a histogram: the statistics are streamed into fixed-size histograms (histogram.py), so
every method sees bin counts, never raw samples.

The MSE model. A value x quantized with step s and integer limits [qmin, qmax] becomes
`s * clip(rint(x / s), qmin, qmax)`; the expected squared error over the tensor is estimated by
putting each bin's count at its centre. This counts both rounding noise (for |x| below the
threshold, exact per bin - values near 0 round to 0 with little error, which the usual s^2/12
approximation overstates for ReLU outputs) and clipping error (x beyond the threshold). The
asymmetric grid is the one `quantmath.asymmetric_params` builds (0.0 exactly representable).
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath
from edgepipe.calibrate import kernels

SYMMETRIC_LEVELS = 127  # int8 narrow range: [-127, 127]
COARSE_CANDIDATES = 128  # first pass of the threshold search; refined bin by bin afterwards


# --- error model ---------------------------------------------------------------------------


CHUNK_ELEMENTS = 32768  # candidates x bins per block of the error matrix (256 KiB of float64: stays in cache)


def expected_error(centers: np.ndarray, counts: np.ndarray, scales, zero_points, qmin: int, qmax: int):
    """Mean squared quantization error per candidate grid (scales/zero_points: 1-D, same length).

    Computed in blocks of candidates with in-place operations (the full candidates x bins matrix
    and its temporaries do not stay in cache and were several times slower), and each
    candidate's sum is a plain row sum, so a candidate's error does not depend on which other
    candidates share its call (a BLAS matrix-vector product may sum rows differently by shape).
    Zero points that are all 0 (symmetric grids) skip the two no-op additions, and on |x| bins
    only the upper limit is applied (the lower cannot bind): the same values, fewer passes.
    """
    scales = np.asarray(scales, dtype=np.float64)
    zero_points = np.asarray(zero_points, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    result = np.empty(scales.size)
    shifted = bool(np.any(zero_points))
    # |x| bins (symmetric grids): rint(c / s) >= 0 >= qmin, so only the upper limit can bind
    upper_only = not shifted and qmin <= 0 and (centers.size == 0 or centers.min() >= 0.0)
    if kernels.compiled() and centers.size:  # one pass per candidate, the same values (kernels.py)
        kernels.squared_errors(np.ascontiguousarray(centers), np.ascontiguousarray(counts),
                               np.ascontiguousarray(scales), np.ascontiguousarray(zero_points),
                               float(qmin), float(qmax), shifted, upper_only, result)
        return result / max(float(counts.sum()), 1.0)
    rows = max(1, CHUNK_ELEMENTS // max(centers.size, 1))
    block = np.empty((min(rows, scales.size), centers.size))
    for start in range(0, scales.size, rows):
        stop = min(start + rows, scales.size)
        m = block[: stop - start]
        scale = scales[start:stop, None]
        np.divide(centers[None, :], scale, out=m)
        np.rint(m, out=m)
        if shifted:
            zero_point = zero_points[start:stop, None]
            m += zero_point
            np.maximum(m, qmin, out=m)  # = np.clip (no NaN here), without its Python-level wrapper
            np.minimum(m, qmax, out=m)
            m -= zero_point
        elif upper_only:
            np.minimum(m, qmax, out=m)
        else:
            np.maximum(m, qmin, out=m)
            np.minimum(m, qmax, out=m)
        m *= scale
        np.subtract(centers[None, :], m, out=m)
        np.square(m, out=m)
        m *= counts[None, :]
        result[start:stop] = m.sum(axis=1)
    return result / max(float(counts.sum()), 1.0)


def symmetric_error(abs_centers: np.ndarray, abs_counts: np.ndarray, amaxes) -> np.ndarray:
    """Expected MSE of symmetric int8 quantization with threshold(s) `amaxes`, from |x| bins."""
    amaxes = np.atleast_1d(np.asarray(amaxes, dtype=np.float64))
    scales = np.maximum(amaxes, quantmath.TINY) / SYMMETRIC_LEVELS
    return expected_error(abs_centers, abs_counts, scales, np.zeros_like(scales), 0, SYMMETRIC_LEVELS)


def asymmetric_error(signed_centers: np.ndarray, signed_counts: np.ndarray, ranges) -> np.ndarray:
    """Expected MSE of asymmetric int8 quantization for each (lo, hi) in `ranges`."""
    ranges = np.asarray(ranges, dtype=np.float64).reshape(-1, 2)
    scales, zero_points = asymmetric_grids(ranges[:, 0], ranges[:, 1])
    qmin, qmax = quantmath.qrange(8)
    return expected_error(signed_centers, signed_counts, scales, zero_points, qmin, qmax)


def asymmetric_grids(lo: np.ndarray, hi: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """`quantmath.asymmetric_params` for arrays of ranges: the same float64 operations elementwise.

    Why: the range search evaluates thousands of candidate ranges per tensor; one Python call per
    candidate was most of `mse_range`'s time. np.rint and Python's round() both round half to even.
    """
    qmin, qmax = quantmath.qrange(bits)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    degenerate = hi - lo < quantmath.TINY
    scale = (hi - lo) / float(qmax - qmin)
    safe = np.where(degenerate, 1.0, scale)
    zero_point = np.clip(np.rint(qmin - lo / safe), qmin, qmax)
    return np.where(degenerate, quantmath.TINY * 1e6, scale), np.where(degenerate, 0.0, zero_point)


def search_threshold(error_of, last_bin: int, bin_width: float) -> float:
    """Threshold k * bin_width (k in 1..last_bin) minimizing error_of(thresholds): coarse, then fine."""
    if last_bin <= 0:
        return bin_width
    step = max(1, last_bin // COARSE_CANDIDATES)
    coarse = np.unique(np.append(np.arange(step, last_bin + 1, step), last_bin))
    best = int(coarse[int(np.argmin(error_of(coarse * bin_width)))])
    fine = np.arange(max(1, best - step), min(last_bin, best + step) + 1)
    return float(fine[int(np.argmin(error_of(fine * bin_width)))] * bin_width)


def nonzero_bins(centers: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = counts > 0
    return centers[keep], counts[keep].astype(np.float64)


def last_nonzero_bin(counts: np.ndarray) -> int:
    """Number of bins up to and including the last non-empty one (0 if all empty)."""
    nonzero = np.flatnonzero(counts)
    return int(nonzero[-1]) + 1 if nonzero.size else 0
