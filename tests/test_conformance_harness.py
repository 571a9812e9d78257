"""The int8 conformance harness judges the file against grids derived from the calibration.

A harness that takes the output scale from the .tflite it checks passes a file whose output scale
is 40x wrong (its steps grow with the error). These tests write a correct int8 file, corrupt one
scale in the written bytes, and require the harness to fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite.runtime import make_interpreter
from tests.tflite_harness import (convert, expected_int8_params, int8_error_steps, make_model,
                                  structured_inputs)


def conv_sigmoid_model():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"])]
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"],
                      {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32),
                       "w2": rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "b2": np.zeros(2, np.float32)})


def corrupt_scale(path, tensor_name: str, factor: float) -> float:
    """Multiply the stored float32 scale of `tensor_name` by `factor` in the written file."""
    details = [d for d in make_interpreter(path, "reference").get_tensor_details() if d["name"] == tensor_name]
    scale = np.float32(details[0]["quantization_parameters"]["scales"][0])
    data = path.read_bytes()
    assert data.count(scale.tobytes()) >= 1
    path.write_bytes(data.replace(scale.tobytes(), np.float32(scale * factor).tobytes()))
    return float(scale)


@pytest.fixture()
def built(tmp_path):
    model = conv_sigmoid_model()
    feeds = structured_inputs(model, count=4)
    result, calibration = convert(model, tmp_path / "tflite", feeds)
    return model, feeds, result, calibration, tmp_path / "tflite"


def test_correct_file_is_within_two_steps(built):
    model, feeds, result, calibration, out_dir = built
    for resolver in ("xnnpack", "reference"):
        assert int8_error_steps(model, out_dir, result["io"], calibration, feeds, resolver) <= 2.0


@pytest.mark.parametrize("factor", [40.0, 1 / 40.0])
def test_wrong_output_scale_in_the_file_fails(built, factor):
    model, feeds, result, calibration, out_dir = built
    path = out_dir / "model.tflite"
    int8_names = {d["name"] for d in make_interpreter(path, "reference").get_tensor_details() if d["dtype"] == np.int8}
    output = next(n for n in int8_names if n.split(";")[0] == "y")  # "y;internal": int8 before DEQUANTIZE
    original = corrupt_scale(path, output, factor)
    assert original == pytest.approx(expected_int8_params(model, calibration)["y"][0], rel=1e-6)
    assert make_interpreter(path, "reference").get_tensor_details()  # the file still loads and runs
    assert int8_error_steps(model, out_dir, result["io"], calibration, feeds, "reference") > 10.0


def test_wrong_intermediate_scale_in_the_file_fails(built):
    model, feeds, result, calibration, out_dir = built
    corrupt_scale(out_dir / "model.tflite", "r", 40.0)
    assert int8_error_steps(model, out_dir, result["io"], calibration, feeds, "reference") > 10.0
