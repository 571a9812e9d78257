"""End to end: build_tflite on the demo CNN and the backend's user-facing contract (errors, options)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite, unsupported_nodes
from edgepipe.errors import UnsupportedOpError, UserError
from tests.tflite_harness import (check_conformance, make_interpreter, make_model, minmax_calibration, op_names,
                                  run_onnx, run_tflite, structured_inputs)


@pytest.fixture(scope="module")
def demo_onnx() -> onnx.ModelProto:
    from edgepipe.demo.model import build_demo
    from edgepipe.fold.batchnorm import fold_batchnorm
    from edgepipe.stages.export import export_torch

    model = export_torch(build_demo(), {"image": [1, 3, 32, 32]}, ["logits"], 17)
    return fold_batchnorm(model)[0]


@pytest.fixture(scope="module")
def demo_images() -> np.ndarray:
    from importlib.resources import files

    with np.load(str(files("edgepipe_calibration_sets") / "demo" / "eval.npz")) as data:
        return data["image"][:200]


@pytest.fixture(scope="module")
def demo_build(demo_onnx, demo_images, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo_tflite")
    calibration = minmax_calibration(demo_onnx, [{"image": demo_images[i:i + 1]} for i in range(0, 200, 4)])
    return build_tflite(demo_onnx, calibration, out_dir, {}), out_dir


def test_demo_cnn_int8_agrees_with_onnxruntime(demo_onnx, demo_images, demo_build):
    result, out_dir = demo_build
    assert result["files"] == ["model.tflite", "model.fp32.tflite"]
    assert result["io"]["inputs"][0]["layout"] == "NHWC" and result["io"]["inputs"][0]["shape"] == [1, 32, 32, 3]
    # only the classifier head, which writes the float model output, is float (ops/linear.py)
    assert result["float_nodes"] == ["/classifier/Gemm"] and "TRANSPOSE" not in result["op_histogram"]
    interpreter = make_interpreter(out_dir / "model.tflite", "xnnpack")
    agree = 0
    for image in demo_images:
        feed = {"image": image[None]}
        expected = run_onnx(demo_onnx, feed)["logits"]
        got = run_tflite(out_dir / "model.tflite", result["io"], feed, interpreter=interpreter)["logits"]
        agree += int(np.argmax(expected) == np.argmax(got))
    assert agree / len(demo_images) >= 0.98, f"top-1 agreement {agree / len(demo_images):.3f}"


def test_demo_cnn_int8_is_fully_delegated_to_xnnpack(demo_build):
    result, out_dir = demo_build
    details = make_interpreter(out_dir / "model.tflite", "xnnpack")._get_ops_details()
    delegates = [op for op in details if op["op_name"] == "DELEGATE"]
    outputs = {i for op in details if op["op_name"] != "DELEGATE" for i in op["outputs"]}
    inputs = {i for op in details if op["op_name"] != "DELEGATE" for i in op["inputs"]}
    graph_outputs = outputs - inputs
    assert len(delegates) == 1, [op["op_name"] for op in details]
    assert set(delegates[0]["outputs"]) == graph_outputs  # one partition covering the whole graph
    assert "DELEGATE" not in op_names(out_dir / "model.tflite", "no_delegates")


def test_demo_cnn_fp32_matches_onnxruntime_with_signature(demo_onnx, demo_images, demo_build):
    result, out_dir = demo_build
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out_dir / "model.fp32.tflite"))
    runner = interpreter.get_signature_runner("serving_default")
    image = demo_images[0][None]
    got = runner(image=np.ascontiguousarray(image.transpose(0, 2, 3, 1)))["logits"]
    expected = run_onnx(demo_onnx, {"image": image})["logits"]
    assert np.max(np.abs(got - expected)) <= 1e-5 * max(1.0, np.max(np.abs(expected)))


def _with_unsupported_op() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Acosh", ["r"], ["e"], name="mystery_acosh"),
             helper.make_node("Relu", ["e"], ["y"], name="relu2")]
    return make_model(nodes, {"x": [1, 4]}, ["y"])


def test_unsupported_op_raises_before_any_file(tmp_path):
    model = _with_unsupported_op()
    with pytest.raises(UnsupportedOpError, match="mystery_acosh") as caught:
        build_tflite(model, minmax_calibration(model, structured_inputs(model, 2)), tmp_path / "out",
                     {"target": "rpi5"})
    assert caught.value.op_type == "Acosh" and caught.value.target == "rpi5"  # the caller's target, not a constant
    assert not (tmp_path / "out").exists()
    assert unsupported_nodes(model) == [("mystery_acosh", "Acosh", "no TFLite lowering for this op type")]


def test_missing_calibration_range_is_a_user_error(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], {"x": [1, 4]}, ["y"])
    calibration = minmax_calibration(model, structured_inputs(model, 2))
    del calibration.tensors["y"]
    with pytest.raises(UserError, match="'y'"):
        build_tflite(model, calibration, tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def _conv_relu_pool():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32)})


def test_float_nodes_option_keeps_that_node_float(tmp_path):
    report = check_conformance(_conv_relu_pool(), tmp_path, float_nodes={"conv"})
    histogram = report.result["op_histogram"]
    assert report.result["float_nodes"] == ["conv"]
    # float CONV_2D (Relu fused, float), then QUANTIZE for the int8 MaxPool, DEQUANTIZE at the output
    assert histogram["CONV_2D"] == 1 and histogram["QUANTIZE"] == 1 and histogram["DEQUANTIZE"] == 1
    interpreter = make_interpreter(report.out_dir / "model.tflite", "no_delegates")
    conv = next(op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
    assert conv["operand_types"][0] == np.float32


def test_int8_io_and_keep_layout(tmp_path):
    report = check_conformance(_conv_relu_pool(), tmp_path, int8_io=True, keep_layout=True)
    io = report.result["io"]
    for spec in io["inputs"] + io["outputs"]:
        assert spec["dtype"] == "int8" and spec["quantization"]["scale"] > 0
        assert spec["layout"] == "NCHW" and spec["shape"] == spec["onnx_shape"]
    assert "QUANTIZE" not in report.result["op_histogram"] and "DEQUANTIZE" not in report.result["op_histogram"]
    assert report.result["op_histogram"]["TRANSPOSE"] == 2  # NCHW -> NHWC at the input, back at the output
    names = {d["name"] for d in make_interpreter(report.out_dir / "model.tflite").get_input_details()}
    assert names == {"x"}


def test_without_calibration_only_fp32_is_written(tmp_path):
    result = build_tflite(_conv_relu_pool(), None, tmp_path, {})
    assert result["files"] == ["model.fp32.tflite"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.tflite"]
