"""TensorRT's entropy (KL-divergence) calibration, on a |x| histogram.

Why: it is what TensorRT's `IInt8EntropyCalibrator2` does, so `method: entropy` reproduces the
ranges users get from `trtexec --int8 --calib`. The algorithm (Migacz, "8-bit Inference with
TensorRT", GTC 2017; same shape as MXNet/TVM/ONNX Runtime implementations):

    hist = |x| histogram with B bins (default 2048) over [0, R); hist[0] = hist[1]
    for i in 128 .. last non-empty bin + 1:             # candidate threshold = i bins
        P = hist[0:i], with every count beyond bin i ("outliers") added to P[i-1]
        Q = hist[0:i] merged into 128 levels (groups of i // 128 bins, the last group takes the
            remainder), then expanded back: each level's count is spread evenly over the bins
            of its group that are non-empty in P; bins empty in P stay empty in Q
        smooth P and Q: every empty bin gets eps = 1e-4, taken evenly from the non-empty ones,
            so KL stays finite (a bin non-empty in P but empty in Q would otherwise give inf)
        KL(P || Q) of the normalized P and Q
    i* = argmin KL (the largest i among ties)
    amax = i* * bin_width

Zero bin: `hist[0]` is replaced by `hist[1]` (as NVIDIA's pytorch-quantization does). ReLU
outputs put about half of all values at exactly 0; left in, that spike dominates both P and the
first merged level of Q, and the argmin collapses to the smallest candidate (128 bins), which
clips ReLU features many times too hard (estimated MSE orders of magnitude above the MSE threshold's).

Threshold convention: `amax` is the upper edge of the last bin kept in P (as MXNet, ONNX Runtime
and pytorch-quantization do), not TensorRT's slide's `(i + 0.5) * bin_width`; the two differ by
half a bin (at 2048 bins, <= 0.05% of the range).

Asymmetric range: the observed range clipped at +-amax.

Known weakness (why it is not the default): KL weighs values by how often they occur, so rare
large values carry almost no weight and are clipped. For ReLU conv features this is a good
trade; for logits feeding Softmax/Sigmoid, detector box/score heads and LayerNorm outputs with
outlier channels, the rare large values are exactly the ones that decide the output.
"""

from __future__ import annotations

import numpy as np

from edgepipe.calibrate.methods import RangeMethod, register

QUANTIZED_LEVELS = 128
SMOOTHING_EPS = 1e-4


def smooth(distribution: np.ndarray, eps: float = SMOOTHING_EPS) -> np.ndarray | None:
    """Give empty bins `eps`, taken evenly from the non-empty ones; None if all are empty."""
    is_zero = distribution == 0
    nonzero = distribution.size - int(is_zero.sum())
    if nonzero == 0:
        return None
    taken = eps * float(is_zero.sum()) / float(nonzero)
    return np.where(is_zero, eps, distribution - taken)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    if np.any(q <= 0) or np.any(p < 0):
        return float("inf")
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def candidate_divergence(hist: np.ndarray, i: int, levels: int = QUANTIZED_LEVELS) -> float:
    """KL(P || Q) for the candidate threshold of `i` bins (see module docstring)."""
    sliced = hist[:i].astype(np.float64)
    reference = sliced.copy()
    reference[-1] += float(hist[i:].sum())
    nonzero = reference != 0
    group = i // levels
    starts = np.arange(levels) * group
    level_counts = np.add.reduceat(sliced, starts)
    level_nonzero = np.add.reduceat(nonzero.astype(np.int64), starts)
    lengths = np.diff(np.append(starts, i))
    per_bin = np.divide(level_counts, level_nonzero, out=np.zeros(levels), where=level_nonzero > 0)
    candidate = np.repeat(per_bin, lengths)
    candidate[~nonzero] = 0.0
    p, q = smooth(reference), smooth(candidate)
    if p is None or q is None:
        return float("inf")
    return kl_divergence(p, q)


def entropy_amax(abs_hist: np.ndarray, bin_width: float, levels: int = QUANTIZED_LEVELS) -> float:
    """TensorRT entropy threshold of a |x| histogram; the whole range if it has < levels bins."""
    hist = np.array(abs_hist, dtype=np.float64)
    if hist.size > 1:
        hist[0] = hist[1]
    nonzero = np.flatnonzero(hist)
    if nonzero.size == 0:
        return bin_width
    stop = int(nonzero[-1]) + 1
    if stop <= levels:
        return stop * bin_width
    candidates = np.arange(levels, stop + 1)
    kls = candidate_divergences(hist[:stop], candidates, levels)
    if kls is None:  # counts the closed form does not cover (fractional): one candidate at a time
        kls = np.array([candidate_divergence(hist, i, levels) for i in candidates])
    best = np.flatnonzero(kls == kls.min())[-1] if np.isfinite(kls).any() else kls.size - 1
    return int(candidates[best]) * bin_width  # ties (and all-inf) keep the largest i


LEVEL_BLOCK = 32768  # candidates x levels per block of the per-level terms (256 KiB of float64)
SERIES_TERMS = 24  # terms of the expansion of (h - t) log(h - t) around t = 0 (t / h <= 0.25)


def candidate_divergences(hist: np.ndarray, candidates: np.ndarray, levels: int = QUANTIZED_LEVELS,
                          eps: float = SMOOTHING_EPS) -> np.ndarray | None:
    """`candidate_divergence` for every candidate at once in O(levels) each, from prefix sums.

    Why: the per-candidate loop is O(bins^2) per tensor, which
    made entropy (and `auto`, which scores it) dominate calibration time on real models. Writing
    ps, qs for the smoothed P, Q and SP, SQ for their sums, KL(P||Q) =
    (sum ps log ps - sum ps log qs) / SP + log(SQ / SP), and:
    - sum ps log qs: Q is constant over the non-empty bins of a level, so it is one term per level
      from prefix sums of the counts and of the non-empty-bin indicator;
    - sum ps log ps = sum (h - t) log(h - t) over non-empty bins, with t = eps * empty / non-empty
      the smoothing shift. Expanded around t = 0 it is sum h log h - t sum (log h + 1) +
      sum_m t^m / (m (m - 1)) sum h^(1 - m): prefix sums again. Needs t / h small, so integer
      counts (h >= 1, t <= eps * bins = 0.2); returns None otherwise (caller loops instead).
    - empty bins get eps in both P and Q: their terms cancel; the last bin (which also receives
      the outliers) is computed directly.
    """
    n = hist.size
    positive = hist[hist > 0]
    if positive.size == 0 or positive.min() < 1.0 or eps * n >= 0.25:
        return None
    i = candidates.astype(np.int64)
    occupied = (hist != 0).astype(np.int64)
    prefix = np.concatenate([[0.0], np.cumsum(hist)])
    occupied_prefix = np.concatenate([[0], np.cumsum(occupied)])
    safe = np.where(hist > 0, hist, 1.0)
    h_log_h = np.concatenate([[0.0], np.cumsum(np.where(hist > 0, hist * np.log(safe), 0.0))])
    log_h = np.concatenate([[0.0], np.cumsum(np.where(hist > 0, np.log(safe), 0.0))])
    inverse_powers = [np.concatenate([[0.0], np.cumsum(np.where(hist > 0, safe ** (1 - m), 0.0))])
                      for m in range(2, SERIES_TERMS + 1)]
    total = prefix[n]
    last = i - 1
    p_last = hist[last] + (total - prefix[i])  # last bin of P takes every count beyond it
    last_nonzero = (p_last != 0).astype(np.int64)
    nonempty = occupied_prefix[last] + last_nonzero  # non-empty bins of P
    empty = i - nonempty
    tp = eps * empty / np.maximum(nonempty, 1)
    # sum over non-empty bins k < i - 1 of (h - tp) log(h - tp), then the last bin directly
    before = occupied_prefix[last]
    p_log_p = h_log_h[last] - tp * (log_h[last] + before)
    power = tp.copy()
    for m, sums in zip(range(2, SERIES_TERMS + 1), inverse_powers):
        power = power * tp
        p_log_p = p_log_p + power / (m * (m - 1)) * sums[last]
    shifted_last = np.where(last_nonzero > 0, p_last - tp, 1.0)
    p_log_p = p_log_p + np.where(last_nonzero > 0, shifted_last * np.log(shifted_last), 0.0)
    # levels: [candidates, levels], in blocks of candidates that stay in cache (every term is per
    # candidate, so blocking changes no value; the same operations on the same operands as before)
    p_log_q = np.empty(i.size)
    q_nonzero_bins = np.empty(i.size, dtype=np.int64)
    level_bad = np.empty(i.size, dtype=bool)
    last_q_empty = np.empty(i.size, dtype=bool)
    j = np.arange(levels)[None, :]
    is_last = j == levels - 1
    # every level but the last depends only on the group size i // levels: one table row per size
    groups = np.arange(int(i.min()) // levels, int(i.max()) // levels + 1)[:, None]
    start, end = j * groups, (j + 1) * groups
    table_sum = prefix[end] - prefix[start]
    table_nonzero = occupied_prefix[end] - occupied_prefix[start]
    table_q = np.divide(table_sum, table_nonzero, out=np.zeros(table_sum.shape), where=table_nonzero > 0)
    rows = max(1, LEVEL_BLOCK // levels)
    for a in range(0, i.size, rows):
        b = slice(a, min(a + rows, i.size))
        ib = i[b]
        row = ib // levels - groups[0, 0]
        last_start = (levels - 1) * (ib // levels)
        level_sum = table_sum[row]
        level_sum[:, -1] = prefix[ib] - prefix[last_start]
        level_nonzero = table_nonzero[row]
        level_nonzero[:, -1] = occupied_prefix[ib] - occupied_prefix[last_start] + (last_nonzero[b] - occupied[last[b]])
        q_level = table_q[row]
        last_sum, last_count = level_sum[:, -1], level_nonzero[:, -1]
        q_level[:, -1] = np.divide(last_sum, last_count, out=np.zeros(last_sum.shape), where=last_count > 0)
        q_nonzero_bins[b] = np.where(q_level > 0, level_nonzero, 0).sum(axis=1)
        q_empty = ib - q_nonzero_bins[b]
        tq = eps * q_empty / np.maximum(q_nonzero_bins[b], 1)
        qs_level = q_level - tq[:, None]
        used = (level_nonzero > 0) & (q_level > 0)
        p_level = level_sum + np.where(is_last, (total - prefix[ib])[:, None], 0.0) - level_nonzero * tp[b, None]
        p_log_q[b] = np.where(used, p_level * np.log(np.where(used & (qs_level > 0), qs_level, 1.0)), 0.0).sum(axis=1)
        level_bad[b] = np.any(used & (qs_level <= 0), axis=1)
        last_q_empty[b] = q_level[:, -1] == 0
    # a non-empty last bin of P in an all-empty last level of Q: Q smoothed to eps there
    orphan = (last_nonzero > 0) & last_q_empty
    p_log_q = p_log_q + np.where(orphan, shifted_last * np.log(eps), 0.0)
    p_sum = total
    q_sum = prefix[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (p_log_p - p_log_q) / p_sum + np.log(q_sum / p_sum)
    bad = (nonempty == 0) | (q_nonzero_bins == 0) | level_bad
    return np.where(bad, np.inf, kl)


@register
class Entropy(RangeMethod):
    name = "entropy"
    summary = "TensorRT's KL-divergence threshold (IInt8EntropyCalibrator2)"
    auto_candidate = True
    order = 10

    def amax(self, abs_counts, bin_width, absmax, settings):
        return entropy_amax(abs_counts, bin_width)
