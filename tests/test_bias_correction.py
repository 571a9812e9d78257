"""Empirical bias correction (edgepipe/calibrate/bias_correction.py) against numpy and ONNX Runtime.

References: the per-channel mean error of a Gemm is computed in numpy from the int8 grid the
quantization math defines (asymmetric activations, per-channel symmetric weights); the corrected
model's outputs are checked in ONNX Runtime against the original model's outputs plus the shift."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.backends.qdq import simulated_int8_model
from edgepipe.calibrate.bias_correction import (apply_bias_corrections, checked_bias_corrections, correction_sites,
                                                estimate_bias_corrections, judge_corrections, split_for_check)
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration
from tests.helpers import run_cli, tiny_conv_model


class Samples:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def __len__(self):
        return len(self.array)

    def sample(self, i):
        return {self.name: self.array[i : i + 1]}


def gemm_model(weight, bias):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0]])],
                          [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def range_of(name, lo, hi):
    return TensorCalibration(name, lo, hi, max(abs(lo), abs(hi)), lo, hi, "test")


def test_gemm_correction_matches_the_numpy_mean_error_and_removes_it():
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 1, (8, 16)).astype(np.float32)
    weight[:, 0] *= 20  # one large input column: coarse per-channel grid, rounding error with a mean
    bias = rng.normal(0, 0.1, 8).astype(np.float32)
    x = rng.uniform(0, 3, (64, 16)).astype(np.float32)
    lo, hi = 0.0, 2.0  # clipped range: activation quantization shifts the mean
    calibration = CalibrationResult(tensors={"x": range_of("x", lo, hi), "y": range_of("y", -50.0, 50.0)})
    model = gemm_model(weight, bias)

    def qdq_model(m, c):
        return simulated_int8_model(m, c, symmetric=False)

    corrections = estimate_bias_corrections(model, calibration, Samples("x", x), qdq_model, samples=64)

    scale, zero = quantmath.asymmetric_params(lo, hi)
    q, scales = quantmath.per_channel_symmetric(weight, axis=0)
    xq = quantmath.fake_quantize(x, scale, zero).astype(np.float64)
    expected = (x.astype(np.float64) @ weight.T.astype(np.float64)).mean(0) - (xq @ (q * scales[:, None]).T).mean(0)
    assert np.abs(expected).max() > 1.0  # the case has a real mean error to fix
    np.testing.assert_allclose(corrections["fc"], expected, rtol=1e-3, atol=1e-3)
    assert calibration.bias_corrections == corrections

    corrected_sim, _ = qdq_model(model, calibration)  # the corrections go into the Q/DQ model
    float_out = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    sim = np.concatenate([graph.make_session(corrected_sim).run(None, {"x": x[i : i + 1]})[0] for i in range(64)])
    assert np.abs((float_out - sim).mean(0)).max() < 1e-3


def conv_and_matmul_model():
    """Conv without bias -> flatten -> MatMul + Add(bias): two correction sites, one bias added."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    m = rng.normal(0, 0.5, (4 * 6 * 6, 5)).astype(np.float32)
    b = rng.normal(0, 0.5, 5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "m"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(m, "m"),
                           numpy_helper.from_array(b, "b")])
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_apply_shifts_outputs_exactly_and_leaves_the_original_alone():
    model = conv_and_matmul_model()
    sites = correction_sites(model)
    assert sites == {"conv": ("c", None, 1), "mm": ("y", "b", -1)}
    delta_conv, delta_mm = np.array([0.5, -1.0, 0.25, 2.0]), np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    corrected = apply_bias_corrections(model, {"conv": delta_conv.tolist(), "mm": delta_mm.tolist()})
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    before = graph.make_session(graph.expose_tensors(model, ["c"])).run(None, {"x": x})
    after = graph.make_session(graph.expose_tensors(corrected, ["c"])).run(None, {"x": x})
    np.testing.assert_allclose(after[1], before[1] + delta_conv.reshape(1, 4, 1, 1), atol=1e-5)  # conv output
    # the MatMul's output moves by its own shift plus the conv shift carried through the weights
    carried = np.broadcast_to(delta_conv.reshape(4, 1, 1), (4, 6, 6)).reshape(-1) @ onnx.numpy_helper.to_array(
        model.graph.initializer[1])
    np.testing.assert_allclose(after[0], before[0] + delta_mm + carried, rtol=1e-4, atol=1e-4)
    assert len(model.graph.node[0].input) == 2  # the input model is not modified
    assert apply_bias_corrections(model, {}) is model
    # a node lowered float (or 16x8) keeps its bias: the shift was measured on its int8 grids
    skipped = apply_bias_corrections(model, {"conv": delta_conv.tolist(), "mm": delta_mm.tolist()}, skip={"conv"})
    np.testing.assert_allclose(graph.make_session(graph.expose_tensors(skipped, ["c"])).run(None, {"x": x})[1],
                               before[1], atol=1e-6)
    assert apply_bias_corrections(model, {"conv": delta_conv.tolist()}, skip={"conv"}) is model


@pytest.mark.slow
def test_build_records_corrections_and_touches_only_the_int8_file(tmp_path):
    """arm-cpu build with calibration.bias_correction: calibration.json carries the corrections,
    model.fp32.tflite and reference.onnx are byte-identical to a build without them, model.tflite
    differs."""
    model = tiny_conv_model()
    onnx.save(model, tmp_path / "m.onnx")
    data = np.random.default_rng(3).uniform(-1, 1, (24, 1, 3, 8, 8)).astype(np.float32)
    name = model.graph.input[0].name
    np.savez(tmp_path / "calib.npz", **{name: data[:, 0]})
    outs = {}
    for flag in (False, True):
        (tmp_path / f"cfg{flag}.yaml").write_text(f"calibration: {{bias_correction: {str(flag).lower()}}}\n")
        out = tmp_path / f"out{flag}"
        result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--target", "arm-cpu", "--calib",
                         str(tmp_path / "calib.npz"), "--config", str(tmp_path / f"cfg{flag}.yaml"),
                         "--no-host-report", "--out", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outs[flag] = out
    corrections = json.loads((outs[True] / "calibration.json").read_text()).get("bias_corrections")
    assert corrections and all(len(v) > 0 for v in corrections.values())
    assert "bias_corrections" not in json.loads((outs[False] / "calibration.json").read_text())
    for same in ("model.fp32.tflite", "reference.onnx"):
        assert (outs[True] / same).read_bytes() == (outs[False] / same).read_bytes()
    assert (outs[True] / "model.tflite").read_bytes() != (outs[False] / "model.tflite").read_bytes()


def test_each_layer_is_corrected_for_its_own_error_only():
    """Two Gemms in a chain: the second layer's correction is its own mean error on the float
    input (numpy), not the first layer's error carried through it (which the first one fixes)."""
    rng = np.random.default_rng(4)
    w1 = rng.normal(0, 1, (6, 6)).astype(np.float32)
    w1[:, 0] *= 30
    w2 = rng.normal(0, 1, (4, 6)).astype(np.float32)
    w2[:, 1] *= 30
    b1, b2 = np.zeros(6, np.float32), np.zeros(4, np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.uniform(0, 2, (48, 6)).astype(np.float32)
    h = x @ w1.T
    ranges = {"x": (0.0, 1.5), "h": (float(h.min()) * 0.8, float(h.max()) * 0.8), "y": (-100.0, 100.0)}
    calibration = CalibrationResult(tensors={k: range_of(k, *v) for k, v in ranges.items()})
    corrections = estimate_bias_corrections(model, calibration, Samples("x", x),
                                            lambda m, c: simulated_int8_model(m, c, symmetric=False), samples=48)

    def own_error(inputs, weight, lo, hi):
        scale, zero = quantmath.asymmetric_params(lo, hi)
        q, scales = quantmath.per_channel_symmetric(weight, axis=0)
        quantized = quantmath.fake_quantize(inputs, scale, zero).astype(np.float64) @ (q * scales[:, None]).T
        return (inputs.astype(np.float64) @ weight.T.astype(np.float64) - quantized).mean(0)

    np.testing.assert_allclose(corrections["fc1"], own_error(x, w1, *ranges["x"]), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(corrections["fc2"], own_error(h, w2, *ranges["h"]), rtol=1e-3, atol=2e-3)


# --- calibration.bias_correction: auto (the held-out check) ----------------------------------


def test_check_split_is_disjoint_and_holds_out_nothing_below_32_samples():
    estimate, held = split_for_check(40)
    assert len(held) == 20 and all(i % 2 == 1 for i in held)
    assert not set(estimate) & set(held) and len(estimate) == 20
    assert np.array_equal(split_for_check(40)[1], held)  # deterministic
    estimate, held = split_for_check(200)  # at most 32 held out, at most 32 estimate
    assert len(held) == 32 and len(estimate) == 32 and not set(estimate) & set(held)
    estimate, held = split_for_check(31)
    assert len(held) == 0 and list(estimate) == list(range(31))


def test_judge_keeps_a_gain_and_drops_a_loss_on_any_output():
    assert judge_corrections([20.0, 10.0], [21.0, 10.05])[0]
    assert not judge_corrections([20.0, 10.0], [23.0, 9.5])[0]  # one output loses 0.5 dB
    assert not judge_corrections([20.0], [19.99])[0]  # no gain
    assert not judge_corrections([20.0], [20.05])[0]  # a gain below what the held-out samples resolve
    assert not judge_corrections([None], [None])[0]


def clipped_gemm_case(held_out_clips: bool):
    """A Gemm whose input range is clipped at 2: samples above it shift the output mean, which
    the correction undoes. Even samples (estimation) reach 3; odd ones (held out) reach 3 too, or
    stay below 1.9 (never clipped: the correction learned on the even ones only adds a shift)."""
    rng = np.random.default_rng(7)
    weight = rng.normal(0, 1, (8, 16)).astype(np.float32)
    model = gemm_model(weight, np.zeros(8, np.float32))
    x = rng.uniform(0, 3, (48, 1, 16)).astype(np.float32)
    if not held_out_clips:
        x[1::2] = rng.uniform(0, 1.9, x[1::2].shape)
    calibration = CalibrationResult(tensors={"x": range_of("x", 0.0, 2.0), "y": range_of("y", -60.0, 60.0)})
    return model, calibration, Samples("x", x[:, 0])


@pytest.mark.parametrize("held_out_clips", [True, False])
def test_auto_keeps_corrections_only_when_the_held_out_outputs_improve(held_out_clips):
    """jetson's int8 (the Q/DQ ONNX in ONNX Runtime) judges; the held-out SQNRs are recomputed
    here with numpy's fake quantization of the same grids (symmetric activations, per-channel
    weights), with and without the shift."""
    from edgepipe.targets import load_target

    model, calibration, data = clipped_gemm_case(held_out_clips)
    report = checked_bias_corrections(model, calibration, data, load_target("jetson"), {})
    assert report["kept"] is held_out_clips
    assert bool(calibration.bias_corrections) is held_out_clips and calibration.bias_correction == report
    _, held = split_for_check(len(data))
    x = data.array[held]
    weight = numpy_helper.to_array(model.graph.initializer[0])
    q, scales = quantmath.per_channel_symmetric(weight, axis=0)
    x_q = quantmath.fake_quantize(x, quantmath.symmetric_scale(2.0), 0)
    want = x.astype(np.float64) @ weight.T
    plain = x_q.astype(np.float64) @ (q * scales[:, None]).T
    estimate, _ = split_for_check(len(data))
    shift = (data.array[estimate] @ weight.T.astype(np.float64)
             - quantmath.fake_quantize(data.array[estimate], quantmath.symmetric_scale(2.0), 0) @ (q * scales[:, None]).T).mean(0)
    expected = {"without": quantmath.sqnr_db(want, plain), "with": quantmath.sqnr_db(want, plain + shift)}
    for key, value in expected.items():
        assert report["held_out_sqnr_db"][key][0] == pytest.approx(value, abs=0.05)
    assert bool(expected["with"] > expected["without"]) is held_out_clips


@pytest.mark.slow
def test_default_build_records_the_check_and_ships_what_it_judged(tmp_path):
    """arm-cpu build with the defaults (auto): calibration.json records the held-out check, judged
    by the .tflite in LiteRT; the shipped model.tflite, run here in LiteRT on the held-out
    calibration samples against ONNX Runtime float, has the SQNR the report gives for the
    choice it made."""
    from edgepipe.backends.tflite.runtime import run_tflite

    model = tiny_conv_model()
    onnx.save(model, tmp_path / "m.onnx")
    data = np.random.default_rng(3).uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data)
    np.savez(tmp_path / "eval.npz", x=data[:4])  # an eval set: the calibration set stays whole
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--target", "arm-cpu", "--calib",
                     str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"), "--no-host-report",
                     "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "calibration.json").read_text())
    report = saved["bias_correction"]
    assert report["mode"] == "auto" and report["held_out"] == 20 and "LiteRT" in report["judged_by"]
    assert bool(saved.get("bias_corrections")) is report["kept"]
    _, held = split_for_check(len(data))
    io = json.loads((out / "manifest.json").read_text())["io"]
    session = graph.make_session(model)
    want = np.concatenate([session.run(None, {"x": data[i : i + 1]})[0] for i in held])
    got = np.concatenate([run_tflite(out / "model.tflite", io, {"x": data[i : i + 1]})["y"] for i in held])
    chosen = report["held_out_sqnr_db"]["with" if report["kept"] else "without"][0]
    assert quantmath.sqnr_db(want, got) == pytest.approx(chosen, abs=0.01)


def test_auto_leaves_corrections_off_below_32_calibration_samples():
    """Too few samples to hold out and judge on: off, and the report says why."""
    from edgepipe.targets import load_target

    model, calibration, data = clipped_gemm_case(True)
    report = checked_bias_corrections(model, calibration, Samples("x", data.array[:31]), load_target("jetson"), {})
    assert not report["kept"] and report["held_out"] == 0 and "too few" in report["reason"]
    assert calibration.bias_corrections == {}


def test_check_reuses_calibrations_fp32_outputs_with_the_same_report():
    """calibrate() keeps the FP32 outputs of the check's held-out samples from its own runs
    (calibration.reference_outputs); the check then reports exactly what it reports when it runs
    the FP32 model itself (a calibration loaded from calibration.json keeps none)."""
    from edgepipe.calibrate import calibrate
    from edgepipe.targets import load_target

    model, _, data = clipped_gemm_case(True)
    calibrated = calibrate(model, data, {"method": "mse"})
    _, held = split_for_check(len(data))
    assert set(int(i) for i in held) <= set(calibrated.reference_outputs)
    reloaded = CalibrationResult.from_json(calibrated.to_json())
    assert reloaded.reference_outputs == {}
    target = load_target("jetson")
    reused = checked_bias_corrections(model, calibrated, data, target, {})
    rerun = checked_bias_corrections(model, reloaded, data, target, {})
    assert reused["held_out"] == len(held) and reused == rerun
    assert calibrated.bias_corrections == reloaded.bias_corrections


def test_corrections_on_colliding_names_get_the_names_graph_fresh_name_gives():
    """apply_bias_corrections names its new biases from one set of taken names kept current (not
    a scan of the graph per bias): base, base_1, base_2 ... as graph.fresh_name, each node reading
    its own shifted bias."""
    model = conv_and_matmul_model()
    for name in ["conv_bias_corrected", "conv_bias_corrected_1"]:  # already taken
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), name))
    corrected = apply_bias_corrections(model, {"conv": [0.5] * 4, "mm": [1.0] * 5})
    nodes = {n.name: n for n in corrected.graph.node}
    assert nodes["conv"].input[2] == "conv_bias_corrected_2" and nodes["add"].input[1] == "mm_bias_corrected"
    values = {name: numpy_helper.to_array(t) for name, t in graph.initializers(corrected).items()}
    np.testing.assert_array_equal(values["conv_bias_corrected_2"], np.full(4, 0.5, np.float32))
    b = numpy_helper.to_array(graph.initializers(model)["b"])
    np.testing.assert_array_equal(values["mm_bias_corrected"], (b + np.float32(1.0)).astype(np.float32))
