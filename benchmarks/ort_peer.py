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


def ort_ranges_in_our_placement(model, ort_qdq, base_calibration) -> tuple:
    """Our Q/DQ placement with the activation thresholds ORT chose (symmetric int8: ORT's scale
    is 2 * amax / 255); tensors ORT did not quantize keep `base_calibration`'s range. Calibration
    is then the only difference from our own Q/DQ model of `model` (placement is shared)."""
    import onnx

    from edgepipe import graph
    from edgepipe.backends.qdq import write_qdq_model
    from edgepipe.calibrate.result import CalibrationResult

    calibration = CalibrationResult.load(base_calibration)
    peer = onnx.load(ort_qdq)
    taken = 0
    for node in peer.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in calibration.tensors:
            continue
        scale = graph.constant_value(peer, node.input[1])
        if scale is None or scale.size != 1:
            continue
        tensor = calibration.tensors[node.input[0]]
        tensor.amax = float(scale.reshape(())) * 255.0 / 2.0
        tensor.lo, tensor.hi, tensor.method = -tensor.amax, tensor.amax, "ort"
        taken += 1
    qdq, report = write_qdq_model(model, calibration)
    quantized = {t for entry in report["quantized_nodes"].values() for t in entry["inputs"]
                 if t in calibration.tensors}
    kept = sorted(t for t in quantized if calibration.tensors[t].method != "ort")
    return qdq, {"tensors_from_ort": taken, "quantized_tensors_without_ort_range": kept}
