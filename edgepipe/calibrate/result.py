"""The calibration result every backend reads.

Calibration is backend-agnostic: it records, per tensor, both a symmetric threshold (`amax`,
TensorRT style) and an asymmetric range (`lo`, `hi`, TFLite style), so the backend chooses the
scheme without re-running the model. Saved in the bundle as `calibration.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepipe import quantmath
from edgepipe.errors import UserError

_RANGE_FIELDS = ("min", "max", "amax", "lo", "hi")
_SCALE_FIELDS = ("amax", "lo", "hi")  # become scales and zero points: finite; min/max only observed
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class TensorCalibration:
    name: str
    min: float  # observed minimum over the calibration set
    max: float  # observed maximum
    amax: float  # chosen symmetric clipping threshold (> 0)
    lo: float  # chosen asymmetric range, lo <= 0 <= hi
    hi: float
    method: str  # method that chose amax / lo / hi
    reason: str = ""  # why this method (for method=auto), human readable
    stability: dict = field(default_factory=dict)  # per-round spread etc.
    # share of the non-zero calibration values the int8 grid of [lo, hi] rounds to 0
    # (TensorHistogram.zeroed_share): full-integer targets keep such tensors float
    zeroed: float = 0.0


@dataclass
class CalibrationResult:
    tensors: dict[str, TensorCalibration] = field(default_factory=dict)
    method: str = "auto"
    num_samples: int = 0
    warnings: list[str] = field(default_factory=list)
    # per-tensor histogram summaries (edges + counts, coarse) for the report's activation plots
    histograms: dict[str, dict] = field(default_factory=dict)
    # {weighted node: per-output-channel bias shift} (calibration.bias_correction); every int8
    # consumer applies them through bias_correction.apply_bias_corrections
    bias_corrections: dict[str, list[float]] = field(default_factory=dict)
    # how the build chose them (calibration.bias_correction: auto): the held-out check's numbers
    bias_correction: dict = field(default_factory=dict)
    # tensors that carried an attention mask's infinities on calibration data (collector.py): no
    # range, so every target keeps them and the nodes reading or writing them float
    unbounded: list[str] = field(default_factory=list)
    # per-channel weight thresholds every int8 consumer uses (calibration.weight_ranges: minmax | mse)
    weight_ranges: str = "minmax"
    # {sample index: FP32 graph outputs} kept by the collector for the output-effect check
    # (stability.output_effect); in memory only, never saved (a cached calibration runs the model)
    reference_outputs: dict[int, list] = field(default_factory=dict, repr=False, compare=False)

    def symmetric_scale(self, name: str, bits: int = 8) -> float:
        return quantmath.symmetric_scale(self.tensors[name].amax, bits)

    def asymmetric_params(self, name: str, bits: int = 8) -> tuple[float, int]:
        t = self.tensors[name]
        return quantmath.asymmetric_params(t.lo, t.hi, bits)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def to_json(self) -> dict:
        return {
            "schema": 1,
            "method": self.method,
            "num_samples": self.num_samples,
            "warnings": list(self.warnings),
            "tensors": {k: asdict(v) for k, v in sorted(self.tensors.items())},
            "histograms": {k: self.histograms[k] for k in sorted(self.histograms)},
            **({"bias_corrections": {k: self.bias_corrections[k] for k in sorted(self.bias_corrections)}}
               if self.bias_corrections else {}),
            **({"bias_correction": self.bias_correction} if self.bias_correction else {}),
            **({"weight_ranges": self.weight_ranges} if self.weight_ranges != "minmax" else {}),
            **({"unbounded": sorted(self.unbounded)} if self.unbounded else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> "CalibrationResult":
        tensors = {k: _tensor_from_json(k, v) for k, v in data.get("tensors", {}).items()}
        return cls(
            tensors=tensors,
            method=data.get("method", "auto"),
            num_samples=data.get("num_samples", 0),
            warnings=list(data.get("warnings", [])),
            histograms=dict(data.get("histograms", {})),
            bias_corrections=dict(data.get("bias_corrections", {})),
            bias_correction=dict(data.get("bias_correction", {})),
            weight_ranges=str(data.get("weight_ranges", "minmax")),
            unbounded=[str(name) for name in data.get("unbounded", [])],
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationResult":
        """A saved calibration.json; bounded like every JSON file a user hands us (a bundle's may be
        a FIFO, nested or of the wrong shape), each problem one UserError naming the file."""
        from edgepipe.safeio import CALIBRATION_JSON_MAX_BYTES, read_json_file

        data = read_json_file(path, "calibration.json", CALIBRATION_JSON_MAX_BYTES)
        try:
            return cls.from_json(data)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise UserError(f"{path}: not a calibration.json edgepipe wrote ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}); rebuild the bundle or re-run calibration") from None


def _tensor_from_json(name: str, entry: dict) -> TensorCalibration:
    """One tensor's record; its ranges numbers (a string or a NaN threshold would reach the
    backends' scale arithmetic)."""
    tensor = TensorCalibration(**entry)
    for field_name in _RANGE_FIELDS:
        value = getattr(tensor, field_name)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (field_name in _SCALE_FIELDS and not math.isfinite(value))):
            raise ValueError(f"tensor {name!r}: {field_name} must be a {'finite ' * (field_name in _SCALE_FIELDS)}"
                             f"number, got {value!r}")
    # what calibration writes (amax >= 0, lo <= 0 <= hi, float32 numbers): a negative or reversed range
    # in a hand-made ranges file built an int8 model with negative scales and said nothing
    if tensor.amax < 0 or tensor.lo > 0 or tensor.hi < 0:
        raise ValueError(f"tensor {name!r}: needs amax >= 0 and lo <= 0 <= hi, got amax {tensor.amax!r}, "
                         f"lo {tensor.lo!r}, hi {tensor.hi!r}")
    if max(abs(tensor.amax), abs(tensor.lo), abs(tensor.hi)) > _FLOAT32_MAX:
        raise ValueError(f"tensor {name!r}: a range beyond float32 ({tensor.amax!r}, {tensor.lo!r}, {tensor.hi!r})")
    zeroed = tensor.zeroed
    if isinstance(zeroed, bool) or not isinstance(zeroed, (int, float)) or not 0 <= zeroed <= 1:
        raise ValueError(f"tensor {name!r}: zeroed must be a share from 0 to 1, got {zeroed!r}")  # was exit 3
    return tensor
