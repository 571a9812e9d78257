"""Op support keyed by (domain, op type, opset) on every target: custom domains and control flow
refused by name, subgraphs inspected, and the refusal comes before any data is read."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.backends.support import OpKey, OpTable, walk_nodes
from edgepipe.backends.tflite import build_tflite, unsupported_nodes
from edgepipe.errors import UnsupportedOpError
from edgepipe.targets import load_target
from tests.helpers import run_cli
from tests.tflite_harness import make_model

TARGETS = ["arm-cpu", "jetson", "desktop-gpu"]


def custom_relu_model() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="my_relu", domain="com.example")
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def lstm_inside_if_model() -> onnx.ModelProto:
    """An RNN hidden in a branch: [2, 1, 3] sequence, LSTM in then_branch, Identity in else_branch."""
    def info(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["a", "b"])

    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], name="lstm_in_branch", hidden_size=4)
    then_branch = helper.make_graph([lstm, helper.make_node("Flatten", ["Y"], ["t"], name="flat_t")], "then", [],
                                    [info("t")])
    else_branch = helper.make_graph([helper.make_node("Identity", ["flat"], ["e"], name="same")], "else", [],
                                    [info("e")])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="total", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["positive"], name="is_positive"),
             helper.make_node("Flatten", ["x"], ["flat"], name="flat"),
             helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then_branch,
                              else_branch=else_branch)]
    initializers = [numpy_helper.from_array(np.zeros((1, 16, 3), np.float32), "W"),
                    numpy_helper.from_array(np.zeros((1, 16, 4), np.float32), "R"),
                    numpy_helper.from_array(np.array(0, np.float32), "zero")]
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 3])],
                              [info("y")], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_table_keys_on_domain_and_opset_range():
    table = OpTable("test lowering")
    table.add(OpKey("", "Softmax", 1, 12), "legacy")
    table.add(OpKey("", "Softmax", 13), "modern")
    table.add(OpKey("com.example", "Relu"), "custom")
    assert table.find("", "Softmax", 11) == "legacy" and table.find("ai.onnx", "Softmax", 13) == "modern"
    assert table.find("", "Relu", 13) is None and table.find("com.example", "Relu", 1) == "custom"
    with pytest.raises(ValueError, match="overlaps"):
        table.add(OpKey("", "Softmax", 12, 14), "clash")


def test_walk_nodes_enters_subgraphs():
    names = [name for name, _, _ in walk_nodes(lstm_inside_if_model())]
    assert "branch/then_branch/lstm_in_branch" in names and "branch/else_branch/same" in names


@pytest.mark.parametrize("target", TARGETS)
def test_custom_domain_is_refused_by_qualified_name(target):
    ((node, op_type, reason),) = load_target(target).supports(custom_relu_model())
    assert (node, op_type) == ("my_relu", "com.example::Relu") and "custom domain 'com.example'" in reason


def test_control_flow_is_refused_on_arm_cpu():
    problems = {node: reason for node, _, reason in load_target("arm-cpu").supports(lstm_inside_if_model())}
    assert "control flow (If)" in problems["branch"]
    assert "branch/then_branch/lstm_in_branch" not in problems  # the LSTM has a lowering: only the If is refused


@pytest.mark.parametrize("target", ["jetson", "desktop-gpu"])
def test_tensorrt_targets_take_control_flow_and_check_inside_it(target):
    """TensorRT's parser imports If / Loop / Scan; what a branch holds is still checked against the table."""
    assert load_target(target).supports(lstm_inside_if_model()) == []
    model = lstm_inside_if_model()
    then_branch = next(a.g for a in model.graph.node[-1].attribute if a.name == "then_branch")
    then_branch.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert [name for name, _, _ in load_target(target).supports(model)] == ["branch/then_branch/lstm_in_branch"]


def test_opset_outside_the_registered_range_is_refused():
    """Gelu exists from opset 20; a Gelu node in an opset-18 model is not that operator."""
    node = helper.make_node("Gelu", ["x"], ["y"], name="early_gelu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ((name, _, reason),) = unsupported_nodes(model)
    assert name == "early_gelu" and "opset 18" in reason and "Gelu (opset 20+)" in reason
    assert not unsupported_nodes(make_model([node], {"x": [1, 4]}, ["y"], opset=20))


def test_inspect_looks_inside_subgraphs_for_every_target(tmp_path):
    path = tmp_path / "branchy.onnx"
    onnx.save(lstm_inside_if_model(), str(path))
    result = run_cli("inspect", str(path), "--target", "jetson", "--target", "arm-cpu", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["op_histogram"]["LSTM"] == 1  # counted inside the branch
    assert any(item["node"] == "branch" and item["op_type"] == "If" for item in info["unsupported"]["arm-cpu"])
    assert info["unsupported"]["jetson"] == []  # TensorRT's parser imports the If and the LSTM inside it
    text = run_cli("inspect", str(path), "--target", "arm-cpu", cwd=tmp_path).stdout
    # the Greater deciding the branch lowers (ops/logical.py); the If does not
    assert "arm-cpu: 1 unsupported node(s)" in text and "branch (If): control flow (If)" in text


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_unsupported_model_is_refused_before_any_data_is_read(target, tmp_path):
    """No --calib at all, or one that does not exist: the op is what the user must hear about."""
    path = tmp_path / "custom.onnx"
    onnx.save(custom_relu_model(), str(path))
    for extra in ([], ["--calib", str(tmp_path / "missing.npz")]):
        result = run_cli("build", "--model", str(path), "--target", target, "--out", str(tmp_path / "out"), *extra,
                         cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "my_relu" in result.stderr and "com.example::Relu" in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()


def test_a_profile_is_named_in_its_own_refusals(tmp_path):
    """rpi5 derives from arm-cpu: the refusal names the target the user asked for."""
    ((_, _, reason),) = load_target("rpi5").supports(custom_relu_model())
    assert "on rpi5" in reason
    model = make_model([helper.make_node("Acosh", ["x"], ["y"], name="acosh")], {"x": [1, 4]}, ["y"])
    with pytest.raises(UnsupportedOpError, match="target 'rpi5'"):
        build_tflite(model, None, tmp_path, {"target": "rpi5"})


def test_a_plugin_without_its_own_table_accepts_standard_onnx_only():
    """A third-party target that declares no operators still refuses what no runtime can take."""
    from edgepipe.targets import Target

    class BareTarget(Target):
        name = "bare-npu"

    target = BareTarget()
    assert not target.supports(make_model([helper.make_node("Erf", ["x"], ["y"], name="erf")], {"x": [1, 4]}, ["y"]))
    assert target.supports(custom_relu_model())[0][1] == "com.example::Relu"
    assert "control flow (If)" in dict((n, r) for n, _, r in target.supports(lstm_inside_if_model()))["branch"]
