"""Calibration method registry: one module per method, found by name.

Adding a method means adding ONE file here (e.g. `methods/aciq.py`) and its test; the CLI's
`--calib-method` choices, the `calibration.method` schema, the override validation and `auto`'s
candidate list all read this registry. Every module in this package is imported by `registry()`,
and its decorated class registers itself:

    import numpy as np

    from edgepipe.calibrate.methods import RangeMethod, register

    @register
    class HalfMax(RangeMethod):
        '''Half the observed |x| maximum: why you would want it, in one line.'''

        name = "halfmax"
        summary = "half the observed |x| maximum"
        auto_candidate = False          # True: `auto` may pick it when its estimated MSE is lowest
        order = 50                      # position in listings (CLI choices, auto's reason string)

        def amax(self, abs_counts, bin_width, absmax, settings):
            return 0.5 * absmax          # symmetric threshold from the |x| histogram (TensorRT)

        # asymmetric_range(hist, amax, settings) -> (lo, hi) with lo <= 0 <= hi (TFLite); the
        # default clips the observed range at +-amax

Contract: methods see histograms (edgepipe/calibrate/histogram.py), never raw samples;
`settings` is the validated `calibration` section (e.g. `settings["percentile"]`). `amax` is
also called once per round of the set by the stability check, with that round's histogram.
A method that needs the graph (like `auto`) subclasses `CalibrationMethod` and overrides
`choose(hist, context, settings) -> Choice` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import pkgutil
import threading
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from edgepipe import quantmath
from edgepipe.calibrate.histogram import TensorHistogram

_REGISTRY: dict[str, "CalibrationMethod"] = {}
_LOADED = False


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


class CalibrationMethod:
    """One value of `calibration.method`: a tensor's histogram and graph context -> a Choice."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: --help, README, docs
    auto_candidate: ClassVar[bool] = False  # may `auto` pick it (lowest estimated MSE)
    order: ClassVar[int] = 100  # position in listings; ties by name

    def choose(self, hist: TensorHistogram, context: TensorContext, settings: Mapping) -> Choice:
        raise NotImplementedError


class RangeMethod(CalibrationMethod):
    """A method that needs no graph context: a threshold from |x| bins, a range from signed bins."""

    auto_tie_rank: ClassVar[int] = 1  # among candidates with equal estimated MSE, `auto` takes the lowest

    def amax(self, abs_counts: np.ndarray, bin_width: float, absmax: float, settings: Mapping) -> float:
        """Symmetric threshold (TensorRT) from a |x| histogram whose largest observed |x| is `absmax`."""
        raise NotImplementedError

    def asymmetric_range(self, hist: TensorHistogram, amax: float, settings: Mapping) -> tuple[float, float]:
        """(lo, hi) with lo <= 0 <= hi (TFLite); default: the observed range clipped at +-amax."""
        return max(min(hist.min, 0.0), -amax), min(max(hist.max, 0.0), amax)

    def choose(self, hist: TensorHistogram, context: TensorContext, settings: Mapping) -> Choice:
        choice = fixed_choice(self, hist, settings)
        choice.reason = f"requested ({self.name})"
        return choice


def fixed_choice(method: RangeMethod, hist: TensorHistogram, settings: Mapping, amax: float | None = None) -> Choice:
    """Symmetric and asymmetric numbers of one method (`amax`: its threshold, when already known)."""
    if amax is None:
        amax = threshold(method, hist.abs_counts(), hist.bin_width, hist.observed_absmax(), settings)
    method_amax = float(amax)
    amax = min(max(amax, 1e-12), max(hist.observed_absmax(), quantmath.TINY))  # never beyond what was observed
    lo, hi = asymmetric_range_of(method, hist, amax, settings)
    return Choice(float(amax), float(lo), float(hi), method.name, method_amax=method_amax)


# --- one computation per histogram ---------------------------------------------------------
# Tensors that only move values (Reshape, Transpose, Squeeze, Flatten outputs) have exactly the
# histogram of their input, and their range searches give exactly the same numbers: inside
# `memoized()` (calibrate() around its range choice) a method's threshold and asymmetric range
# are computed once per distinct histogram. Methods are pure functions of the histogram and the
# settings (the contract above), so a shared result is the result. Keys hold a BLAKE2b digest of
# the counts, not the counts (a 2048-bin histogram per round is 128 KiB).

_MEMO: dict | None = None
_MEMO_LOCK = threading.Lock()


@contextlib.contextmanager
def memoized():
    """Within this block, `threshold` and `asymmetric_range_of` compute each (method, histogram,
    settings) once; the memo is dropped at the end."""
    global _MEMO
    previous, _MEMO = _MEMO, {}
    try:
        yield
    finally:
        _MEMO = previous


def _digest(*arrays: np.ndarray) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.digest()


def _remembered(key: tuple, compute):
    memo = _MEMO
    if memo is None:
        return compute()
    with _MEMO_LOCK:
        if key in memo:
            return memo[key]
    value = compute()  # outside the lock: threads choose ranges side by side (a rare duplicate is the same value)
    with _MEMO_LOCK:
        memo[key] = value
    return value


def threshold(method: RangeMethod, abs_counts: np.ndarray, bin_width: float, absmax: float,
              settings: Mapping) -> float:
    """`method.amax(...)`, once per distinct |x| histogram inside `memoized()`."""
    return _remembered(("amax", method.name, _digest(abs_counts), float(bin_width), float(absmax), id(settings)),
                       lambda: method.amax(abs_counts, bin_width, absmax, settings))


def asymmetric_range_of(method: RangeMethod, hist: TensorHistogram, amax: float,
                        settings: Mapping) -> tuple[float, float]:
    """`method.asymmetric_range(...)`, once per distinct histogram (every round, min/max, range)
    inside `memoized()`."""
    key = ("range", method.name, _digest(hist.counts, hist.round_min, hist.round_max), hist.range, hist.min,
           hist.max, hist.count, float(amax), id(settings))
    return _remembered(key, lambda: method.asymmetric_range(hist, amax, settings))


def register(cls: type[CalibrationMethod]) -> type[CalibrationMethod]:
    """Class decorator: register one instance of a method under `cls.name`."""
    if not cls.name:
        raise ValueError(f"calibration method {cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"calibration method {cls.name!r} registered twice ({type(_REGISTRY[cls.name]).__module__})")
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, CalibrationMethod]:
    """Every method by name, in listing order (imports each module of this package once)."""
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].order, item[0])))


def names() -> tuple[str, ...]:
    """Valid values of `calibration.method`, `--calib-method` and per-tensor overrides."""
    return tuple(registry())


def get(name: str) -> CalibrationMethod:
    return registry()[name]


def auto_candidates() -> list[RangeMethod]:
    """Methods `auto` scores on every tensor (those declaring `auto_candidate = True`)."""
    return [m for m in registry().values() if isinstance(m, RangeMethod) and m.auto_candidate]


__all__ = ["CalibrationMethod", "RangeMethod", "TensorContext", "Choice", "fixed_choice", "register", "registry",
           "names", "get", "auto_candidates"]
