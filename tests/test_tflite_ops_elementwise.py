"""Conformance of Add/Sub/Mul/Div/Max/Min/Pow/Sqrt lowerings (broadcasting, constants, NHWC layout)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, make_model

RNG = np.random.default_rng(7)
CONV_W = RNG.normal(size=(4, 3, 1, 1)).astype(np.float32)


def _after_conv(op_type, other, other_value=None, second_input=None):
    """x -> 1x1 Conv (NHWC inside TFLite) -> op(conv, other): exercises layout + broadcasting. The
    Conv's output is a graph output too, so a constant operand is not folded into the Conv
    (ops/affine.py) and the op itself is lowered."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node(op_type, ["c", other], ["y"], name="op")]
    inputs = {"x": [1, 3, 6, 7]}
    if second_input is not None:
        inputs[other] = second_input
    inits = {"w": CONV_W}
    if other_value is not None:
        inits[other] = other_value
    return make_model(nodes, inputs, ["y", "c"], inits)


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Max", "Min"])
@pytest.mark.parametrize("other_shape", [[1, 4, 6, 7], [4, 1, 1], [7], [1]])
def test_binary_with_constant_broadcast(op_type, other_shape, tmp_path):
    value = RNG.normal(size=other_shape).astype(np.float32)
    check_conformance(_after_conv(op_type, "k", value), tmp_path)


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Max", "Min"])
@pytest.mark.parametrize("other_shape", [[1, 4, 6, 7], [1, 4, 1, 1], [6, 1]])
def test_binary_with_two_activations(op_type, other_shape, tmp_path):
    check_conformance(_after_conv(op_type, "z", second_input=other_shape), tmp_path)


def test_div_by_constant_becomes_int8_mul(tmp_path):
    model = _after_conv("Div", "k", np.array([2.0, -4.0, 0.5, 8.0], np.float32).reshape(4, 1, 1))
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"].get("MUL") == 1 and not report.result["float_nodes"]


def test_div_by_activation_is_a_float_island(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["z"], ["s"], name="sig"),
             helper.make_node("Add", ["s", "one"], ["d"], name="shift"),
             helper.make_node("Div", ["x", "d"], ["y"], name="div")]
    model = make_model(nodes, {"x": [1, 8], "z": [1, 8]}, ["y"], {"one": np.array(1.0, np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["div"]
    histogram = report.result["op_histogram"]
    # z is quantized for the int8 Sigmoid/Add, their result dequantized for DIV; x stays float
    assert histogram["DIV"] == 1 and histogram["QUANTIZE"] == 1 and histogram["DEQUANTIZE"] == 1


def test_pow_two_is_int8_square_and_sqrt_is_float(tmp_path):
    """sqrt(x^2 + 1): the square and the sum with a constant are int8 (no magnitude of squares)."""
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"], name="square"),
             helper.make_node("Add", ["p", "one"], ["q"], name="plus_one"),
             helper.make_node("Sqrt", ["q"], ["y"], name="root")]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], {"two": np.array(2.0, np.float32),
                                                           "one": np.array(1.0, np.float32)})
    report = check_conformance(model, tmp_path, int8_steps=3.0)
    assert report.result["float_nodes"] == ["root"]
    assert report.result["op_histogram"]["MUL"] == 1 and report.result["op_histogram"]["SQRT"] == 1


def test_magnitude_of_squares_stays_float(tmp_path):
    """sqrt(a^2 + b^2) (an STFT magnitude): an int8 square would zero every magnitude below the
    square root of its output step, so the squares and their sum stay float with the Sqrt."""
    nodes = [helper.make_node("Pow", ["a", "two"], ["a2"], name="re_squared"),
             helper.make_node("Mul", ["b", "b"], ["b2"], name="im_squared"),
             helper.make_node("Add", ["a2", "b2"], ["power"], name="power"),
             helper.make_node("Sqrt", ["power"], ["y"], name="magnitude")]
    model = make_model(nodes, {"a": [1, 4, 6], "b": [1, 4, 6]}, ["y"], {"two": np.array(2.0, np.float32)})
    report = check_conformance(model, tmp_path, fp32_rtol=1e-5, int8_steps=2.0)
    assert sorted(report.result["float_nodes"]) == ["im_squared", "magnitude", "power", "re_squared"]
