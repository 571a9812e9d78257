"""ONNX Runtime's `quantize_static`, set up the same way for every benchmark that uses it as a peer.

QDQ format, per-channel int8 weights, int8 activations, symmetric activations and weights (what
TensorRT consumes), fed one sample at a time from a callable: one definition, so the peer cannot
silently differ between benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def ort_quantize_static(model_path: str | Path, out_path: str | Path, count: int,
                        sample: Callable[[int], dict], method: str = "Entropy") -> None:
    """Write ORT's Q/DQ model for `count` samples (`sample(i)` -> feed dict); method: MinMax|Entropy|Percentile."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.index = 0

        def get_next(self):
            if self.index >= count:
                return None
            self.index += 1
            return sample(self.index - 1)

    quantize_static(str(model_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
