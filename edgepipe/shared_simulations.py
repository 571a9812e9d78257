"""Int8 simulations that the build's checks share: each (model, calibration state) built once.

Why: the checks after calibration quantize the same states more than once. The bias-correction
estimate and its held-out check both simulate the uncorrected ranges; the check's kept state
(with or without the corrections) is the state whose output the output-effect check then
measures. Each Q/DQ build and each ONNX Runtime session of an 11 MB model costs a tenth of a
second or so; `Target.sharing_simulations()` keeps the last few for the duration of the checks.

A state is keyed by the model object and every calibration value a Q/DQ simulation reads: the
ranges (amax, lo, hi) of every tensor, the bias corrections, the weight-range rule, and the nodes
kept float. A shared result is the same object the first caller got, so callers must not change
it in place (they copy: `fold_constant_weights`, `local_error_model`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

# states kept at once, per kind: both Q/DQ models (the uncorrected one is the bias estimate's and
# the check's), one ONNX Runtime session (the last one: the check runs the corrected state last)
KEPT = {"qdq": 2, "session": 1}


def state_key(calibration, keep_float=frozenset()) -> tuple:
    """Everything of `calibration` that decides its Q/DQ simulation, as a hashable tuple."""
    tensors = tuple((name, t.amax, t.lo, t.hi) for name, t in sorted(calibration.tensors.items()))
    corrections = tuple((name, tuple(values)) for name, values in sorted((calibration.bias_corrections or {}).items()))
    return tensors, corrections, getattr(calibration, "weight_ranges", None), frozenset(keep_float)


class SharedSimulations:
    """The last KEPT[kind] results per kind ("qdq", "session"), keyed by (model, state)."""

    def __init__(self, kept: dict[str, int] | None = None):
        self.kept = dict(KEPT if kept is None else kept)
        self.entries: dict[str, OrderedDict] = {}
        # `graph.fold_constant_weights`'s cache: every state quantizes the same weights (bias
        # corrections and activation ranges leave them alone), so each is folded once
        self.weight_folds: dict = {}

    def get(self, kind: str, model, calibration, keep_float, build: Callable[[], object]):
        """The result of `build()` for this state, built on the first request only."""
        entries = self.entries.setdefault(kind, OrderedDict())
        key = (id(model), state_key(calibration, keep_float))
        entry = entries.get(key)
        if entry is not None and entry[0] is model:  # the model itself is held: its id is not reused
            entries.move_to_end(key)
            return entry[1]
        result = build()
        entries[key] = (model, result)
        while len(entries) > self.kept.get(kind, 1):
            entries.popitem(last=False)
        return result
