"""percentile: clip the rarest (100 - p) % of the values (`calibration.percentile`, default 99.99).

Why: a fixed tail fraction is easy to reason about and robust to a few outliers; the asymmetric
range takes the percentile on each side of the signed histogram, never outside what was observed.
"""

from __future__ import annotations

import numpy as np

from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.methods import RangeMethod, register


def percentile_amax(abs_counts: np.ndarray, bin_width: float, percentile: float) -> float:
    """|x| value below which `percentile` % of the values lie, interpolated inside its bin."""
    return percentile_value(abs_counts, 0.0, bin_width, percentile)


def percentile_range(hist: TensorHistogram, percentile: float) -> tuple[float, float]:
    """(lo, hi): the (100 - p) and p percentiles of the signed histogram, widened to include 0."""
    signed = hist.signed_counts()
    first_edge = -hist.range
    lo = percentile_value(signed, first_edge, hist.bin_width, 100.0 - percentile)
    hi = percentile_value(signed, first_edge, hist.bin_width, percentile)
    lo, hi = max(lo, hist.min), min(hi, hist.max)  # never outside what was observed
    return min(lo, 0.0), max(hi, 0.0)


def percentile_value(counts: np.ndarray, first_edge: float, bin_width: float, percentile: float) -> float:
    total = float(counts.sum())
    if total == 0:
        return first_edge
    cumulative = np.cumsum(counts, dtype=np.float64) / total
    target = min(max(percentile / 100.0, 0.0), 1.0)
    k = int(np.searchsorted(cumulative, target, side="left"))
    k = min(k, counts.size - 1)
    before = cumulative[k - 1] if k > 0 else 0.0
    inside = cumulative[k] - before
    fraction = (target - before) / inside if inside > 0 else 1.0
    return first_edge + (k + min(max(fraction, 0.0), 1.0)) * bin_width


@register
class Percentile(RangeMethod):
    name = "percentile"
    summary = "clip the rarest (100 - calibration.percentile) % of |x|"
    auto_candidate = True
    order = 20

    def amax(self, abs_counts, bin_width, absmax, settings):
        return percentile_amax(abs_counts, bin_width, float(settings["percentile"]))

    def asymmetric_range(self, hist, amax, settings):
        return percentile_range(hist, float(settings["percentile"]))
