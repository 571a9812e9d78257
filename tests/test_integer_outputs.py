"""Models that answer with integers (an argmax label, top-k indices) next to their scores, as
classifiers are often exported: every target builds them, and the report compares the integers
with FP32's for equality (not SQNR), through the real CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import run_cli

RNG = np.random.default_rng(11)


def classifier_with_labels(path):
    init = lambda name, shape: onnx.numpy_helper.from_array(  # noqa: E731
        (RNG.normal(size=shape) * 0.5).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], name="label_of", axis=-1, keepdims=0),
        helper.make_node("TopK", ["probs", "k"], ["top_probs", "top_classes"], name="top3", axis=-1),
    ]
    graph_proto = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("top_probs", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("top_classes", TensorProto.INT64, [1, 3])],
        [init("w", (8, 3, 3, 3)), init("fc_w", (6, 8)), init("fc_b", (6,)),
         onnx.numpy_helper.from_array(np.array([3], np.int64), "k")])
    onnx.save(helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_integer_outputs_build_and_are_compared_for_equality(target, tmp_path):
    classifier_with_labels(tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", RNG.normal(size=(64, 3, 12, 12)).astype(np.float32))
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--target", target, "--calib",
                     str(tmp_path / "calib.npy"), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = json.loads((out / "report" / "results.json").read_text())["accuracy"]["outputs"]
    for name in ("label", "top_classes"):
        assert "sqnr_db" not in outputs[name]
        assert 0.5 <= outputs[name]["exact_match"] <= 1.0  # measured by run.py / host emulation
    # the label is the logits' argmax: it equals FP32's exactly where the logits' argmax agrees
    assert outputs["label"]["exact_match"] == pytest.approx(outputs["logits"]["argmax_agreement"])
    assert "equal" in (out / "report" / "report.html").read_text()
    if target == "arm-cpu":
        io = json.loads((out / "manifest.json").read_text())["io"]["outputs"]
        assert {o["name"]: o["dtype"] for o in io}["label"] == "int64"
        assert "ARG_MAX x1" in result.stderr + result.stdout
