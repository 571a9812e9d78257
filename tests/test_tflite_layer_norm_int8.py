"""The delegation facts that keep LayerNorm a float island in int8 arm-cpu models
(edgepipe/backends/tflite/ops/normalization.py), checked on one-op int8 models in LiteRT.

An integer LayerNorm needs MEAN over the channel axis, SUB and MUL (XNNPACK takes them in int8)
and an inverse square root (it takes no int8 RSQRT, SQRT, DIV or SQUARED_DIFFERENCE), so at best
the per-row statistics go back to float; benchmarks/layernorm_int8.py measured that form slower
and less accurate than the float island. The day LiteRT delegates one of the int8 kernels listed
as outside, this fails and the choice deserves a new measurement.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgepipe import quantmath
from edgepipe.backends.tflite import delegation
from edgepipe.backends.tflite.writer import ModelSpec, Quantization, serialize

ROWS = [1, 17, 48]  # tokens x channels, as ViT's LayerNorm input
GRID = Quantization.per_tensor(*quantmath.asymmetric_params(-3.0, 3.0))
POSITIVE = Quantization.per_tensor(*quantmath.asymmetric_params(0.0, 4.0))
BINARY = {"SUB": "SubOptions", "MUL": "MulOptions", "ADD": "AddOptions", "DIV": "DivOptions"}


def one_int8_op(opcode: str, inputs: int, out_shape=ROWS, axes=None, grid=GRID) -> bytes:
    """float input(s) -> QUANTIZE -> int8 `opcode` -> DEQUANTIZE -> float output."""
    spec = ModelSpec()
    quantized = []
    for position in range(inputs):
        x = spec.add_tensor(f"x{position}", ROWS, "float32")
        spec.inputs.append(x)
        quantized.append(spec.add_tensor(f"x{position};int8", ROWS, "int8", grid))
        spec.add_operator("QUANTIZE", [x], [quantized[-1]])
    options_type, options = (BINARY[opcode], {"FusedActivationFunction": 0}) if opcode in BINARY else (None, {})
    if axes is not None:
        quantized.append(spec.add_constant("axes", np.array(axes, np.int32)))
        options_type, options = "ReducerOptions", {"KeepDims": True}
    y = spec.add_tensor("y;int8", out_shape, "int8", grid)
    spec.add_operator(opcode, quantized, [y], options_type, options)
    out = spec.add_tensor("y", out_shape, "float32")
    spec.add_operator("DEQUANTIZE", [y], [out])
    spec.outputs.append(out)
    return serialize(spec)


CASES = {
    "MEAN over channels": (one_int8_op("MEAN", 1, [1, 17, 1], axes=[2]), True),
    "SUB": (one_int8_op("SUB", 2), True),
    "MUL": (one_int8_op("MUL", 2), True),
    "RSQRT": (one_int8_op("RSQRT", 1, grid=POSITIVE), False),
    "SQRT": (one_int8_op("SQRT", 1, grid=POSITIVE), False),
    "DIV": (one_int8_op("DIV", 2, grid=POSITIVE), False),
    "SQUARED_DIFFERENCE": (one_int8_op("SQUARED_DIFFERENCE", 2), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_int8_layer_norm_building_block_delegation(case, tmp_path):
    content, delegated = CASES[case]
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    measured = delegation.measure(path)
    assert measured is not None, "LiteRT could not load the one-op model"
    opcode = case.split()[0]
    assert delegation.fully_delegated(measured) == delegated, measured
    assert (opcode in measured["outside"]) == (not delegated), measured
