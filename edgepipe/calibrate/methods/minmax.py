"""minmax: the observed range, nothing clipped.

Why: what reads a graph output (argmax, box or CTC decoding) looks at its extreme values, and
small tensors have too few values for a clipping criterion to be trusted; minmax never clips.
"""

from __future__ import annotations

from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.methods import RangeMethod, register


def minmax_range(hist: TensorHistogram) -> tuple[float, float]:
    return min(hist.min, 0.0), max(hist.max, 0.0)


@register
class MinMax(RangeMethod):
    name = "minmax"
    summary = "observed min/max, nothing clipped"
    auto_candidate = True
    order = 40

    def amax(self, abs_counts, bin_width, absmax, settings):
        return absmax

    def asymmetric_range(self, hist, amax, settings):
        return minmax_range(hist)
