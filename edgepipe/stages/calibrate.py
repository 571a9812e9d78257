"""Calibrate stage: validate the user's calibration settings, then run the calibration engine.

Thin on purpose: the engine lives in edgepipe/calibrate/; this stage turns bad settings from
edgepipe.yaml into one-line errors before any model runs.
"""

from __future__ import annotations

from typing import Callable

import onnx

from edgepipe import graph
from edgepipe.calibrate import DEFAULT_SETTINGS, CalibrationResult, calibrate, methods
from edgepipe.calibrate.saturation import keep_softmax_tops, narrow_saturated_tails
from edgepipe.errors import UserError

_POSITIVE_INTS = ("num_bins", "rounds", "batch_size")
# keys of edgepipe.yaml's calibration section that the build handles itself
_BUILD_KEYS = ("ranges", "bias_correction")


def validate_settings(settings: dict | None) -> dict:
    """Settings merged over the defaults; every problem is a UserError naming the key."""
    settings = {k: v for k, v in (settings or {}).items() if k not in _BUILD_KEYS}
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise UserError(
            f"calibration setting '{unknown[0]}' is unknown; allowed: {', '.join(sorted(DEFAULT_SETTINGS))}"
        )
    merged = {**DEFAULT_SETTINGS, **settings}
    merged["overrides"] = dict(merged.get("overrides") or {})
    known = methods.names()
    allowed = ", ".join(known)
    if merged["method"] not in known:
        raise UserError(f"calibration method '{merged['method']}' is unknown; use one of: {allowed}")
    for target, method in merged["overrides"].items():
        if method not in known:
            raise UserError(
                f"calibration override for '{target}' has unknown method '{method}'; use one of: {allowed}"
            )
    percentile = merged["percentile"]
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50.0 < percentile <= 100.0:
        raise UserError(f"calibration percentile must be a number in (50, 100], got {percentile!r}")
    for key in _POSITIVE_INTS:
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"calibration setting '{key}' must be a positive integer, got {value!r}")
    if merged["num_bins"] < 256 or merged["num_bins"] % 2:
        raise UserError(f"calibration num_bins must be an even number >= 256, got {merged['num_bins']}")
    max_samples = merged["max_samples"]
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise UserError(f"calibration max_samples must be a positive integer or null, got {max_samples!r}")
    mb = merged["max_exposed_mb"]
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb <= 0:
        raise UserError(f"calibration max_exposed_mb must be a positive number, got {mb!r}")
    return merged


def run_calibration(
    model: onnx.ModelProto,
    dataset,
    settings: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    unroll_recurrent: bool = True,
) -> CalibrationResult:
    result = calibrate(model, dataset, validate_settings(settings), progress=progress, unroll_recurrent=unroll_recurrent)
    narrow_saturated_tails(model, result)  # range no consumer can use (calibrate/saturation.py)
    keep_softmax_tops(model, result)  # an output Softmax's input keeps its row maxima (same module)
    if not result.tensors:  # an integer-only graph: nothing an INT8 build could quantize
        inputs = ", ".join(f"'{i.name}' ({graph.tensor_dtype(i)})" for i in graph.graph_inputs(model))
        raise UserError(f"the model has no float tensor to calibrate (inputs: {inputs}); an INT8 build needs a "
                        "float32 model")
    return result
