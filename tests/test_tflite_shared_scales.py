"""`backend.share_concat_scales` (edgepipe/backends/tflite/shared_scales.py, on by default): Concat
inputs with no other consumer are written on the Concat's grid, so their requantizing QUANTIZE ops go.

Reference: an ONNX Runtime Q/DQ simulation whose grids are derived from the calibration ranges
(tests/tflite_harness.expected_int8_params), with the shared inputs moved onto the Concat's grid
by the rule itself, never read from the .tflite under test."""

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite
from tests.tflite_harness import (convert, delegate_partitions, expected_int8_params, make_model, qdq_reference,
                                  run_onnx, structured_inputs)

RNG = np.random.default_rng(11)


def concat_model():
    """Three convs of different output ranges into one Concat; the widest (c) also feeds a Relu
    (another consumer: it keeps its own grid, which is the Concat's anyway)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["b"], name="conv_b"),
             helper.make_node("Conv", ["x", "w3", "b3"], ["c"], name="conv_c"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Concat", ["a", "b", "c"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w4", "b4"], ["y"], name="conv_y"),
             helper.make_node("Add", ["r", "r"], ["z"], name="add")]
    weights = {"w1": RNG.normal(0, 0.2, (4, 3, 3, 3)), "b1": RNG.normal(0, 0.1, 4),
               "w2": RNG.normal(0, 1.0, (4, 3, 3, 3)), "b2": RNG.normal(0, 0.1, 4),
               "w3": RNG.normal(0, 3.0, (4, 3, 3, 3)), "b3": RNG.normal(0, 0.1, 4),
               "w4": RNG.normal(0, 0.3, (5, 12, 1, 1)), "b4": RNG.normal(0, 0.1, 5)}
    return make_model(nodes, {"x": [1, 3, 10, 10]}, ["y", "z"], {k: v.astype(np.float32) for k, v in weights.items()})


def quantize_count(path):
    return [op["op_name"] for op in make_interpreter(path, "no_delegates")._get_ops_details()].count("QUANTIZE")


def test_shared_inputs_lose_their_quantize_and_match_the_simulation(tmp_path):
    model = concat_model()
    feeds = structured_inputs(model, count=8)
    plain, _ = convert(model, tmp_path / "plain", feeds, share_concat_scales=False)
    shared, calibration = convert(model, tmp_path / "shared", feeds)  # on by default
    # a and b (single consumer) are written on the Concat's grid; c also feeds the Relu
    removed = quantize_count(tmp_path / "plain" / "model.tflite") - quantize_count(tmp_path / "shared" / "model.tflite")
    assert removed == 2

    params = expected_int8_params(model, calibration)
    params["a"] = params["b"] = params["cat"]
    simulated = qdq_reference(model, params)
    path = tmp_path / "shared" / "model.tflite"
    interpreter = make_interpreter(path, "reference")
    for feed in feeds[:3]:
        expected = run_onnx(simulated, {"x__float": feed["x"]})
        got = run_tflite(path, shared["io"], feed, interpreter=interpreter)
        for name in ("y", "z"):
            assert np.max(np.abs(got[name] - expected[name])) / params[name][0] <= 2.0 + 1e-3

    def error(result, folder):  # int8 vs float ONNX Runtime: sharing must not cost accuracy
        total = 0.0
        for feed in feeds:
            got = run_tflite(tmp_path / folder / "model.tflite", result["io"], feed)
            total += float(np.mean((got["y"] - run_onnx(model, feed)["y"]) ** 2))
        return total

    assert error(shared, "shared") <= error(plain, "plain") * 1.05


def head_model():
    """A detector-like head: boxes in pixels (Conv * 320) next to sigmoid scores in one output Concat."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["raw"], name="box_conv"),
             helper.make_node("Mul", ["raw", "stride"], ["boxes"], name="to_pixels"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["logits"], name="cls_conv"),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head", axis=1)]
    weights = {"w1": RNG.normal(0, 0.5, (4, 3, 1, 1)), "b1": RNG.normal(0, 0.1, 4),
               "w2": RNG.normal(0, 0.5, (3, 3, 1, 1)), "b2": RNG.normal(0, 0.1, 3), "stride": np.array(320.0)}
    return make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], {k: np.asarray(v, np.float32) for k, v in weights.items()})


def test_output_concat_of_disparate_ranges_stays_float_and_keeps_the_small_input(tmp_path):
    model = head_model()
    feeds = structured_inputs(model, count=8)
    results = {}
    for flag in (False, True):
        result, _ = convert(model, tmp_path / str(flag), feeds, float_output_concats=flag)
        results[flag] = (result, tmp_path / str(flag))
    assert "head" in results[True][0]["float_nodes"] and "head" not in results[False][0]["float_nodes"]
    default, _ = convert(model, tmp_path / "default", feeds)  # on by default
    assert "head" in default["float_nodes"] and len(delegate_partitions(tmp_path / "default" / "model.tflite")) == 1

    def score_error(flag):  # int8 vs ONNX Runtime float on the score channels only
        result, folder = results[flag]
        worst = 0.0
        for feed in feeds:
            got = run_tflite(folder / "model.tflite", result["io"], feed)["y"][:, 4:]
            worst = max(worst, float(np.max(np.abs(got - run_onnx(model, feed)["y"][:, 4:]))))
        return worst

    # one int8 grid over [~-1000, ~1000] has a step of ~8: scores in [0, 1] round to 0; float keeps
    # the sigmoid's own 1/256 grid (half a step of error at most, plus the logits' rounding)
    assert score_error(False) > 0.25
    assert score_error(True) <= 2.0 / 256


def test_reshaped_concat_inputs_share_the_grid_back_to_their_producer(tmp_path):
    """conv -> Reshape -> Concat (YOLOv8's flattened head levels): the Reshape passes its input's
    grid on, so the conv writes the Concat's grid and neither needs a QUANTIZE; the int8 output
    matches the Q/DQ simulation with the conv outputs on the Concat's grid."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["b"], name="conv_b"),
             helper.make_node("Reshape", ["a", "shape"], ["ra"], name="flat_a"),
             helper.make_node("Reshape", ["b", "shape"], ["rb"], name="flat_b"),
             helper.make_node("Concat", ["ra", "rb"], ["cat"], name="cat", axis=2),
             helper.make_node("Mul", ["cat", "gain"], ["y"], name="gain")]
    weights = {"w1": RNG.normal(0, 0.2, (4, 3, 1, 1)), "b1": RNG.normal(0, 0.1, 4),
               "w2": RNG.normal(0, 2.0, (4, 3, 1, 1)), "b2": RNG.normal(0, 0.1, 4), "gain": np.array(0.5)}
    inits = {k: np.asarray(v, np.float32) for k, v in weights.items()} | {"shape": np.array([1, 4, -1], np.int64)}
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits)
    feeds = structured_inputs(model, count=8)
    convert(model, tmp_path / "plain", feeds, share_concat_scales=False)
    shared, calibration = convert(model, tmp_path / "shared", feeds)
    path = tmp_path / "shared" / "model.tflite"
    # plain: the input's QUANTIZE and one requantizing the narrower conv onto the Concat's grid
    assert quantize_count(tmp_path / "plain" / "model.tflite") == 2 and quantize_count(path) == 1
    params = expected_int8_params(model, calibration)
    for name in ("a", "b", "ra", "rb"):
        params[name] = params["cat"]
    simulated = qdq_reference(model, params)
    interpreter = make_interpreter(path, "reference")
    for feed in feeds[:3]:
        expected = run_onnx(simulated, {"x__float": feed["x"]})
        got = run_tflite(path, shared["io"], feed, interpreter=interpreter)
        assert np.max(np.abs(got["y"] - expected["y"])) / params["y"][0] <= 2.0 + 1e-3


def test_the_placement_follows_both_concat_settings(tmp_path):
    """The placement the accuracy tools emulate (`int8_grids`, for the planner and `compare`) takes
    the build's concat settings: with them off it quantizes what the .tflite then quantizes."""
    from edgepipe.backends.tflite.placement import int8_grids

    model = head_model()
    feeds = structured_inputs(model, count=8)
    _, calibration = convert(model, tmp_path / "head", feeds)
    assert "head" not in int8_grids(model, calibration, {})["int8_nodes"]  # float by default, as built
    assert "head" in int8_grids(model, calibration, {"float_output_concats": False})["int8_nodes"]

    model = concat_model()
    feeds = structured_inputs(model, count=8)
    _, calibration = convert(model, tmp_path / "cat", feeds)
    shared = int8_grids(model, calibration, {})["grids"]
    assert shared["a"] == shared["cat"]  # written on the Concat's grid
    own = int8_grids(model, calibration, {"share_concat_scales": False})["grids"]
    scale, zero_point = expected_int8_params(model, calibration)["a"]  # its own calibrated grid
    assert own["a"] != own["cat"] and own["a"][1] == zero_point and own["a"][0] == pytest.approx(scale, rel=1e-6)
