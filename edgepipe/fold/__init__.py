"""Readable ONNX graph rewrites run by the fold stage (edgepipe/stages/fold.py).

Each fold takes an `onnx.ModelProto`, returns `(new_model, report_dict)`, and keeps the names of
graph inputs and outputs unchanged.
"""

from edgepipe.fold.batchnorm import fold_batchnorm
from edgepipe.fold.normalization import estimate_whitening, fold_input_normalization
from edgepipe.fold.temperature import (
    expected_calibration_error,
    find_logits,
    fit_temperature,
    fold_temperature,
    softmax,
)

__all__ = [
    "estimate_whitening",
    "expected_calibration_error",
    "find_logits",
    "fit_temperature",
    "fold_batchnorm",
    "fold_input_normalization",
    "fold_temperature",
    "softmax",
]
