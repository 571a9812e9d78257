"""Calibration engine: stream activation histograms, then choose per-tensor int8 ranges.

Two phases, as ONNX Runtime's calibrators (`collect_data` then `compute_data`) but streaming:
`collector.collect` folds every batch into fixed-size histograms (memory independent of the
number of samples), then `policy.choose` picks `amax` and `(lo, hi)` per tensor with the
requested method (the registry in `methods/`, one module per method; overrides per tensor name
or producer op type), and `stability` measures how much the thresholds move across rounds.
"""

from __future__ import annotations

from typing import Callable

import onnx

from edgepipe import graph, recurrent
from edgepipe.calibrate import collector, methods, policy, stability
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration
from edgepipe.errors import UserError

DEFAULT_SETTINGS = {
    "method": "auto",
    "percentile": 99.99,
    "num_bins": 2048,
    "overrides": {},
    "rounds": 4,
    "max_samples": None,
    "batch_size": 1,
    "max_exposed_mb": 1024,
    "weight_ranges": "minmax",
}

__all__ = ["calibrate", "CalibrationResult", "TensorCalibration", "DEFAULT_SETTINGS", "methods"]


def calibrate(
    model: onnx.ModelProto,
    dataset,
    settings: dict | None = None,
    tensors: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    unroll_recurrent: bool = True,
) -> CalibrationResult:
    """Calibrate every float activation of `model` (or only `tensors`) on `dataset`; recurrent
    nodes run unrolled, so their per-step tensors get ranges too (edgepipe/recurrent.py), unless
    `unroll_recurrent` is False (a target that runs them whole: a 100-step peephole LSTM unrolled
    made a jetson build 3x slower for ranges nothing read)."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    if unroll_recurrent:
        model = recurrent.unrolled(model)
    infos = collector.shape_infos(model)
    contexts = collector.calibratable_tensors(model, infos)
    if tensors is not None:
        unknown = [t for t in tensors if t not in contexts]
        if unknown:
            raise UserError(
                f"tensor '{unknown[0]}' is not a float activation of the model; pass names of node "
                "outputs or graph inputs"
            )
        contexts = {t: contexts[t] for t in tensors}
    _check_dataset_inputs(model, dataset)
    reference = stability.ReferenceOutputs(len(dataset))
    unbounded: set[str] = set()
    hists, num_samples = collector.collect(model, dataset, contexts, settings, progress, keep_outputs=reference.keep,
                                           infos=infos, unbounded=unbounded)
    result = CalibrationResult(method=settings["method"], num_samples=num_samples,
                               reference_outputs=reference.kept(), weight_ranges=settings["weight_ranges"],
                               unbounded=sorted(unbounded))
    methods.registry()  # loaded once here, not raced by the threads below

    def choose(name: str):
        choice = policy.choose(name, hists[name], contexts[name], settings)
        return choice, stability.round_stability(hists[name], choice.method, settings, choice.method_amax)

    # tensors are independent: their range searches run side by side, once per distinct histogram
    with collector.Workers() as workers, methods.memoized():
        chosen = dict(zip(hists, workers.map(choose, list(hists), run=1)))  # milliseconds each: one by one
    stabilities = {}
    for name, hist in hists.items():
        choice, stabilities[name] = chosen[name]
        result.tensors[name] = TensorCalibration(
            name=name,
            min=float(hist.min),
            max=float(hist.max),
            amax=choice.amax,
            lo=choice.lo,
            hi=choice.hi,
            method=choice.method,
            reason=choice.reason,
            stability=stabilities[name],
            zeroed=hist.zeroed_share(choice.lo, choice.hi),
        )
        result.histograms[name] = hist.summary(amax=choice.amax, lo=choice.lo, hi=choice.hi)
    recurrent.share_step_ranges(result)
    result.warnings.extend(stability.stability_warnings(stabilities, num_samples))
    result.warnings.extend(constant_warnings(hists, [v.name for v in graph.graph_inputs(model)]))
    return result


def constant_warnings(hists: dict, input_names: list[str]) -> list[str]:
    """Fail loud on data that calibrates nothing: an all-zero input (a blank image folder, a
    zero-filled .npz) or tensors that never change give ranges that are guesses."""
    warnings = []
    zero = [n for n in input_names if n in hists and float(hists[n].min) == 0.0 == float(hists[n].max)]
    if zero:
        warnings.append(f"calibration data for input '{zero[0]}' is all zeros; every range derived from it "
                        f"is a guess, pass real samples")
    constant = [n for n, h in sorted(hists.items()) if float(h.max) <= float(h.min) and n not in zero]
    if constant:
        value = float(hists[constant[0]].min)
        warnings.append(f"{len(constant)} tensor(s) are constant over the calibration set (first: '{constant[0]}' "
                        f"= {value:g}); their INT8 range is a guess, check the calibration data")
    return warnings


def _check_dataset_inputs(model: onnx.ModelProto, dataset) -> None:
    if len(dataset) == 0:
        raise UserError("calibration set is empty; pass a dataset with at least one sample")
    provided = set(dataset.sample(0))
    for value in graph.graph_inputs(model):
        if value.name not in provided:
            raise UserError(
                f"calibration data has no input '{value.name}' (has: {', '.join(sorted(provided))}); "
                "provide one array per model input"
            )
