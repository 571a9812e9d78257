"""auto (the default): per tensor, the method its place in the graph calls for.

1. Graph outputs -> minmax. Nothing downstream can repair a clipped output, and what reads it
   (argmax, box decoding, CTC decoding) looks at the extreme values: clipping the top logits
   makes them tie.
2. Tensors feeding Softmax/LogSoftmax/Sigmoid/Exp/Softplus/TopK/ArgMax/ReduceMax, or produced by
   LayerNormalization -> max(mse, percentile) threshold. These are the field failures of entropy
   calibration (detector heads, OCR recognizers, transformer blocks): the rare large values carry
   the decision (the winning logit; LayerNorm outlier channels), so a frequency-weighted criterion
   (KL, even MSE) clips them. We never clip them harder than MSE says, nor below the percentile.
3. Everything else -> the candidate (every method declaring `auto_candidate = True`) with the
   lowest histogram-estimated quantization MSE; `reason` records every candidate's MSE relative
   to it. Ties go to the lowest `auto_tie_rank` (mse), then to listing order.
The asymmetric range follows the chosen method (mse -> 2-D MSE search, percentile -> per-side
percentiles, minmax -> observed; entropy -> observed range clipped at +-amax).

Why rule 3 and not entropy everywhere: on an OCR recognizer (benchmarks/calibration_real_models.py)
entropy collapses the model; the tensors responsible are hardswish/residual outputs that feed Conv
(bulk near zero, rare large values), where entropy's threshold has many times the estimated MSE of
the best candidate, so rule 3 avoids it (tests/test_calibrate_robustness.py pins this on a
constructed outlier-channel graph). What no threshold rule fixes there is left to mixed precision.
"""

from __future__ import annotations

import numpy as np

from edgepipe.calibrate.error_model import symmetric_error
from edgepipe.calibrate.methods import (CalibrationMethod, Choice, auto_candidates, fixed_choice, get,
                                        register, threshold)

SENSITIVE_CONSUMERS = frozenset(
    {"Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "Exp", "Softplus", "TopK", "ArgMax", "ReduceMax"}
)
SENSITIVE_PRODUCERS = frozenset({"LayerNormalization"})


@register
class Auto(CalibrationMethod):
    name = "auto"
    summary = "per tensor: graph outputs minmax, tail guard before Softmax/Sigmoid, else lowest estimated MSE"
    order = 0

    def choose(self, hist, context, settings) -> Choice:
        percentile = float(settings["percentile"])
        if context.is_graph_output:
            choice = fixed_choice(get("minmax"), hist, settings)
            choice.reason = "graph output: not clipped (minmax), decoding reads its extreme values"
            return choice
        abs_counts, width, absmax = hist.abs_counts(), hist.bin_width, hist.observed_absmax()
        sensitive = sorted(set(context.consumer_ops) & SENSITIVE_CONSUMERS)
        if sensitive or context.producer_op in SENSITIVE_PRODUCERS:
            mse, pct = get("mse"), get("percentile")
            mse_amax = threshold(mse, abs_counts, width, absmax, settings)
            pct_amax = threshold(pct, abs_counts, width, absmax, settings)
            where = f"feeds {'/'.join(sensitive)}" if sensitive else f"{context.producer_op} output"
            if pct_amax > mse_amax:
                choice = fixed_choice(pct, hist, settings, amax=pct_amax)
                choice.reason = (f"{where}: tail guard, percentile {percentile:g} ({pct_amax:.4g}) "
                                 f"above mse ({mse_amax:.4g})")
            else:
                choice = fixed_choice(mse, hist, settings, amax=mse_amax)
                choice.reason = (f"{where}: tail guard, mse ({mse_amax:.4g}) at or above percentile "
                                 f"{percentile:g}")
            return choice
        candidates = auto_candidates()
        amaxes = [threshold(m, abs_counts, width, absmax, settings) for m in candidates]
        nonzero = abs_counts > 0
        centers = hist.abs_centers()[nonzero]
        errors = symmetric_error(centers, abs_counts[nonzero].astype(np.float64), amaxes)
        best = min(range(len(candidates)), key=lambda k: (errors[k], candidates[k].auto_tie_rank))
        base = max(errors[best], 1e-30)
        others = ", ".join(f"{m.name} {errors[k] / base - 1:+.0%}" for k, m in enumerate(candidates) if k != best)
        choice = fixed_choice(candidates[best], hist, settings, amax=amaxes[best])
        choice.reason = f"lowest estimated MSE {errors[best]:.3g} ({others})"
        return choice
