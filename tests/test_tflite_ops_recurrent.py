"""Conformance of LSTM / GRU / RNN, unrolled over the sequence (edgepipe/recurrent.py) and lowered
to FULLY_CONNECTED, ADD, SPLIT, LOGISTIC, TANH, MUL, CONCATENATION in LiteRT.

fp32 against ONNX Runtime on the model as written (and, where ONNX Runtime has no kernel - layout
1 - against the ONNX package's own expected outputs); int8 within a few output steps of the Q/DQ
simulation in which every per-step tensor is rounded to the grid its calibrated range gives.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepipe import graph, recurrent
from edgepipe.backends.tflite import build_tflite
from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite
from edgepipe.calibrate import calibrate
from edgepipe.errors import UnsupportedOpError
from tests.tflite_harness import (check_conformance, delegate_partitions, make_model, minmax_calibration,
                                  onnx_node_case)

RNG = np.random.default_rng(7)
# int8 error of the recurrence against the step-by-step Q/DQ simulation: each step's kernels
# (LUT sigmoid / tanh, requantizing ADD and MUL) round differently from the simulation by up to
# one step, and the difference in h_{t-1} feeds every later step
RECURRENT_INT8_STEPS = 4.0


def sequence_feeds(shapes: dict, count: int = 8, seed: int = 3) -> list[dict]:
    """Smooth sequences (a random walk per feature) and small random initial states."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, shape in shapes.items():
            value = rng.normal(0, 0.5, shape) if name != "x" else np.cumsum(rng.normal(0, 0.4, shape), axis=0)
            feed[name] = np.asarray(value, np.float32)
        feeds.append(feed)
    return feeds


def recurrent_model(op_type: str, seq=5, batch=1, size=6, hidden=8, direction="forward", states=True,
                    bias=True, outputs=("Y", "Y_h", "Y_c"), peepholes=False, **attrs):
    """One recurrent node with constant W, R, B (and LSTM peepholes P when `peepholes`); initial
    states as graph inputs when `states`."""
    gates = recurrent.GATES[op_type]
    directions = 2 if direction == "bidirectional" else 1
    inits = {"W": RNG.normal(0, 0.4, (directions, gates * hidden, size)).astype(np.float32),
             "R": RNG.normal(0, 0.4, (directions, gates * hidden, hidden)).astype(np.float32)}
    inputs = ["x", "W", "R"]
    if bias:
        inits["B"] = RNG.normal(0, 0.3, (directions, 2 * gates * hidden)).astype(np.float32)
    inputs.append("B" if bias else "")
    shapes = {"x": [seq, batch, size]}
    if states:
        inputs += ["", "h0"] + (["c0"] if op_type == "LSTM" else [])
        state_names = ["h0"] + (["c0"] if op_type == "LSTM" else [])
        for name in state_names:
            if states == "constant":  # initial states as initializers (an exporter's learned h0)
                inits[name] = RNG.normal(0, 0.5, (directions, batch, hidden)).astype(np.float32)
            else:
                shapes[name] = [directions, batch, hidden]
    if peepholes:  # P after sequence_lens, initial_h, initial_c
        inputs += [""] * (7 - len(inputs)) + ["P"]
        inits["P"] = RNG.normal(0, 0.5, (directions, 3 * hidden)).astype(np.float32)
    outputs = [o for o in outputs if op_type == "LSTM" or o != "Y_c"]
    node = helper.make_node(op_type, inputs, outputs, name=f"{op_type.lower()}_node", hidden_size=hidden,
                            direction=direction, **attrs)
    return make_model([node], shapes, outputs, inits), shapes


CASES = {
    "lstm_states": dict(op_type="LSTM"),  # Silero VAD's shape: h and c fed by the caller, Y, Y_h, Y_c out
    "lstm_no_bias_batch2": dict(op_type="LSTM", states=False, bias=False, batch=2),
    "lstm_constant_states": dict(op_type="LSTM", states="constant"),
    "lstm_reverse": dict(op_type="LSTM", direction="reverse", outputs=("Y", "Y_h")),
    "lstm_bidirectional": dict(op_type="LSTM", direction="bidirectional", seq=3),
    # madmom's converted LSTMs: peepholes (P per direction), states fed by the caller
    "lstm_peepholes_bidirectional": dict(op_type="LSTM", peepholes=True, direction="bidirectional", seq=3),
    "gru_states": dict(op_type="GRU"),
    "gru_linear_before_reset": dict(op_type="GRU", linear_before_reset=1),
    "gru_no_state_linear_before_reset": dict(op_type="GRU", states=False, linear_before_reset=1),
    "rnn_bidirectional": dict(op_type="RNN", direction="bidirectional", seq=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recurrent_matches_onnxruntime(case, tmp_path):
    model, shapes = recurrent_model(**CASES[case])
    report = check_conformance(model, tmp_path, sequence_feeds(shapes), int8_steps=RECURRENT_INT8_STEPS)
    histogram = report.result["op_histogram"]
    assert "FULLY_CONNECTED" in histogram and report.result["float_nodes"] == []
    assert histogram.get("LOGISTIC" if CASES[case]["op_type"] != "RNN" else "TANH", 0) >= 3
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1  # one XNNPACK partition


NODE_TESTS = ["test_lstm_defaults", "test_lstm_with_initial_bias", "test_lstm_batchwise", "test_lstm_reverse",
              "test_lstm_bidirectional", "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length",
              "test_gru_batchwise", "test_gru_reverse", "test_gru_bidirectional", "test_simple_rnn_defaults",
              "test_simple_rnn_with_initial_bias", "test_rnn_seq_length", "test_simple_rnn_batchwise",
              "test_simple_rnn_reverse", "test_simple_rnn_bidirectional"]


@pytest.mark.parametrize("name", NODE_TESTS)
def test_onnx_backend_recurrent_cases_with_constant_weights(name, tmp_path):
    """The ONNX package's own LSTM / GRU / RNN node tests, weights as initializers (as exporters
    write them): the fp32 .tflite reproduces the test's expected outputs; int8 within steps of the
    simulation. layout=1 has no ONNX Runtime kernel: the harness then runs the unrolled graph,
    which the expected outputs have just confirmed."""
    model, feed, expected = onnx_node_case(name)
    fp32 = build_tflite(model, minmax_calibration(model, [feed]), tmp_path / "check")
    io = {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in fp32["io"].items()}
    got = run_tflite(tmp_path / "check" / "model.fp32.tflite", io, feed)
    for output, want in expected.items():
        np.testing.assert_allclose(got[output], want, rtol=1e-4, atol=1e-5, err_msg=output)
    layout = any(a.name == "layout" and a.i for a in model.graph.node[0].attribute)
    feeds = [feed] + [{k: (v + RNG.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in feed.items()}
                      for _ in range(3)]
    check_conformance(recurrent.unrolled(model) if layout else model, tmp_path, feeds,
                      int8_steps=RECURRENT_INT8_STEPS, samples=4)


def test_calibration_ranges_every_step(tmp_path):
    """calibrate() runs the unrolled graph: each step's gates, c_t and h_t get a range - one per
    role, the union over the steps - and the LSTM's own outputs keep theirs."""
    from edgepipe.data import load_dataset

    model, shapes = recurrent_model("LSTM", seq=3)
    feeds = sequence_feeds(shapes, count=4)
    np.savez(tmp_path / "calib.npz", **{k: np.stack([f[k] for f in feeds]) for k in shapes})
    specs = {i.name: (tuple(graph.tensor_shape(i)), graph.tensor_dtype(i)) for i in graph.graph_inputs(model)}
    result = calibrate(model, load_dataset(str(tmp_path / "calib.npz"), specs, {}), {"method": "minmax"})
    for step in range(3):
        for part in ("gates", "c", "h"):
            assert f"Y/unrolled/d0t{step}/{part}" in result.tensors
    assert {"Y", "Y_h", "Y_c"} <= set(result.tensors)
    c_steps = [result.tensors[f"Y/unrolled/d0t{step}/c"] for step in range(3)]
    assert len({(c.lo, c.hi) for c in c_steps}) == 1  # one grid for the cell state
    y_c, y = result.tensors["Y_c"], result.tensors["Y"]  # Y_c is the last step's c, Y every step's h
    assert c_steps[0].min <= y_c.min and y_c.max <= c_steps[0].max
    h_steps = result.tensors["Y/unrolled/d0t0/h"]
    assert (h_steps.min, h_steps.max) == pytest.approx((y.min, y.max))


REFUSALS = {
    "computed peepholes": (dict(inputs=["x", "W", "R", "", "", "", "", "Px"]), "peephole weights \\(input P\\) must be a constant"),
    "clip": (dict(clip=3.0), "clip=3.0"),
    "input_forget": (dict(input_forget=1), "input_forget=1"),
    "activations": (dict(activations=["Sigmoid", "Tanh", "Relu"]), "activations"),
    "computed weights": (dict(inputs=["x", "Wx", "R"]), "W, R and B must be constant"),
    "sequence_lens": (dict(inputs=["x", "W", "R", "", "lens"]), "sequence_lens"),
    "too many steps": (dict(steps=1025), "above 1024 steps"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsupported_recurrent_attributes_are_refused_by_node(case, tmp_path):
    attrs, expected = REFUSALS[case]
    attrs = dict(attrs)
    inputs = attrs.pop("inputs", ["x", "W", "R"])
    steps = attrs.pop("steps", 4)
    inits = {"W": np.ones((1, 12, 2), np.float32), "R": np.ones((1, 12, 3), np.float32),
             "P": np.ones((1, 9), np.float32), "lens": np.array([1, 2], np.int32)}
    nodes = [helper.make_node("LSTM", inputs, ["Y"], name="the_lstm", hidden_size=3, **attrs)]
    shapes = {"x": [steps, 2, 2]}
    for computed, shape in (("Wx", [1, 12, 2]), ("Px", [1, 9])):
        if computed in inputs:
            nodes.insert(0, helper.make_node("Identity", [computed + "_in"], [computed], name=computed + "_copy"))
            shapes[computed + "_in"] = shape
    model = make_model(nodes, shapes, ["Y"], {k: v for k, v in inits.items() if k in inputs})
    with pytest.raises(UnsupportedOpError, match=f"node 'the_lstm' \\(LSTM\\).*{expected}"):
        build_tflite(model, None, tmp_path)
    assert not (tmp_path / "model.fp32.tflite").exists()


def test_lstm_in_a_model_with_opset_below_13_uses_split_attributes(tmp_path):
    model, shapes = recurrent_model("LSTM", seq=2)
    model.opset_import[0].version = 11
    model = graph.infer_shapes(model)
    unrolled = recurrent.unrolled(model)
    onnx.checker.check_model(unrolled, full_check=True)
    assert all(len(n.input) == 1 for n in unrolled.graph.node if n.op_type == "Split")
    check_conformance(model, tmp_path, sequence_feeds(shapes), int8_steps=RECURRENT_INT8_STEPS)


@pytest.mark.parametrize("request_key", ["float_nodes", "int16_nodes"])
def test_precision_requests_naming_the_lstm_reach_its_steps(request_key, tmp_path):
    """precision.float_nodes / int16_nodes (and the planner) name the LSTM of the folded model;
    the request applies to every node of its unrolled form, and the output gets closer to ONNX
    Runtime than the all-int8 build."""
    from edgepipe.backends.tflite.runtime import make_interpreter, run_tflite as run
    from tests.tflite_harness import convert, run_onnx

    model, shapes = recurrent_model("LSTM", seq=4)
    feeds = sequence_feeds(shapes)
    errors = {}
    for label, options in (("int8", {}), ("asked", {request_key: {"lstm_node"}})):
        result, _ = convert(model, tmp_path / label, feeds, **options)
        interpreter = make_interpreter(tmp_path / label / "model.tflite", "xnnpack")
        got = [run(tmp_path / label / "model.tflite", result["io"], f, interpreter=interpreter)["Y"] for f in feeds]
        want = [run_onnx(model, f)["Y"] for f in feeds]
        errors[label] = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
        if label == "asked":
            lowered = result["float_nodes" if request_key == "float_nodes" else "int16_nodes"]
            assert any(name.startswith("Y/unrolled/d0t3/") for name in lowered), lowered
            assert "FULLY_CONNECTED" in result["op_histogram"]
    assert errors["asked"] < errors["int8"] * 0.75, errors


@pytest.mark.parametrize(("target", "unrolled"), [("jetson", False), ("arm-cpu", True)])
def test_only_a_target_that_lowers_the_steps_calibrates_them(tmp_path, target, unrolled):
    """TensorRT runs an LSTM whole (and float): a jetson build calibrates the graph as given, not
    the per-step tensors arm-cpu's unrolled lowering needs (a 100-step madmom LSTM spent 85 s
    of its 89 s jetson build calibrating steps nothing read). The LSTM's own outputs keep ranges."""
    import json

    from tests.helpers import run_cli

    model, shapes = recurrent_model("LSTM", seq=3)
    onnx.save(model, tmp_path / "lstm.onnx")
    feeds = sequence_feeds(shapes, count=4)
    np.savez(tmp_path / "calib.npz", **{k: np.stack([f[k] for f in feeds]) for k in shapes})
    proc = run_cli("build", "--model", "lstm.onnx", "--target", target, "--calib", "calib.npz", "--no-host-report",
                   "--out", "bundle", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tensors = json.loads((tmp_path / "bundle" / "calibration.json").read_text())["tensors"]
    assert {"Y", "Y_h", "Y_c"} <= set(tensors)
    assert any("/unrolled/" in name for name in tensors) is unrolled
