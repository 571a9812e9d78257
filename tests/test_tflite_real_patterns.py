"""Patterns found in real third-party models (benchmarks/tflite_real_models.py), rebuilt as tiny
ONNX graphs so the test suite needs neither the network nor the wheels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepipe import quantmath
from tests.helpers import run_cli
from tests.tflite_harness import check_conformance, make_interpreter, make_model


def test_per_channel_min_ratio_floors_dead_channels_only():
    weights = np.array([[1.0, -0.5], [1e-34, 0.0], [0.0, 0.0], [0.25, 0.1]], np.float32)
    q, scales = quantmath.per_channel_symmetric(weights, 0, min_ratio=2.0**-20)
    assert np.allclose(scales[[0, 3]], [1 / 127, 0.25 / 127])  # live channels unchanged
    assert np.allclose(scales[[1, 2]], 2.0**-20 / 127)  # dead channels floored
    assert not q[1].any() and not q[2].any()
    _, plain = quantmath.per_channel_symmetric(weights, 0)  # default: no floor (TensorRT, QAT)
    assert plain[1] < 1e-13  # only the absolute 1e-12 floor


@pytest.mark.parametrize("group", [1, 6], ids=["conv", "depthwise"])
def test_conv_with_dead_channels(group, tmp_path):
    """PP-OCRv4 det/rec (after BN folding) have 1x1 and depthwise 5x5 convs whose channels have
    |w| ~ 1e-34..1e-10 (or exactly 0 with a bias): per-channel scales amax/127 made the bias scale
    underflow to the 1e-12 floor, and the int8 build failed validation."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(6, 6 // group, 3, 3)).astype(np.float32) * 0.3
    weights[1] *= 1e-34
    weights[3] = 0.0
    weights[4] *= 1e-12
    bias = rng.normal(size=6).astype(np.float32)
    bias[3] = 0.5  # a dead channel still outputs its bias
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=group, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [1, 6, 8, 8]}, ["y"], {"w": weights, "b": bias})
    report = check_conformance(model, tmp_path)
    interpreter = make_interpreter(report.out_dir / "model.tflite", "reference")
    bias_scales = [d["quantization_parameters"]["scales"] for d in interpreter.get_tensor_details()
                   if d["name"].endswith(";bias")]
    assert bias_scales and all(np.all(s > 1e-12) for s in bias_scales)
    assert report.int8_steps["xnnpack"] <= 2.0


CONV3 = np.random.default_rng(11).normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.3
ZERO_BIAS = np.zeros(4, np.float32)


def _residual(weights):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x"], ["y"], name="add")]
    return make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], {"w": weights, "b": ZERO_BIAS})


NUMERIC_CASES = {
    # the zero-initialised last BatchNorm gamma of ResNet / RegNet blocks, after folding
    "all-zero-conv-residual": lambda: _residual(np.zeros_like(CONV3)),
    "near-zero-conv-residual": lambda: _residual(CONV3 * 1e-30),
    "small-conv-residual": lambda: _residual(CONV3 * 1e-5),
    "zero-range-activation": lambda: make_model(  # a Relu that never fires feeds a conv
        [helper.make_node("Conv", ["x", "w", "neg"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w", "b"], ["y"], name="conv2", pads=[1, 1, 1, 1])],
        {"x": [1, 4, 6, 6]}, ["y"], {"w": CONV3, "neg": np.full(4, -100, np.float32), "b": ZERO_BIAS}),
    "all-zero-gemm": lambda: make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                                        {"x": [2, 8]}, ["y"], {"w": np.zeros((5, 8), np.float32),
                                                               "b": np.zeros(5, np.float32)}),
    "all-zero-matmul-residual": lambda: make_model(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "x"], ["y"], name="add")],
        {"x": [1, 3, 8]}, ["y"], {"w": np.zeros((8, 8), np.float32)}),
    "constant-tensor": lambda: make_model(  # x * 0 + 1: a constant computed at run time, and a constant output
        [helper.make_node("Mul", ["x", "zero"], ["z"], name="mul_zero"),
         helper.make_node("Add", ["z", "one"], ["y"], name="add_one"),
         helper.make_node("Identity", ["table"], ["k"], name="constant_output")],
        {"x": [1, 4, 5, 5]}, ["y", "k"], {"zero": np.zeros(1, np.float32), "one": np.ones(1, np.float32),
                                          "table": np.arange(3, dtype=np.float32)}),
}


@pytest.mark.parametrize("case", sorted(NUMERIC_CASES))
def test_degenerate_numerics_build_valid_files(case, tmp_path):
    """All-zero / near-zero weights and zero-range activations: bias scales stay input x weight
    scale (the validator rule that failed with a traceback), every resolver runs the file, and
    the outputs match ONNX Runtime."""
    report = check_conformance(NUMERIC_CASES[case](), tmp_path)
    interpreter = make_interpreter(report.out_dir / "model.tflite", "reference")
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        assert np.all(scales > 1e-11) if scales.size else True, detail["name"]  # far from the 1e-12 floor


def test_zero_gamma_batchnorm_block_builds_through_the_cli(tmp_path):
    """Conv -> BatchNorm(gamma = 0) -> Add -> Relu as exported (unfolded), through `edgepipe build`."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Add", ["n", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [1, 4, 8, 8]}, ["y"],
                       {"w": CONV3, "gamma": np.zeros(4, np.float32), "beta": np.zeros(4, np.float32),
                        "mean": rng.normal(size=4).astype(np.float32), "var": np.ones(4, np.float32)})
    onnx.save(model, str(tmp_path / "block.onnx"))
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(8, 4, 8, 8)).astype(np.float32))
    result = run_cli("build", "--model", str(tmp_path / "block.onnx"), "--target", "arm-cpu", "--calib",
                     str(tmp_path / "calib.npz"), "--out", str(tmp_path / "out"), "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.tflite").stat().st_size > 0


def test_one_element_constants_where_onnx_expects_scalars(tmp_path):
    """Exporters write Clip bounds, Pow exponents, Pad values and GELU's constants as shape-[1]
    tensors; numpy 2 refuses float() on them (a TypeError traceback before)."""
    one = lambda value: np.array([value], np.float32)  # noqa: E731
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("Pow", ["c", "two"], ["p"], name="square"),
             helper.make_node("Mul", ["x", "inv_sqrt2"], ["d"], name="scale"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Pad", ["e", "pads", "fill"], ["f"], name="pad"),
             helper.make_node("Add", ["f", "p"], ["y"], name="add")]
    inits = {"lo": one(-0.5), "hi": one(0.7), "two": one(2.0), "inv_sqrt2": one(0.70710677),
             "pads": np.zeros(8, np.int64), "fill": one(0.0)}
    check_conformance(make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits), tmp_path)


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_ceil_pool_erf_gelu_layer_norm_build_through_the_cli(target, tmp_path):
    """The ops real models needed (MTCNN's ceil-mode pooling, ConvNeXt/ViT's Erf GELU, LayerNorm
    with its unused training outputs named) through `edgepipe build`, as an exporter writes them."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("Div", ["p", "sqrt2"], ["d"], name="gelu_div"),
             helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="gelu_add"),
             helper.make_node("Mul", ["p", "a"], ["m"], name="gelu_mul"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="gelu_half"),
             helper.make_node("LayerNormalization", ["g", "gamma", "beta"], ["y", "mean", "inv_std"], name="ln")]
    inits = {"w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.4, "sqrt2": np.array(np.sqrt(2), np.float32),
             "one": np.array(1, np.float32), "half": np.array(0.5, np.float32),
             "gamma": np.ones(4, np.float32), "beta": np.zeros(4, np.float32)}
    onnx.save(make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits), str(tmp_path / "model.onnx"))  # pool: 8 -> 4, ceil
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(8, 3, 8, 8)).astype(np.float32))
    result = run_cli("build", "--model", str(tmp_path / "model.onnx"), "--target", target, "--calib",
                     str(tmp_path / "calib.npz"), "--out", str(tmp_path / "out"), "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / ("model.tflite" if target == "arm-cpu" else "model.qdq.onnx")).stat().st_size > 0
