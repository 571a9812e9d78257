"""Which method calibrates which tensor: per-tensor overrides, then the requested method.

Why a separate module: the methods (edgepipe/calibrate/methods/, one module each) are histogram
math plus, for `auto`, rules on the graph context; choosing which one applies to a tensor is the
user's overrides by tensor name or producer op type. Keeping that here keeps `reason` strings and
the override rules easy to audit.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edgepipe.calibrate import methods
from edgepipe.calibrate.histogram import TensorHistogram
from edgepipe.calibrate.methods import Choice, TensorContext

__all__ = ["Choice", "TensorContext", "requested_method", "choose", "symmetric_amax"]


def requested_method(name: str, context: TensorContext, settings: Mapping) -> str:
    """Per-tensor override by tensor name, then by producer op type, else the global method."""
    overrides = settings.get("overrides") or {}
    if name in overrides:
        return overrides[name]
    if context.producer_op is not None and context.producer_op in overrides:
        return overrides[context.producer_op]
    return settings.get("method", "auto")


def choose(name: str, hist: TensorHistogram, context: TensorContext, settings: Mapping) -> Choice:
    """The tensor's Choice from its requested method (`settings`: the validated calibration section)."""
    return methods.get(requested_method(name, context, settings)).choose(hist, context, settings)


def symmetric_amax(method: str, abs_counts: np.ndarray, bin_width: float, absmax: float, settings: Mapping) -> float:
    """amax of one range method from a |x| histogram (also used per round by stability.py)."""
    return methods.threshold(methods.get(method), abs_counts, bin_width, absmax, settings)
