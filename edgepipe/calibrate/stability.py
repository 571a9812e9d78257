"""Is the calibration set representative? Per-round thresholds from the same single pass.

Why: a threshold chosen from too few or too uniform samples changes when the data changes, and
the int8 model then fails on the field data, not in the report. The collector splits the set into
contiguous rounds and keeps one histogram per round (not the samples); here each round is
calibrated on its own with the tensor's method and compared to the whole set:

- `spread`: max over rounds of |amax_round - amax_all| / amax_all;
- `kl_max`: max over rounds of KL(round || all) between 64-bin coarsened |x| histograms (how
  different the value distributions are, whatever the method);
- `round_amax`: the per-round thresholds.

- `kl_noise`: max over rounds of KL / (expected KL from sampling alone). An empirical histogram
  of n values over k bins is KL ~ (k - 1) / (2n) away from its source even when nothing shifted;
  twice that, (k - 1) / n, is the noise floor. Ratio > 1: the rounds really differ.

Warnings: a small set (< 32 samples), and tensors that are unstable: spread > 10% AND
kl_noise > 1. The KL condition keeps small tensors (logits: a few hundred values per round) from
warning on an i.i.d. set just because their thresholds are noisy estimates. Rounds are contiguous
on purpose: a set sorted by class or by capture time shows up as unstable, which is what a user
needs to know (shuffle it or add samples).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edgepipe.calibrate.methods.entropy import kl_divergence, smooth
from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.policy import symmetric_amax

SMALL_SET = 32
SPREAD_LIMIT = 0.10
KL_BINS = 64


def coarse(counts: np.ndarray, stop: int, bins: int = KL_BINS) -> np.ndarray:
    """Merge the first `stop` bins of a |x| histogram into `bins` equal groups."""
    edges = np.linspace(0, stop, bins + 1).astype(np.int64)
    return np.add.reduceat(counts[:stop].astype(np.float64), edges[:-1]) * (np.diff(edges) > 0)


def round_stability(hist: TensorHistogram, method: str, settings: Mapping, overall: float | None = None) -> dict:
    """Per-round thresholds and distribution shift of one tensor (see module docstring).

    `overall`: the method's threshold on the whole set when the caller has it (policy.Choice's
    `method_amax`), so it is not searched for twice.
    """
    width = hist.bin_width
    if overall is None:
        overall = symmetric_amax(method, hist.abs_counts(), width, hist.observed_absmax(), settings)
    nonzero = np.flatnonzero(hist.abs_counts())
    stop = max(int(nonzero[-1]) + 1 if nonzero.size else 1, KL_BINS)
    total_coarse = coarse(hist.abs_counts(), stop)
    round_amax, spread, kl_max, kl_noise = [], 0.0, 0.0, 0.0
    for r in range(hist.rounds):
        counts = hist.abs_counts(r)
        if not counts.any():
            continue
        absmax = max(abs(hist.round_min[r]), abs(hist.round_max[r]))
        amax = symmetric_amax(method, counts, width, absmax, settings)
        round_amax.append(float(amax))
        spread = max(spread, abs(amax - overall) / max(overall, 1e-12))
        p, q = smooth(coarse(counts, stop)), smooth(total_coarse)
        if p is not None and q is not None:
            kl = kl_divergence(p, q)
            kl_max = max(kl_max, kl)
            kl_noise = max(kl_noise, kl * float(counts.sum()) / (KL_BINS - 1))
    return {
        "rounds": len(round_amax),
        "method": method,
        "round_amax": round_amax,
        "spread": float(spread),
        "kl_max": float(kl_max),
        "kl_noise": float(kl_noise),
        "unstable": bool(spread > SPREAD_LIMIT and kl_noise > 1.0),
    }


def stability_warnings(stability: dict[str, dict], num_samples: int) -> list[str]:
    warnings = []
    if num_samples < SMALL_SET:
        warnings.append(
            f"calibration set has {num_samples} samples; 100-500 representative samples are recommended"
        )
    unstable = [name for name, s in stability.items() if s.get("unstable")]
    if unstable:
        warnings.append(
            f"thresholds vary > {SPREAD_LIMIT:.0%} across rounds for {len(unstable)} tensors "
            f"(first: '{unstable[0]}'); add more or more varied samples"
        )
    return warnings
