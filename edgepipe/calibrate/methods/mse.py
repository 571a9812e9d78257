"""mse: the threshold (and the asymmetric range) with the lowest histogram-estimated error.

Why: it weighs rounding noise against clipping error directly (edgepipe/calibrate/error_model.py),
so it neither clips the rare large values as hard as entropy nor wastes levels on them as minmax.
"""

from __future__ import annotations

import numpy as np

from edgepipe.calibrate.error_model import (asymmetric_error, last_nonzero_bin, nonzero_bins, search_threshold,
                                            symmetric_error)
from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.methods import RangeMethod, register
from edgepipe.calibrate.methods.minmax import minmax_range


def mse_amax(abs_counts: np.ndarray, bin_width: float) -> float:
    """Threshold minimizing the histogram-estimated symmetric quantization MSE."""
    centers, counts = nonzero_bins((np.arange(abs_counts.size) + 0.5) * bin_width, abs_counts)
    return search_threshold(
        lambda amaxes: symmetric_error(centers, counts, amaxes), last_nonzero_bin(abs_counts), bin_width
    )


def mse_range(hist: TensorHistogram, sweeps: int = 3) -> tuple[float, float]:
    """(lo, hi) minimizing histogram-estimated asymmetric MSE: alternate 1-D searches on each side.

    Each side is searched with the other fixed (coordinate descent from (min, max)); a side with no
    values (e.g. lo for a ReLU output) stays at 0. A side whose fixed other side has not moved
    since its last search is not searched again (the search is deterministic: same result).
    """
    centers, counts = nonzero_bins(hist.signed_centers(), hist.signed_counts())
    width = hist.bin_width
    lo, hi = minmax_range(hist)
    pos_bins = last_nonzero_bin(hist.counts.sum(axis=0)[0]) if hi > 0 else 0
    neg_bins = last_nonzero_bin(hist.counts.sum(axis=0)[1]) if lo < 0 else 0
    hi_searched_at = lo_searched_at = None  # the other side's value at each side's last search
    for _ in range(sweeps):
        previous = (lo, hi)
        if pos_bins and lo != hi_searched_at:  # the same fixed side gives the same result again
            hi = search_threshold(
                lambda his: asymmetric_error(centers, counts, np.stack([np.full_like(his, lo), his], axis=1)),
                pos_bins, width,
            )
            hi_searched_at = lo
        if neg_bins and hi != lo_searched_at:
            lo = -search_threshold(
                lambda los: asymmetric_error(centers, counts, np.stack([-los, np.full_like(los, hi)], axis=1)),
                neg_bins, width,
            )
            lo_searched_at = hi
        if (lo, hi) == previous:
            break
    return min(lo, 0.0), max(hi, 0.0)


@register
class Mse(RangeMethod):
    name = "mse"
    summary = "lowest histogram-estimated quantization MSE"
    auto_candidate = True
    auto_tie_rank = 0  # the criterion `auto` ranks by: it wins ties
    order = 30

    def amax(self, abs_counts, bin_width, absmax, settings):
        return mse_amax(abs_counts, bin_width)

    def asymmetric_range(self, hist, amax, settings):
        return mse_range(hist)
