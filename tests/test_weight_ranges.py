"""calibration.weight_ranges: mse (quantmath.mse_weight_amax): per-channel weight thresholds with
the lowest int8 weight error, used alike by the Q/DQ writer (TensorRT, every target's simulation)
and the TFLite lowering; checked against a brute-force numpy search and the minmax grid."""

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.backends.qdq import write_qdq_model
from edgepipe.backends.tflite import build_tflite
from edgepipe.calibrate.result import CalibrationResult
from tests.tflite_harness import minmax_calibration

RNG = np.random.default_rng(8)


def weight_error(rows: np.ndarray, amax: np.ndarray) -> np.ndarray:
    scale = amax[:, None] / 127.0
    return np.sum((np.clip(np.rint(rows / scale), -127, 127) * scale - rows) ** 2, axis=1)


def test_mse_threshold_is_the_best_of_its_fractions_and_never_worse_than_minmax():
    rows = RNG.standard_t(2, (6, 2000)) * 0.05  # heavy tails: clipping the largest weights pays
    rows[0] = RNG.uniform(-1, 1, 2000)  # flat: nothing to clip
    amax = quantmath.mse_weight_amax(rows)
    absmax = np.abs(rows).max(axis=1)
    errors = np.stack([weight_error(rows, absmax * f) for f in quantmath.MSE_WEIGHT_FRACTIONS])
    np.testing.assert_allclose(weight_error(rows, amax), errors.min(axis=0), rtol=1e-12)
    assert np.all(weight_error(rows, amax) <= weight_error(rows, absmax))
    assert amax[0] == absmax[0] and np.any(amax[1:] < absmax[1:])


def test_per_channel_symmetric_takes_the_mse_thresholds_along_its_axis():
    weights = RNG.laplace(0, 0.1, (3, 5, 4, 4)).astype(np.float32)
    _, minmax = quantmath.per_channel_symmetric(weights, axis=1)
    _, mse = quantmath.per_channel_symmetric(weights, axis=1, ranges="mse")
    rows = np.moveaxis(weights, 1, 0).reshape(5, -1)
    np.testing.assert_allclose(minmax, np.abs(rows).max(axis=1) / 127, rtol=1e-6)
    np.testing.assert_allclose(mse, quantmath.mse_weight_amax(rows) / 127, rtol=1e-6)


def conv_model():
    weight = RNG.laplace(0, 0.2, (8, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, weight


def test_qdq_writer_and_tflite_use_the_calibrations_weight_ranges(tmp_path):
    model, weight = conv_model()
    feeds = [{"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    calibration = dataclasses.replace(minmax_calibration(model, feeds), weight_ranges="mse")
    expected = quantmath.mse_weight_amax(weight.reshape(8, -1)) / 127
    qdq, _ = write_qdq_model(model, calibration)
    dequantize = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w"))
    np.testing.assert_allclose(graph.constant_value(qdq, dequantize.input[1]), expected, rtol=1e-6)
    build_tflite(model, calibration, tmp_path, {})
    from tflite.Model import Model  # the flatbuffer as written: the filter's per-channel scales

    tfl = Model.GetRootAsModel((tmp_path / "model.tflite").read_bytes(), 0)
    sub = tfl.Subgraphs(0)
    filters = [sub.Tensors(i) for i in range(sub.TensorsLength()) if sub.Tensors(i).Name().decode().endswith(";filter")]
    assert len(filters) == 1
    np.testing.assert_allclose(filters[0].Quantization().ScaleAsNumpy(), expected, rtol=1e-6)


def test_calibration_json_round_trip_keeps_weight_ranges(tmp_path):
    result = CalibrationResult(weight_ranges="mse")
    assert CalibrationResult.load(result.save(tmp_path / "c.json")).weight_ranges == "mse"
    assert "weight_ranges" not in CalibrationResult().to_json()  # minmax files stay as before
