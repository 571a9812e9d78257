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

A tensor is *unstable* when spread > 10% AND kl_noise > 1. The KL condition keeps small tensors
(logits: a few hundred values per round) from counting on an i.i.d. set just because their
thresholds are noisy estimates. Rounds are contiguous on purpose: a set sorted by class or by
capture time shows up as unstable, which is what a user needs to know (shuffle it or add samples).

Warnings: a small set (< 32 samples) always. Unstable thresholds only when they matter: a threshold
that moves 10% on a tensor the output barely depends on changes nothing a user can see, and on
real models most builds have such tensors. `output_effect` therefore quantizes the model (the
target's int8 simulation) once with the chosen thresholds and once per round with that round's
thresholds on every unstable tensor, and measures the model output SQNR vs FP32 on a few samples;
the build warns only when some round's thresholds lower it by more than OUTPUT_DROP_DB (3 dB:
the quantization noise at the output doubles) to below QUALITY_FLOOR_DB (30 dB; a drop from 53 to
47 dB leaves the output noise under 0.1% of the signal, which no decision downstream can see).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from edgepipe.calibrate.methods.entropy import kl_divergence, smooth
from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.policy import symmetric_amax

SMALL_SET = 32
SPREAD_LIMIT = 0.10
KL_BINS = 64
OUTPUT_DROP_DB = 3.0  # warn when one round's thresholds lower the output SQNR vs FP32 by more than this: 3 dB = the
# output's quantization noise power doubles; smaller moves are within what re-drawing the set does anyway
QUALITY_FLOOR_DB = 30.0  # ... to below this: above it the output noise is < 0.1% of the signal, no visible change
EFFECT_SAMPLES = 16  # samples the output effect is measured on
REFERENCE_BYTES = 64 * 2**20  # at most this much of calibration's FP32 outputs is kept for the effect check


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
    """Warnings that need no model run (a small set); unstable thresholds: see `output_effect`."""
    warnings = []
    if num_samples < SMALL_SET:
        warnings.append(
            f"calibration set has {num_samples} samples; 100-500 representative samples are recommended"
        )
    return warnings


def unstable_tensors(calibration) -> list[str]:
    return sorted(name for name, t in calibration.tensors.items() if (t.stability or {}).get("unstable"))


def round_calibration(calibration, round_index: int, names: list[str]):
    """A copy of `calibration` whose `names` carry round `round_index`'s threshold (asymmetric
    ranges scaled by the same ratio: rounds record the symmetric threshold only)."""
    copy = dataclasses.replace(calibration, tensors=dict(calibration.tensors))  # shares the rest: read only
    for name in names:
        tensor = copy.tensors[name]
        rounds = tensor.stability.get("round_amax") or []
        if round_index >= len(rounds) or tensor.amax <= 0:
            continue
        ratio = float(rounds[round_index]) / tensor.amax
        copy.tensors[name] = dataclasses.replace(tensor, amax=float(rounds[round_index]), lo=tensor.lo * ratio,
                                                 hi=tensor.hi * ratio)
    return copy


class ReferenceOutputs:
    """Collects the FP32 graph outputs that later checks need while calibration runs those samples
    anyway (`collector.collect(keep_outputs=...)`): the output-effect check's samples first, then
    the bias-correction check's held-out samples (`bias_correction.split_for_check`), so neither
    runs the FP32 model again: the same session kind, kernels and inputs, hence the same values.
    A group of samples is kept only while all of it fits in REFERENCE_BYTES (the first sample's
    outputs tell the size); a check whose samples are not all kept runs the FP32 model itself."""

    def __init__(self, dataset_size: int, samples: int = EFFECT_SAMPLES):
        from edgepipe.calibrate.bias_correction import split_for_check
        from edgepipe.calibrate.collector import sample_indices

        self.groups = [set(sample_indices(dataset_size, samples)),
                       {int(i) for i in split_for_check(dataset_size)[1]}]
        self.wanted = set().union(*self.groups)
        self.fitting: set[int] | None = None  # the groups that fit, known from the first sample
        self.outputs: dict[int, list] = {}
        self.nbytes = 0

    def keep(self, index: int, outputs: list) -> None:
        size = sum(np.asarray(o).nbytes for o in outputs)
        if self.fitting is None:
            self.fitting = set()
            for group in self.groups:
                if len(self.fitting | group) * size > REFERENCE_BYTES:
                    break
                self.fitting |= group
        if index not in self.fitting or self.nbytes + size > REFERENCE_BYTES:
            return
        # copies: an array ONNX Runtime returned can pin its allocator's memory block
        self.outputs[index] = [np.array(o, copy=True) for o in outputs]
        self.nbytes += size

    def kept(self) -> dict[int, list]:
        """{sample index: FP32 outputs} of the samples kept."""
        return self.outputs


def output_effect(model, calibration, dataset, quantize: Callable, samples: int = EFFECT_SAMPLES,
                  chosen_session: Callable | None = None, variants: Callable | None = None,
                  chosen_outputs: dict[int, list] | None = None, weight_folds: dict | None = None) -> dict | None:
    """How much the per-round thresholds of the unstable tensors change the model output.

    `quantize(model, calibration) -> Q/DQ ONNX model` is the target's int8 simulation
    (`Target.qdq_model`); None when no tensor is unstable. `drop_db` = output SQNR vs FP32 with
    the chosen thresholds minus the worst round's; `warn` when it exceeds OUTPUT_DROP_DB and the
    worst round's SQNR is below QUALITY_FLOOR_DB. `chosen_session(calibration)`: an ONNX Runtime
    session of the chosen thresholds' simulation the caller already has (`Target.int8_session`:
    the bias-correction check ran that state), used instead of building one here.
    `variants(round calibration, names)`: the Q/DQ model of a round's thresholds derived from the
    chosen one (`Target.qdq_variants`), instead of `quantize` building it again.
    `chosen_outputs`: {sample index: [value per graph output]} of the chosen thresholds' simulation
    that the caller already ran (the bias-correction check's held-out samples, on the session
    `chosen_session` gives): those samples are not run again. `weight_folds`: the caller's
    `graph.fold_constant_weights` cache (`Target.weight_folds`: the weights its own simulations
    folded), so the candidates' same weights are not folded again."""
    from edgepipe import graph, quantmath
    from edgepipe.calibrate.collector import sample_indices
    from edgepipe.session_runs import built_ahead, run_feeds

    names = unstable_tensors(calibration)
    if not names:
        return None
    indices = sample_indices(len(dataset), samples)
    feeds = [dataset.sample(i) for i in indices]
    outputs = [o.name for o in model.graph.output]
    kept = getattr(calibration, "reference_outputs", None) or {}

    def values(per_feed: list, dtype=None) -> list[np.ndarray]:  # a float32 test is cast to float64 by sqnr_db
        return [np.concatenate([np.asarray(r[i], dtype).ravel() for r in per_feed]) for i in range(len(outputs))]

    def sqnr(per_feed: list) -> float:
        return min(quantmath.sqnr_db(ref, got, power) for ref, got, power in zip(reference, values(per_feed), powers))

    # the weights on their int8 grid, shared by every candidate (same weights, other ranges)
    folded: dict = {} if weight_folds is None else weight_folds

    def session_of(candidate_calibration):
        if candidate_calibration is calibration and chosen_session is not None:
            return chosen_session(calibration)
        qdq = (variants(candidate_calibration, names) if variants is not None and candidate_calibration is not calibration
               else quantize(model, candidate_calibration))
        # weights quantized and dequantized once, not on every run: the same values
        # (graph.fold_constant_weights)
        return graph.make_session(graph.fold_constant_weights(qdq, folded))

    if all(i in kept for i in indices):  # calibration's own FP32 runs
        reference = values([kept[i] for i in indices], np.float64)
    else:
        reference = values(run_feeds(graph.make_session(model), feeds, outputs), np.float64)
    powers = [quantmath.signal_power(ref) for ref in reference]
    rounds = min(len(calibration.tensors[n].stability.get("round_amax") or []) for n in names)
    candidates = [calibration] + [round_calibration(calibration, r, names) for r in range(rounds)]
    known = {i: chosen_outputs[i] for i in indices if i in (chosen_outputs or {})}

    def run(session, candidate_calibration) -> list:
        if candidate_calibration is not calibration or not known:
            return run_feeds(session, feeds, outputs)
        ran = iter(run_feeds(session, [feed for i, feed in zip(indices, feeds) if i not in known], outputs))
        return [known[i] if i in known else next(ran) for i in indices]

    # each candidate's Q/DQ model is built while the one before runs (built_ahead)
    chosen, *per_round = [sqnr(run(session, candidate))
                          for session, candidate in zip(built_ahead(session_of, candidates), candidates)]
    drop = max((chosen - s for s in per_round if np.isfinite(s)), default=0.0) if np.isfinite(chosen) else 0.0
    return {"tensors": names, "sqnr_chosen_db": float(chosen), "sqnr_rounds_db": [float(s) for s in per_round],
            "drop_db": float(max(drop, 0.0)), "samples": len(feeds), "limit_db": OUTPUT_DROP_DB,
            "floor_db": QUALITY_FLOOR_DB,
            "warn": bool(drop > OUTPUT_DROP_DB and min(per_round, default=np.inf) < QUALITY_FLOOR_DB)}


def effect_warning(effect: dict | None) -> str | None:
    if not effect or not effect["warn"]:
        return None
    names = effect["tensors"]
    return (f"thresholds vary > {SPREAD_LIMIT:.0%} across calibration rounds for {len(names)} tensors (first: "
            f"'{names[0]}') and change the output: SQNR vs FP32 {effect['sqnr_chosen_db']:.1f} dB with the chosen "
            f"thresholds, {min(effect['sqnr_rounds_db']):.1f} dB with one round's; add more or more varied "
            "(shuffled) calibration samples")
