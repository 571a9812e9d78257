"""The inference form the simplify stage gives every graph (edgepipe/inference_form.py): Dropout
removed (opset 7-22 forms, any ratio, training_mode absent or constant false), training modes
refused naming the node, a read mask left to the target, Sum / Mean / variadic Max / Min as binary chains. Each
rewrite is checked in ONNX Runtime against the graph as written; the int8 builds of small models
holding these ops are checked through the CLI against ONNX Runtime FP32 on both targets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.errors import UserError
from edgepipe.inference_form import inference_form
from edgepipe.stages.simplify import run_simplify
from tests.helpers import run_cli

RNG = np.random.default_rng(41)


def _model(nodes, inputs: dict, outputs: list[str], initializers: dict | None = None, opset: int = 17,
           dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    proto = helper.make_graph(
        nodes, "inference_form",
        [helper.make_tensor_value_info(name, dtype, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, dtype, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return graph.infer_shapes(model)


def _feeds(model) -> dict:
    return {i.name: RNG.normal(size=[int(d) for d in graph.tensor_shape(i)]).astype(
        graph.tensor_dtype(i)) for i in graph.graph_inputs(model)}


def _same_outputs(original, rewritten, rtol=1e-6) -> None:
    feed = _feeds(original)
    want = graph.make_session(original).run(None, feed)
    got = graph.make_session(rewritten).run(None, feed)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-7)


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("opset,inputs,initializers", [
    (7, ["x"], {}), (10, ["x"], {}),
    (12, ["x", "ratio"], {"ratio": np.array(0.3, np.float32)}),
    (13, ["x", "ratio", "mode"], {"ratio": np.array(0.5, np.float32), "mode": np.array(False)}),
    (22, ["x", "", "mode"], {"mode": np.array(False)}),
])
def test_inference_dropout_is_removed(opset, inputs, initializers):
    attrs = {"ratio": 0.5} if opset < 12 else {}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r", *inputs[1:]], ["d", "mask"], name="drop", **attrs),
             helper.make_node("Neg", ["d"], ["y"], name="neg")]
    model = _model(nodes, {"x": [2, 3]}, ["y"], initializers, opset)
    rewritten, report = inference_form(model)
    assert report["dropouts_removed"] == 1 and _ops(rewritten) == ["Relu", "Neg"]
    assert rewritten.graph.node[1].input[0] == "r"
    _same_outputs(model, rewritten)


def test_dropout_writing_a_graph_output_keeps_the_name():
    """Two Dropouts in a row, the second a graph output: one Identity keeps the interface name."""
    nodes = [helper.make_node("Dropout", ["x"], ["a"], name="d1", ratio=0.2),
             helper.make_node("Dropout", ["a"], ["y"], name="d2", ratio=0.2)]
    model = _model(nodes, {"x": [4]}, ["y"], opset=10)
    rewritten, _ = inference_form(model)
    assert [(n.op_type, list(n.input), list(n.output)) for n in rewritten.graph.node] == [("Identity", ["x"], ["y"])]
    _same_outputs(model, rewritten)


@pytest.mark.parametrize("case,expected", [
    ("true", "its training_mode input 'mode' is true"),
    ("computed", "its training_mode input 'mode' is computed at run time"),
])
def test_training_dropouts_are_refused_naming_the_node(case, expected):
    initializers = {"mode": np.array(True)} if case == "true" else {}
    nodes = [helper.make_node("Dropout", ["x", "", "mode"], ["y"], name="drop")]
    model = _model(nodes, {"x": [2, 3]}, ["y"], initializers, 13)
    if case == "computed":
        model.graph.input.append(helper.make_tensor_value_info("mode", TensorProto.BOOL, []))
    with pytest.raises(UserError, match=f"^node 'drop' \\(Dropout\\): {expected}"):
        inference_form(model)
    kept, report = inference_form(model, strict=False)  # the TFLite rewrite leaves it for the op check
    assert _ops(kept) == ["Dropout"] and report["dropouts_removed"] == 0


def test_dropout_whose_mask_is_read_stays_and_arm_cpu_names_it():
    """At inference the mask is all true: TensorRT's parser runs it; arm-cpu has no kernel for it."""
    from edgepipe.backends.tflite import unsupported_nodes

    model = _model([helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")], {"x": [2, 3]},
                   ["y", "mask"], opset=13)
    kept, report = inference_form(model)
    assert _ops(kept) == ["Dropout"] and report["dropouts_removed"] == 0
    assert unsupported_nodes(kept, "arm-cpu") == [
        ("drop", "Dropout", "its mask output 'mask' is read; export the model for inference without the mask output")]


def test_variadic_ops_before_opset_8_stay():
    """Sum-6 does not broadcast and ONNX Runtime runs no Add-6: left as written (jetson claims it)."""
    model = _model([helper.make_node("Sum", ["a", "b", "c"], ["y"], name="sum6")], {"a": [3], "b": [3], "c": [3]},
                   ["y"], opset=6)
    kept, report = inference_form(model)
    assert _ops(kept) == ["Sum"] and report["variadic_split"] == 0


@pytest.mark.parametrize("op,count,shapes", [
    ("Sum", 1, [[2, 3]]), ("Sum", 2, [[2, 3], [3]]), ("Sum", 4, [[1, 3, 4], [2, 1, 4], [4], [2, 3, 1]]),
    ("Mean", 1, [[5]]), ("Mean", 3, [[2, 3], [1, 3], [2, 1]]),
    ("Max", 1, [[5]]), ("Max", 3, [[2, 3], [3], [2, 1]]), ("Min", 3, [[4], [1, 4], [2, 4]]),
])
def test_variadic_ops_become_binary_chains(op, count, shapes):
    names = [f"x{i}" for i in range(count)]
    nodes = [helper.make_node(op, names, ["v"], name="variadic"), helper.make_node("Neg", ["v"], ["y"], name="neg")]
    model = _model(nodes, dict(zip(names, shapes)), ["y"])
    rewritten, report = inference_form(model)
    binary = {"Sum": "Add", "Mean": "Add", "Max": "Max", "Min": "Min"}[op]
    chain = [binary] * (count - 1) + (["Div"] if op == "Mean" and count > 1 else [])
    assert report["variadic_split"] == 1 and _ops(rewritten) == chain + ["Neg"]
    _same_outputs(model, rewritten)


def test_double_mean_divides_in_double():
    nodes = [helper.make_node("Mean", ["a", "b", "c"], ["m"], name="mean"),
             helper.make_node("Sum", ["m", "a"], ["y"], name="sum")]
    model = _model(nodes, {"a": [3], "b": [3], "c": [3]}, ["y"], dtype=TensorProto.DOUBLE)
    rewritten, _ = inference_form(model)  # ONNX Runtime has no double Mean: numpy is the reference
    count = next(t for t in rewritten.graph.initializer if t.name == "m/count")
    assert numpy_helper.to_array(count).dtype == np.float64
    feed = _feeds(model)
    (got,) = graph.make_session(rewritten).run(None, feed)
    np.testing.assert_allclose(got, (feed["a"] + feed["b"] + feed["c"]) / 3 + feed["a"], rtol=1e-12)


def test_simplify_stage_reports_the_rewrite():
    nodes = [helper.make_node("Dropout", ["x"], ["d"], name="drop", ratio=0.5),
             helper.make_node("Sum", ["d", "x", "x"], ["y"], name="sum")]
    model = _model(nodes, {"x": [1, 4]}, ["y"], opset=9)
    simplified, report = run_simplify(model)
    assert report["inference_form"] == {"dropouts_removed": 1, "variadic_split": 1, "einsums_decomposed": 0}
    assert "Dropout" not in _ops(simplified) and "Sum" not in _ops(simplified)
    _same_outputs(model, simplified)


def test_training_dropout_is_refused_by_the_cli_in_one_line(tmp_path):
    model = _model([helper.make_node("Dropout", ["x", "", "mode"], ["y"], name="drop_train")], {"x": [1, 8]},
                   ["y"], {"mode": np.array(True)}, 13)
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=RNG.normal(size=(4, 8)).astype(np.float32))
    for target in ("arm-cpu", "jetson"):
        out = tmp_path / f"out-{target}"
        result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"),
                         "--target", target, "--out", str(out), "--no-host-report")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: node 'drop_train' (Dropout): its training_mode input 'mode' is true")
        assert not out.exists()


def _variadic_model() -> onnx.ModelProto:
    """Conv branches joined the ways old exports join them: Sum of three (a ResNet-style residual
    of caffe2 exports), Mean of two, a three-way Max, a Dropout before the head."""
    w = {f"w{i}": (RNG.normal(size=(6, 3 if i == 0 else 6, 3, 3)) * 0.3).astype(np.float32) for i in range(4)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["r0", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Sum", ["r0", "c1", "c2"], ["s"], name="sum3"),
             helper.make_node("Mean", ["s", "c1"], ["m"], name="mean2"),
             helper.make_node("Conv", ["m", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Max", ["c3", "m", "c2"], ["mx"], name="max3"),
             helper.make_node("Dropout", ["mx"], ["y", "unused_mask"], name="drop", ratio=0.5)]
    return _model(nodes, {"x": [1, 3, 12, 12]}, ["y"], w, opset=11)


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_int8_build_of_variadic_ops_matches_onnxruntime(target, tmp_path):
    """The model as written (no tool-side edits) through the CLI; the int8 model on held-out
    inputs against ONNX Runtime FP32 on the original file: SQNR from independent references."""
    model = _variadic_model()
    onnx.save(model, tmp_path / "m.onnx")
    calib = RNG.normal(size=(32, 1, 3, 12, 12)).astype(np.float32)
    held = RNG.normal(size=(4, 1, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=calib)
    np.savez(tmp_path / "e.npz", x=held)
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), "--eval",
                     str(tmp_path / "e.npz"), "--target", target, "--out", str(out), "--no-host-report")
    assert result.returncode == 0, result.stderr
    reference = onnx.load(out / "reference.onnx")
    assert not {"Sum", "Mean", "Dropout"} & set(_ops(reference))
    assert _ops(reference).count("Max") == 2
    want = np.concatenate([graph.make_session(model).run(None, {"x": x})[0] for x in held])
    if target == "arm-cpu":
        from edgepipe.backends.tflite.runtime import run_tflite

        io = json.loads((out / "manifest.json").read_text())["io"]
        (name,) = [s["name"] for s in io["outputs"]]
        got = np.concatenate([run_tflite(out / "model.tflite", io, {"x": x})[name] for x in held])
    else:
        session = graph.make_session(onnx.load(out / "model.qdq.onnx"))
        got = np.concatenate([session.run(None, {"x": x})[0] for x in held])
    assert quantmath.sqnr_db(want, got) > 25.0
