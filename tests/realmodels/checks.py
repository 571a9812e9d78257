"""The real-model corpus's pass rules, one home for the test that asserts them
(tests/test_real_models.py) and the README table that reports them (benchmarks/summarize.py).

Why standard library only: summarize.py is a pure-JSON script and imports this without numpy,
ONNX or the corpus files.
"""

from __future__ import annotations

FP32_RTOL = 1e-4  # max |fp32 - reference| / max |reference|
# A file whose own float noise is large: ONNX Runtime with vs without its graph fusions (both correct
# FP32 runs) disagree by `noise`; our folds re-associate the same sums, so the fp32 .tflite may
# differ by a few times that. Measured per run, never a number written here.
FLOAT_NOISE_FACTOR = 4
SHIPPED_INT8_SQNR_DB = 30.0  # float layers of a dynamically quantized file vs ORT running that file


def fp32_tolerance(float_noise: float | None) -> float:
    """The fp32 rule: within FP32_RTOL, or within FLOAT_NOISE_FACTOR x the file's own float noise
    (ONNX Runtime optimized vs plain on the same samples) where that is larger."""
    return max(FP32_RTOL, FLOAT_NOISE_FACTOR * (float_noise or 0.0))
