"""Which method calibrates which tensor, and what `auto` chooses and why.

Why a separate module: the methods (methods.py, entropy.py) are pure histogram math; deciding
between them needs graph context (is this a graph output? what consumes it?) and the user's
overrides. Keeping the decision here makes `reason` strings and the rules easy to audit.

`auto`, per tensor:
1. Graph outputs -> minmax. Nothing downstream can repair a clipped output, and what reads it
   (argmax, box decoding, CTC decoding) looks at the extreme values: clipping the top logits
   makes them tie.
2. Tensors feeding Softmax/LogSoftmax/Sigmoid/Exp/Softplus/TopK/ArgMax/ReduceMax, or produced by
   LayerNormalization -> max(mse, percentile) threshold. These are the field failures of entropy
   calibration (detector heads, OCR recognizers, transformer blocks): the rare large values carry
   the decision (the winning logit; LayerNorm outlier channels), so a frequency-weighted criterion
   (KL, even MSE) clips them. We never clip them harder than MSE says, nor below the percentile.
3. Everything else -> the candidate (entropy, percentile, mse, minmax) with the lowest
   histogram-estimated quantization MSE; `reason` records every candidate's MSE relative to it.
The asymmetric range follows the chosen method (mse -> 2-D MSE search, percentile -> per-side
percentiles, minmax -> observed; entropy -> observed range clipped at +-amax).

Measured on real models (benchmarks/calibration_real_models.py, PP-OCRv4 recognizer from the
rapidocr wheel, 64 rendered text lines to calibrate, 64 held out): entropy on every tensor
collapses the recognizer (CTC string agreement with FP32 0.00, output SQNR 1.3 dB). Switching
tensor groups one at a time from `auto` to entropy locates it: the hardswish/residual Add and Mul
outputs that feed Conv (bulk near zero, rare large values; entropy thresholds 3-15x below the
observed max, e.g. 0.065 vs 0.42, 1.0 vs 6.9) - the same mechanism as rule 2, on tensors that feed
no Softmax/Sigmoid. Rule 3 already avoids it (histogram MSE of the entropy threshold is 2-1600x
the best there; `auto` picked entropy for 1 of 366 tensors); tests/test_calibrate_robustness.py
pins this on a constructed outlier-channel graph. Not solved by any threshold rule: even minmax
reaches only 0.67 string agreement and MSE/auto 0.55 on this model; the loss is spread over ~25
Conv inputs of the CNN stem (the single worst, conv2d_185 -> Conv, costs ~18 dB of output SQNR on
its own) and over-clipping by MSE costs some of it (exact-match 0.38 auto vs 0.75 minmax). What
would fix it is mixed precision (precision budget plans float islands), not a different default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe.calibrate import methods
from edgepipe.calibrate.entropy import entropy_amax
from edgepipe.calibrate.histogram import TensorHistogram

METHODS = ("auto", "entropy", "percentile", "mse", "minmax")
FIXED_METHODS = METHODS[1:]
SENSITIVE_CONSUMERS = frozenset(
    {"Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "Exp", "Softplus", "TopK", "ArgMax", "ReduceMax"}
)
SENSITIVE_PRODUCERS = frozenset({"LayerNormalization"})


@dataclass(frozen=True)
class TensorContext:
    """Where a tensor sits in the graph (what `auto` and op-type overrides look at)."""

    producer_op: str | None = None  # None for graph inputs
    consumer_ops: tuple[str, ...] = ()
    is_graph_output: bool = False


@dataclass
class Choice:
    amax: float
    lo: float
    hi: float
    method: str  # the method that produced the numbers (never "auto")
    reason: str = ""
    method_amax: float | None = None  # the method's own threshold, before clamping (stability reuses it)


def requested_method(name: str, context: TensorContext, settings: dict) -> str:
    """Per-tensor override by tensor name, then by producer op type, else the global method."""
    overrides = settings.get("overrides") or {}
    if name in overrides:
        return overrides[name]
    if context.producer_op is not None and context.producer_op in overrides:
        return overrides[context.producer_op]
    return settings.get("method", "auto")


def symmetric_amax(method: str, abs_counts: np.ndarray, bin_width: float, percentile: float, absmax: float) -> float:
    """amax of one fixed method from a |x| histogram (also used per round by stability.py)."""
    if method == "minmax":
        return absmax
    if method == "entropy":
        return entropy_amax(abs_counts, bin_width)
    if method == "percentile":
        return methods.percentile_amax(abs_counts, bin_width, percentile)
    if method == "mse":
        return methods.mse_amax(abs_counts, bin_width)
    raise ValueError(f"unknown calibration method {method!r}")


def fixed_choice(method: str, hist: TensorHistogram, percentile: float, amax: float | None = None) -> Choice:
    """Symmetric and asymmetric numbers of one fixed method."""
    if amax is None:
        amax = symmetric_amax(method, hist.abs_counts(), hist.bin_width, percentile, hist.observed_absmax())
    method_amax = float(amax)
    amax = min(max(amax, 1e-12), methods.minmax_amax(hist))  # never beyond what was observed
    if method == "minmax":
        lo, hi = methods.minmax_range(hist)
    elif method == "percentile":
        lo, hi = methods.percentile_range(hist, percentile)
    elif method == "mse":
        lo, hi = methods.mse_range(hist)
    else:
        lo, hi = methods.clip_range_to_amax(hist, amax)
    return Choice(float(amax), float(lo), float(hi), method, method_amax=method_amax)


def choose(name: str, hist: TensorHistogram, context: TensorContext, settings: dict) -> Choice:
    method = requested_method(name, context, settings)
    percentile = float(settings.get("percentile", 99.99))
    if method != "auto":
        choice = fixed_choice(method, hist, percentile)
        choice.reason = f"requested ({method})"
        return choice
    return auto_choice(hist, context, percentile)


def auto_choice(hist: TensorHistogram, context: TensorContext, percentile: float) -> Choice:
    if context.is_graph_output:
        choice = fixed_choice("minmax", hist, percentile)
        choice.reason = "graph output: not clipped (minmax), decoding reads its extreme values"
        return choice
    abs_counts, width = hist.abs_counts(), hist.bin_width
    sensitive = sorted(set(context.consumer_ops) & SENSITIVE_CONSUMERS)
    if sensitive or context.producer_op in SENSITIVE_PRODUCERS:
        mse = methods.mse_amax(abs_counts, width)
        pct = methods.percentile_amax(abs_counts, width, percentile)
        where = f"feeds {'/'.join(sensitive)}" if sensitive else f"{context.producer_op} output"
        if pct > mse:
            choice = fixed_choice("percentile", hist, percentile, amax=pct)
            choice.reason = f"{where}: tail guard, percentile {percentile:g} ({pct:.4g}) above mse ({mse:.4g})"
        else:
            choice = fixed_choice("mse", hist, percentile, amax=mse)
            choice.reason = f"{where}: tail guard, mse ({mse:.4g}) at or above percentile {percentile:g}"
        return choice
    candidates = {
        m: symmetric_amax(m, abs_counts, width, percentile, hist.observed_absmax()) for m in FIXED_METHODS
    }
    nonzero = abs_counts > 0
    centers = hist.abs_centers()[nonzero]
    errors = methods.symmetric_error(centers, abs_counts[nonzero].astype(np.float64), list(candidates.values()))
    errors = dict(zip(candidates, errors))
    best = min(FIXED_METHODS, key=lambda m: (errors[m], m != "mse"))  # ties go to mse
    base = max(errors[best], 1e-30)
    others = ", ".join(f"{m} {errors[m] / base - 1:+.0%}" for m in FIXED_METHODS if m != best)
    choice = fixed_choice(best, hist, percentile, amax=candidates[best])
    choice.reason = f"lowest estimated MSE {errors[best]:.3g} ({others})"
    return choice
