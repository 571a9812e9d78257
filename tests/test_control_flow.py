"""Control flow on the TensorRT targets: Loop / Scan / If accepted where TensorRT's ONNX parser
imports them (onnx-tensorrt operators.md, TensorRT 10), the main graph calibrated and quantized,
the subgraphs left float; arm-cpu refuses them naming the node.

The built Q/DQ ONNX is judged against ONNX Runtime FP32 on the model as written (SQNR), and the
bundle's reference.onnx against the same run (exact up to float re-association)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgepipe import graph
from edgepipe.targets import load_target
from tests.branch_models import conv_loop_model, data_if_model, loop_without_trip_count_model
from tests.helpers import run_cli, sqnr_db

TENSORRT_TARGETS = ("jetson", "desktop-gpu")


def _problems(target: str, model) -> dict[str, str]:
    return {node: reason for node, _, reason in load_target(target).supports(model)}


@pytest.mark.parametrize("target", TENSORRT_TARGETS)
def test_tensorrt_targets_take_loops_and_data_dependent_ifs(target):
    assert _problems(target, conv_loop_model()) == {}
    assert _problems(target, data_if_model()) == {}


def test_arm_cpu_still_refuses_control_flow_by_node():
    assert "control flow (Loop)" in _problems("arm-cpu", conv_loop_model())["smooth_loop"]
    assert "control flow (If)" in _problems("arm-cpu", data_if_model())["rate_switch"]


def _if_with_shared_output_name() -> onnx.ModelProto:
    model = data_if_model()
    switch = next(n for n in model.graph.node if n.op_type == "If")
    else_branch = next(a.g for a in switch.attribute if a.name == "else_branch")
    else_branch.node[-1].output[0] = else_branch.output[0].name = "y16"
    return model


def _sequence_inside_loop() -> onnx.ModelProto:
    model = conv_loop_model()
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    body.node.append(helper.make_node("SequenceEmpty", [], ["unused_sequence"], name="empty_sequence"))
    return model


def test_what_the_parser_cannot_import_is_refused_naming_the_node():
    problems = _problems("jetson", loop_without_trip_count_model())
    assert "trip count" in problems["smooth_loop"]
    assert "different names" in _problems("jetson", _if_with_shared_output_name())["rate_switch"]
    assert "smooth_loop/body/empty_sequence" in _problems("jetson", _sequence_inside_loop())
    scan8 = helper.make_model(helper.make_graph(
        [helper.make_node("Scan", ["", "s", "x"], ["s_out"], name="scan8", num_scan_inputs=1,
                          body=helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "b",
                                                 [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])
                                                  for n in ("a", "b")],
                                                 [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])]))],
        "scan8", [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2]),
                  helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 2])]), opset_imports=[helper.make_opsetid("", 8)])
    assert "Scan (opset 9+)" in _problems("jetson", scan8)["scan8"]


def test_subgraph_reads_of_main_graph_tensors_are_consumers_and_names():
    model = conv_loop_model()
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    assert graph.outer_scope_reads(loop) == {"feat", "pre"}
    consumers = graph.consumers(model)
    assert [n.name for n in consumers["pre"]] == ["bn_in", "smooth_loop"]
    assert {"decayed", "mixed", "state_in"} <= graph.taken_names(model)  # body names: never reused


def _ort(model_or_path, feed):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)


def _build(tmp_path, model, target, *extra):
    onnx.save(model, str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(3)
    name = graph.graph_inputs(model)[0].name
    shape = [d if isinstance(d, int) else 1 for d in graph.tensor_shape(graph.graph_inputs(model)[0])]
    np.savez(tmp_path / "calib.npz", **{name: rng.normal(size=(24, *shape[1:])).astype(np.float32)})
    np.savez(tmp_path / "eval.npz", **{name: rng.normal(size=(6, *shape[1:])).astype(np.float32)})
    return run_cli("build", "--model", "model.onnx", "--target", target, "--calib", "calib.npz", "--eval", "eval.npz",
                   "--no-host-report", "--out", "bundle", *extra, cwd=tmp_path)


def test_conv_loop_conv_builds_for_jetson_with_the_loop_float(tmp_path):
    model = conv_loop_model()
    result = _build(tmp_path, model, "jetson")
    assert result.returncode == 0, result.stderr
    assert "float (control flow, FP16 on the device): smooth_loop" in result.stdout
    bundle = tmp_path / "bundle"
    qdq = onnx.load(str(bundle / "model.qdq.onnx"))
    loop = next(n for n in qdq.graph.node if n.op_type == "Loop")
    assert not {n.op_type for n in loop.attribute[0].g.node} & {"QuantizeLinear", "DequantizeLinear"}
    producers = graph.producers(qdq)  # what the body reads by name is still the float main-graph tensor
    assert {producers[name].op_type for name in graph.outer_scope_reads(loop)} <= {"Relu", "Conv"}
    quantized = {n.name for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert {"feat_QuantizeLinear", "smoothed_QuantizeLinear"} <= quantized  # around the loop: int8 convs
    report = json.loads((bundle / "manifest.json").read_text())["precision"]["qdq"]
    assert report["float_nodes"]["smooth_loop"].startswith("control flow (Loop)")
    assert {"conv_in", "conv_out", "conv_skip"} <= set(report["quantized_nodes"])
    x = np.load(tmp_path / "eval.npz")["x"]
    for sample in x:
        feed = {"x": sample[None]}
        expected = _ort(model, feed)
        reference = _ort(bundle / "reference.onnx", feed)
        int8 = _ort(bundle / "model.qdq.onnx", feed)
        for want, ref, got in zip(expected, reference, int8):
            np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)  # fold kept what the body reads
            assert sqnr_db(want, got) > 25.0


def test_data_dependent_if_builds_for_jetson_and_runs_both_branches(tmp_path):
    model = data_if_model()
    onnx.save(model, str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(4)
    calib = rng.normal(size=(24, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib, sr=np.full((24,), 16000, np.int64))
    result = run_cli("build", "--model", "model.onnx", "--target", "jetson", "--calib", "calib.npz",
                     "--no-host-report", "--out", "bundle", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "float (control flow, FP16 on the device): rate_switch" in result.stdout
    for x in (np.full((1, 8), 0.5, np.float32), np.full((1, 8), -0.5, np.float32)):  # then / else
        for rate in (16000, 8000):
            feed = {"x": x, "sr": np.array(rate, np.int64)}
            np.testing.assert_allclose(_ort(tmp_path / "bundle" / "model.qdq.onnx", feed)[0], _ort(model, feed)[0],
                                       rtol=1e-6, atol=1e-6)  # nothing quantized outside the branches


def test_arm_cpu_refuses_the_loop_in_one_line(tmp_path):
    """A while loop (no trip count) cannot be unrolled (edgepipe/loops.py; conv_loop_model's
    constant 3 steps can, and build on arm-cpu): refused naming the node."""
    result = _build(tmp_path, loop_without_trip_count_model(), "arm-cpu")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: node 'smooth_loop' (Loop) is not supported by target 'arm-cpu'")
    assert not (tmp_path / "bundle").exists()
