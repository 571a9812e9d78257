"""The flatbuffer writer: file identity, buffer 0, opcode fields, quantization vector types, signature."""

from __future__ import annotations

import numpy as np
import tflite

from edgepipe.backends.tflite.writer import ModelSpec, Quantization, serialize
from tests.tflite_harness import make_interpreter


def _quantized_gelu_model() -> ModelSpec:
    """float x -> QUANTIZE -> GELU (builtin code 150 > 127) -> ADD(const) -> DEQUANTIZE -> y."""
    spec = ModelSpec()
    x = spec.add_tensor("x", [1, 6], "float32")
    xq = spec.add_tensor("x_q", [1, 6], "int8", Quantization.per_tensor(0.05, 3))
    g = spec.add_tensor("g", [1, 6], "int8", Quantization.per_tensor(0.04, -100))
    k = spec.add_constant("k", np.array([[10, -20, 30, -40, 50, 127]], np.int8), Quantization.per_tensor(0.01, 0))
    s = spec.add_tensor("s", [1, 6], "int8", Quantization.per_tensor(0.05, -60))
    y = spec.add_tensor("y", [1, 6], "float32")
    spec.add_operator("QUANTIZE", [x], [xq])
    spec.add_operator("GELU", [xq], [g], "GeluOptions", {"Approximate": False})
    spec.add_operator("ADD", [g, k], [s], "AddOptions", {"FusedActivationFunction": 0})
    spec.add_operator("DEQUANTIZE", [s], [y])
    spec.inputs, spec.outputs = [x], [y]
    return spec


def test_file_structure(tmp_path):
    data = serialize(_quantized_gelu_model())
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAsModel(data, 0)
    assert model.Version() == 3
    assert model.Buffers(0).DataLength() == 0  # buffer 0: the "no data" sentinel
    codes = {model.OperatorCodes(i).BuiltinCode(): model.OperatorCodes(i) for i in range(model.OperatorCodesLength())}
    assert codes[150].DeprecatedBuiltinCode() == 127 and codes[150].Version() >= 1
    assert all(code.Version() >= 1 for code in codes.values())
    subgraph = model.Subgraphs(0)
    constant = next(subgraph.Tensors(i) for i in range(subgraph.TensorsLength()) if subgraph.Tensors(i).Name() == b"k")
    assert constant.Buffer() > 0
    assert bytes(model.Buffers(constant.Buffer()).DataAsNumpy()) == np.array([10, -20, 30, -40, 50, 127], np.int8).tobytes()
    quant = constant.Quantization()
    assert quant.ScaleAsNumpy().dtype == np.float32 and quant.ZeroPointAsNumpy().dtype == np.int64
    signature = model.SignatureDefs(0)
    assert signature.SignatureKey() == b"serving_default"
    assert signature.Inputs(0).Name() == b"x" and signature.Outputs(0).Name() == b"y"


def test_written_model_runs_and_matches_numpy(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(serialize(_quantized_gelu_model()))
    x = np.linspace(-2, 3, 6, dtype=np.float32)[None]
    import math

    expected_gelu = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()], np.float32)
    expected = expected_gelu + np.array([10, -20, 30, -40, 50, 127]) * 0.01
    for resolver in ("xnnpack", "no_delegates", "reference"):
        interpreter = make_interpreter(path, resolver)
        runner = interpreter.get_signature_runner("serving_default")
        got = runner(x=x)["y"].ravel()
        assert np.max(np.abs(got - expected)) <= 3 * 0.05, resolver  # a few output steps


def test_per_channel_quantization_is_written(tmp_path):
    spec = ModelSpec()
    spec.add_constant("w", np.ones((3, 2), np.int8), Quantization.per_channel([0.1, 0.2, 0.3], axis=0))
    x = spec.add_tensor("x", [1, 2], "float32")
    y = spec.add_tensor("y", [1, 2], "float32")
    spec.add_operator("RELU", [x], [y])
    spec.inputs, spec.outputs = [x], [y]
    model = tflite.Model.GetRootAsModel(serialize(spec), 0)
    quant = model.Subgraphs(0).Tensors(0).Quantization()
    assert np.allclose(quant.ScaleAsNumpy(), [0.1, 0.2, 0.3]) and quant.QuantizedDimension() == 0
    assert list(quant.ZeroPointAsNumpy()) == [0, 0, 0]
