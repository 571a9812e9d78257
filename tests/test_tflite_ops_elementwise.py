"""Conformance of Add/Sub/Mul/Div/Max/Min/Pow/Sqrt lowerings (broadcasting, constants, NHWC layout)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import (check_conformance, delegate_partitions, make_model, run_onnx, run_tflite,
                                  structured_inputs)

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
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"], name="square"),
             helper.make_node("Sqrt", ["p"], ["y"], name="root")]
    # "p" is an output too: a square read only by the float Sqrt would join it (float_statistics.py)
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y", "p"], {"two": np.array(2.0, np.float32)})
    report = check_conformance(model, tmp_path, int8_steps=3.0)
    assert report.result["float_nodes"] == ["root"]
    assert report.result["op_histogram"]["MUL"] == 1 and report.result["op_histogram"]["SQRT"] == 1


@pytest.mark.parametrize("op_type", ["Max", "Min"])
def test_int8_max_min_of_two_activations_is_a_float_island_in_the_partition(op_type, tmp_path):
    """XNNPACK delegates MAXIMUM / MINIMUM in float only (tests/test_tflite_builtins.py checks that
    fact): in an int8 model a Max / Min that is not a saturating clamp is DEQUANTIZE, the float op,
    QUANTIZE, inside the one partition, and matches ONNX Runtime within the int8 steps."""
    from edgepipe.backends.tflite import delegation

    report = check_conformance(_after_conv(op_type, "z", second_input=[1, 4, 6, 7]), tmp_path)
    assert report.result["float_nodes"] == ["op"]
    measured = delegation.measure(report.out_dir / "model.tflite")
    assert delegation.fully_delegated(measured), delegation.summary_line(measured)


@pytest.mark.parametrize(("op_type", "bound"), [("Max", -0.4), ("Min", 0.6)])
def test_int8_clamp_by_scalar_is_a_saturating_quantize(op_type, bound, tmp_path):
    """Max(x, c < 0) / Min(x, c > 0) (a floor after each LeakyReLU of a tf2onnx speech embedding):
    int8 is a QUANTIZE into a grid ending exactly at c, which XNNPACK delegates (int8 MAXIMUM /
    MINIMUM stay on builtin kernels); fp32 keeps MAXIMUM / MINIMUM."""
    from edgepipe.backends.tflite import delegation

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("LeakyRelu", ["c"], ["l"], name="leaky", alpha=0.2),
             helper.make_node(op_type, ["l", "k"], ["y"], name="op")]
    model = make_model(nodes, {"x": [1, 3, 6, 7]}, ["y"], {"w": CONV_W, "k": np.array([bound], np.float32)})
    # The reference simulation saturates on the calibrated grid, whose end falls up to a few of its
    # steps short of c; ours ends exactly at c (checked below), hence the wider step tolerance.
    report = check_conformance(model, tmp_path, int8_steps=3.5)
    opcode = "MAXIMUM" if op_type == "Max" else "MINIMUM"
    assert opcode not in report.result["op_histogram"]
    feed = structured_inputs(model)[0]
    expected = run_onnx(model, feed)["y"]
    got = run_tflite(report.out_dir / "model.tflite", report.result["io"], feed)["y"]
    clamped = expected == np.float32(bound)
    assert clamped.any() and np.allclose(got[clamped], bound, atol=1e-6)
    measured = delegation.measure(report.out_dir / "model.tflite")
    assert delegation.fully_delegated(measured), delegation.summary_line(measured)


def test_int8_clamp_written_by_its_producer_carries_the_clamp_name(tmp_path):
    """When the clamp is its input's only reader, the LeakyReLU writes the clamp's grid and no op
    is left for the clamp; that tensor holds the clamped values, so it is named after the clamp's
    output (what `edgepipe compare` matches by ONNX name), not after the LeakyReLU's."""
    from tests.realmodels.evaluate import interpreter

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("LeakyRelu", ["c"], ["l"], name="leaky", alpha=0.2),
             helper.make_node("Max", ["l", "k"], ["m"], name="floor"),
             helper.make_node("Mul", ["m", "two"], ["y"], name="double")]
    model = make_model(nodes, {"x": [1, 3, 6, 7]}, ["y"], {"w": CONV_W, "k": np.array(-0.4, np.float32),
                                                            "two": np.array(2.0, np.float32)})
    report = check_conformance(model, tmp_path, int8_steps=3.5)
    histogram = report.result["op_histogram"]
    assert "MAXIMUM" not in histogram and histogram.get("QUANTIZE", 0) == 1  # the graph input's only
    names = {d["name"] for d in interpreter(report.out_dir / "model.tflite").get_tensor_details()}
    assert "m" in names and "l" not in names


def test_magnitude_of_squares_stays_float(tmp_path):
    """sqrt(a^2 + b^2) (an STFT magnitude, Silero VAD): an int8 square would zero every magnitude
    below the square root of its output step; the squares and their sum join the float Sqrt
    (float_statistics.py)."""
    nodes = [helper.make_node("Pow", ["a", "two"], ["a2"], name="re_squared"),
             helper.make_node("Mul", ["b", "b"], ["b2"], name="im_squared"),
             helper.make_node("Add", ["a2", "b2"], ["power"], name="power"),
             helper.make_node("Sqrt", ["power"], ["y"], name="magnitude")]
    model = make_model(nodes, {"a": [1, 4, 6], "b": [1, 4, 6]}, ["y"], {"two": np.array(2.0, np.float32)})
    report = check_conformance(model, tmp_path, fp32_rtol=1e-5, int8_steps=2.0)
    assert sorted(report.result["float_nodes"]) == ["im_squared", "magnitude", "power", "re_squared"]


@pytest.mark.parametrize("exponent", [3.0, 4.0, 5.0, -1.0, -2.0, 1.5, 2.5, -0.5, 16.0])
def test_whole_and_half_powers_are_delegated_multiplications(exponent, tmp_path):
    """x^n as MULs (a SQRT for a half, a DIV for n < 0) in float: no POW, one XNNPACK partition."""
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="abs"),
             helper.make_node("Pow", ["a", "n"], ["y"], name="pow")]
    model = make_model(nodes, {"x": [1, 3, 5, 6]}, ["y"], {"n": np.array(exponent, np.float32)})
    feeds = [{"x": (feed["x"] + np.sign(feed["x"]) * 0.5).astype(np.float32)}
             for feed in structured_inputs(model)]
    report = check_conformance(model, tmp_path, feeds, fp32_rtol=4e-6)
    histogram = report.result["op_histogram"]
    assert "POW" not in histogram and ("SQRT" in histogram) == (exponent % 1 != 0), histogram
    for path in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / path)) == 1, path



def test_leaky_relu_input_grid_ends_where_the_floor_takes_over(tmp_path):
    """Conv -> LeakyReLU(0.2) -> Max(., -0.4) (tf2onnx's speech embedding): every conv output at or
    below -0.4 / 0.2 = -2 ends as -0.4, so the conv writes a grid ending exactly at -2 instead of
    at its calibrated minimum (about -22 here): the same top, finer steps, and every output ONNX
    Runtime floors is exactly -0.4 in LiteRT."""
    from tests.helpers import sqnr_db
    from tests.realmodels.evaluate import interpreter
    from tests.tflite_harness import convert

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("LeakyRelu", ["c"], ["l"], name="leaky", alpha=0.2),
             helper.make_node("Max", ["l", "k"], ["m"], name="floor")]
    inits = {"w": rng.normal(size=(8, 16, 1, 1)).astype(np.float32), "b": np.full(8, -6.0, np.float32),
             "k": np.array(-0.4, np.float32)}
    model = make_model(nodes, {"x": [1, 16, 6, 7]}, ["m"], inits)
    feeds = [{"x": rng.normal(size=(1, 16, 6, 7)).astype(np.float32)} for _ in range(24)]
    result, calibration = convert(model, tmp_path, feeds[:16])
    path = tmp_path / "model.tflite"
    (conv_out,) = [d for d in interpreter(path).get_tensor_details() if d["name"] == "c"]
    scale, zero_point = conv_out["quantization"]
    assert calibration.tensors["c"].lo < -20.0
    assert scale * (-128 - zero_point) == pytest.approx(-2.0, abs=1e-5)
    assert scale * (127 - zero_point) >= calibration.tensors["c"].hi - scale  # the calibrated top
    assert len(delegate_partitions(path)) == 1
    with_c = make_model(nodes, {"x": [1, 16, 6, 7]}, ["m", "c"], inits)  # ONNX Runtime's conv output too
    reference = [run_onnx(with_c, feed) for feed in feeds[16:]]
    got = [run_tflite(path, result["io"], feed)["m"] for feed in feeds[16:]]
    floored = np.concatenate([r["c"] <= -2.0 - scale for r in reference])
    assert floored.any() and np.all(np.concatenate(got)[floored] == np.float32(-0.4))
    assert sqnr_db(np.concatenate([r["m"] for r in reference]), np.concatenate(got)) > 28.0
