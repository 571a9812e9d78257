"""Integer quantization arithmetic shared by calibration and every backend.

Conventions (TensorRT and the TFLite int8 spec agree on these):
- weights: symmetric int8 in [-127, 127], zero point 0, one scale per output channel;
- symmetric activations: scale = amax / 127, zero point 0 (TensorRT);
- asymmetric activations: int8 [-128, 127] with a zero point chosen so that 0.0 is exactly
  representable (padding and ReLU rely on it) (TFLite);
- bias: int32 with scale = input_scale * weight_scale[c], zero point 0.
"""

from __future__ import annotations

import numpy as np

TINY = 1e-12


def qrange(bits: int = 8, signed: bool = True, narrow: bool = False) -> tuple[int, int]:
    if signed:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return (low + 1 if narrow else low), high
    return 0, 2**bits - 1


def symmetric_scale(amax: float, bits: int = 8) -> float:
    """Scale for a symmetric range [-amax, amax] onto [-(2^(b-1)-1), 2^(b-1)-1]."""
    amax = float(abs(amax))
    return max(amax, TINY) / float(2 ** (bits - 1) - 1)


def asymmetric_params(lo: float, hi: float, bits: int = 8) -> tuple[float, int]:
    """(scale, zero_point) for [lo, hi] widened to include 0, with 0.0 exactly representable.

    The zero point is the rounded real zero; the range is then nudged (at most half a step) so
    the grid still covers [lo, hi] as closely as possible.
    """
    qmin, qmax = qrange(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < TINY:
        return TINY * 1e6, 0
    scale = (hi - lo) / float(qmax - qmin)
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return float(scale), zero_point


def clamp_params(scale: float, zero_point: int, bound: float, floor: bool) -> tuple[float, int] | None:
    """int8 (scale, zero point) covering the grid (scale, zero_point) whose low end (`floor`: the
    output of max(x, bound < 0)) or high end (min(x, bound > 0)) is exactly `bound`, zero on the
    grid; None when `bound` has the other sign. Writing onto it saturates exactly at `bound`."""
    sign = 1.0 if floor else -1.0  # mirror min onto max: the clamped end below zero
    far = sign * scale * ((127 if floor else -128) - zero_point)
    if sign * bound >= 0 or far <= 0:
        return None
    steps = int(np.floor(255 * abs(bound) / (far + abs(bound))))
    if steps < 1:
        return None
    return abs(bound) / steps, (-128 + steps if floor else 127 - steps)


def quantize(x: np.ndarray, scale, zero_point=0, bits: int = 8, narrow: bool = False) -> np.ndarray:
    """Round-half-to-even like ONNX QuantizeLinear / TFLite; saturates to the integer range."""
    qmin, qmax = qrange(bits, narrow=narrow)
    q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point
    dtype = np.int8 if bits == 8 else (np.int16 if bits == 16 else np.int32)
    return np.clip(q, qmin, qmax).astype(dtype)


def dequantize(q: np.ndarray, scale, zero_point=0) -> np.ndarray:
    return ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, scale, zero_point=0, bits: int = 8, narrow: bool = False) -> np.ndarray:
    return dequantize(quantize(x, scale, zero_point, bits, narrow), scale, zero_point)


def per_channel_symmetric(weights: np.ndarray, axis: int = 0, bits: int = 8,
                          min_ratio: float = 0.0, min_scales=None, ranges: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """Quantize weights per channel along `axis`: returns (int8 weights, float32 scales > 0).

    `ranges` "minmax" scales each channel to its largest |w|; "mse" to `mse_weight_amax`.

    `min_ratio` > 0 floors every channel's range at `min_ratio` x the largest channel's range.
    Trained-then-pruned models have dead channels (|w| ~ 1e-34 after BN folding); their own
    scale would make bias scale = input_scale x weight_scale underflow (denormal or below what
    int32 bias and the kernels' requantization multipliers can express). A floored channel
    quantizes to zeros, which is what its weights are next to the other channels. `min_scales`
    (per channel) is a further floor, e.g. so that an int32 bias stays representable."""
    w = np.asarray(weights, dtype=np.float32)
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.max(np.abs(w), axis=reduce_axes) if reduce_axes else np.abs(w)
    if ranges == "mse" and reduce_axes:
        amax = mse_weight_amax(np.moveaxis(w, axis % w.ndim, 0).reshape(w.shape[axis % w.ndim], -1), bits)
    if min_ratio > 0 and amax.size:
        amax = np.maximum(amax, float(np.max(amax)) * min_ratio)
    scales = np.maximum(amax, TINY) / float(2 ** (bits - 1) - 1)
    if min_scales is not None:
        scales = np.maximum(scales, np.asarray(min_scales, np.float64))
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    q = quantize(w, scales.reshape(shape), 0, bits, narrow=True)
    return q, scales.astype(np.float32)


WEIGHT_RANGES = ("minmax", "mse")
MSE_WEIGHT_FRACTIONS = np.linspace(0.5, 1.0, 51)  # thresholds tried, as fractions of a channel's max |w|


def mse_weight_amax(rows: np.ndarray, bits: int = 8) -> np.ndarray:
    """Per row (output channel) of `rows` [C, N], the symmetric threshold with the lowest squared
    error of the row's int8 weights (rounding plus clipping), among fractions of its max |w|.

    Why: max |w| is one outlier weight; clipping it costs that weight a little and gives every
    other weight of the channel a finer step (the classic weight-range lever: TensorRT's
    pytorch-quantization `mse` weight calibrator, Banner et al. 2019)."""
    w = np.asarray(rows, np.float64)
    absmax = np.max(np.abs(w), axis=1)
    qmax = float(2 ** (bits - 1) - 1)
    best, best_error = absmax.copy(), np.full(absmax.shape, np.inf)
    for fraction in MSE_WEIGHT_FRACTIONS:
        amax = np.maximum(absmax * fraction, TINY)[:, None]
        scale = amax / qmax
        error = np.sum((np.clip(np.rint(w / scale), -qmax, qmax) * scale - w) ** 2, axis=1)
        better = error < best_error
        best[better], best_error[better] = amax[better, 0], error[better]
    return best


def per_tensor_symmetric(weights: np.ndarray, bits: int = 8) -> tuple[np.ndarray, float]:
    w = np.asarray(weights, dtype=np.float32)
    scale = symmetric_scale(float(np.max(np.abs(w))) if w.size else 0.0, bits)
    return quantize(w, scale, 0, bits, narrow=True), scale


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale input_scale * weight_scale[c] (zero point 0)."""
    scales = (float(input_scale) * np.asarray(weight_scales, dtype=np.float64)).astype(np.float64)
    scales = np.maximum(scales, TINY)
    q = np.clip(np.rint(np.asarray(bias, dtype=np.float64) / scales), -(2**31), 2**31 - 1)
    return q.astype(np.int32), scales.astype(np.float32)


def sqnr_db(reference: np.ndarray, test: np.ndarray, reference_power: float | None = None) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical). `reference_power`:
    `signal_power(reference)`, when the caller compares many tests with one reference."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    test = np.asarray(test).ravel()
    # float64 differences and squares, in one buffer (a float32 test is cast as it is subtracted)
    noise = np.subtract(ref, test, dtype=np.float64) if test.dtype.kind == "f" else ref - test.astype(np.float64)
    noise_power = float(np.mean(np.square(noise, out=noise))) if noise.size else 0.0
    power = signal_power(ref) if reference_power is None else reference_power
    if noise_power == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(power, TINY) / noise_power)


def signal_power(reference: np.ndarray) -> float:
    """Mean square of `reference` (float64), the numerator of `sqnr_db`."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    return float(np.mean(np.square(ref))) if ref.size else 0.0


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(np.dot(a, b) / denom) if denom > 0 else float(np.array_equal(a, b))


def class_axis(shape) -> int | None:
    """The axis of an output's class scores. `shape`: one sample's output as the model writes it,
    in ONNX layout (its batch axis included where it has one): [C] -> 0, [N, C] -> 1 (a classifier),
    rank 3 -> 2, the last ([N, T, C]: per time step of a sequence tagger or CTC head, also
    [T, N, C]; [N, boxes, 5 + K]: per box of a detector), rank 4 and up -> 1 ([N, C, H, W]: ONNX
    is channels-first, per pixel of a segmentation map). None for a scalar or when that axis has
    fewer than 2 entries (no decision).

    Why: an argmax over the flattened [T, C] of a sample picks one index among T * C values, so two
    outputs that agree on 31 of 32 steps could score 0; one decision per position along this axis
    is what a user reads. The bundle's run.py mirrors this rule (a test keeps them equal)."""
    shape = tuple(shape)
    if not shape:
        return None
    axis = {1: 0, 2: 1, 3: 2}.get(len(shape), 1)
    return axis if shape[axis] >= 2 else None


def argmax_decisions(output: np.ndarray, axis: int) -> np.ndarray:
    """One argmax per position along `axis` (see `class_axis`), flattened: [N * positions]."""
    return np.moveaxis(np.asarray(output), axis, -1).argmax(axis=-1).ravel()


def class_decisions(output: np.ndarray) -> np.ndarray:
    """The argmax decisions a precision budget counts in a stacked [N, ...] output: one per position
    along `class_axis` where it has one ([N, C, H, W]: per pixel); else one per row of its last axis
    (trailing 1s dropped: [N, 1] always agrees); below rank 2 one decision. For rank <= 3 this is
    the last axis, as the per-output figure of run.py and the report."""
    output = np.asarray(output)
    axis = class_axis(output.shape) if output.ndim >= 2 else None
    if axis is not None:
        return argmax_decisions(output, axis)
    shape = list(output.shape)
    while len(shape) > 2 and shape[-1] == 1:  # [N, C, 1, 1] conv heads: the classes are C
        shape.pop()
    if len(shape) < 2:
        return np.atleast_1d(np.argmax(output))
    return np.argmax(output.reshape(-1, shape[-1]), axis=-1)


def argmax_agreement(reference: np.ndarray, test: np.ndarray, axis: int | None = None) -> float | None:
    """Fraction of positions where `test`'s argmax along `axis` equals `reference`'s. The arrays
    hold the samples' outputs stacked on a leading axis; `axis` (in that stacked shape) defaults
    to `class_axis(reference.shape)`, right when each sample's output has its own batch axis.
    None when the shapes differ or there is no class axis."""
    ref, out = np.asarray(reference), np.asarray(test)
    axis = class_axis(ref.shape) if axis is None else axis
    if ref.shape != out.shape or axis is None or ref.size == 0:
        return None
    return float(np.mean(argmax_decisions(ref, axis) == argmax_decisions(out, axis)))


def ctc_sequence_agreement(reference: np.ndarray, test: np.ndarray, blank: int = 0) -> float | None:
    """Mean over samples of 1 - edit distance / longer length between the greedy CTC readings of a
    [N, T, C] sequence head (argmax per step, repeats merged, `blank` dropped): how much of FP32's
    own reading the test model reproduces. A step that changes no reading (a blank/character
    boundary one step early) costs nothing here, unlike per-step argmax agreement. None when the
    output is not [N, T, C]."""
    ref, out = np.asarray(reference), np.asarray(test)
    if ref.ndim != 3 or ref.shape != out.shape:
        return None
    scores = []
    for want, got in zip(_ctc_readings(ref, blank), _ctc_readings(out, blank)):
        scores.append(1.0 - edit_distance(want, got) / max(len(want), len(got), 1))
    return float(np.mean(scores)) if scores else None


def _ctc_readings(output: np.ndarray, blank: int) -> list[list[int]]:
    readings = []
    for best in output.argmax(axis=-1):
        readings.append([int(k) for j, k in enumerate(best) if k != blank and (j == 0 or k != best[j - 1])])
    return readings


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (class-index readings, or strings)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def stepped_grids(source: tuple[float, int], target: tuple[float, int],
                  ratio_range: tuple[float, float]) -> list[tuple[float, int]]:
    """int8 (scale, zero point) grids from `source` to `target` (the last one) whose consecutive
    scale ratios all lie in `ratio_range`: equal geometric steps, the intermediate grids sharing
    their low end with the narrower of the two (so none clips what both can hold). Why: a runtime
    may take a requantization only within a scale ratio (XNNPACK's int8 QUANTIZE)."""
    (in_scale, in_zero), (out_scale, out_zero) = source, target
    ratio = in_scale / out_scale
    steps = 1
    while not ratio_range[0] <= ratio ** (1.0 / steps) <= ratio_range[1]:
        steps += 1
    low = in_scale * (-128 - in_zero) if ratio < 1.0 else out_scale * (-128 - out_zero)
    grids = []
    for step in range(1, steps):
        scale = in_scale / ratio ** (step / steps)
        grids.append((scale, int(np.clip(np.rint(-128 - low / scale), -128, 127))))
    return grids + [(out_scale, out_zero)]
