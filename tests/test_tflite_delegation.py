"""Full XNNPACK delegation of int8 graphs: one DELEGATE node covering the whole model.

An int8 node XNNPACK rejects falls back to a builtin kernel and splits the graph into several
delegate partitions (a correctness property of the arm-cpu bundle, not a speed number). Speed
is measured in benchmarks/tflite_latency.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from edgepipe.backends.tflite import build_tflite
from edgepipe.fold.batchnorm import fold_batchnorm
from edgepipe.stages.export import export_torch
from edgepipe.stages.simplify import run_simplify
from tests.tflite_harness import (check_conformance, delegate_partitions, make_interpreter, make_model,
                                  minmax_calibration, structured_inputs)

RNG_SLOPES = np.random.default_rng(17)


@pytest.mark.parametrize("magnitude", [1e-5, 1e-7])
def test_int8_hard_swish_of_small_range_input_is_delegated(magnitude, tmp_path):
    """Deep layers of a network can have tiny ranges; ADD(x, 3) -> [0, 6] then has an input/output
    scale ratio XNNPACK rejects (< 2**-10), and at < ~2e-7 the gate's int32 bias 1/2 overflows."""
    nodes = [helper.make_node("HardSwish", ["x"], ["y"], name="act")]
    model = make_model(nodes, {"x": [1, 6, 7, 8]}, ["y"])
    feeds = [{"x": magnitude * 2.5 * feed["x"]} for feed in structured_inputs(model)]
    report = check_conformance(model, tmp_path, feeds)
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("magnitude,ops", [(4.0, {"ADD": 1, "MUL": 2}),
                                           (1e-5, {"DEPTHWISE_CONV_2D": 1, "MUL": 1, "RESHAPE": 2})])
def test_int8_hard_swish_form_depends_on_input_range(magnitude, ops, tmp_path):
    """ADD/MUL/MUL normally (faster); the depthwise gate only where XNNPACK would reject the ADD
    (6 channels: on rows of W * C channels, RESHAPE on both sides). Magnitude 4 goes beyond +-3,
    so both ends of the gate's clip are exercised."""
    nodes = [helper.make_node("HardSwish", ["x"], ["y"], name="act")]
    model = make_model(nodes, {"x": [1, 6, 7, 8]}, ["y"])
    feeds = [{"x": magnitude * feed["x"]} for feed in structured_inputs(model)]
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"] == {"QUANTIZE": 1, **ops, "DEQUANTIZE": 1}
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("shape,ops", [([2, 6, 7, 8], {"DEPTHWISE_CONV_2D": 1, "RESHAPE": 2}),
                                       ([2, 24, 3, 5], {"DEPTHWISE_CONV_2D": 1}), ([2, 5, 9], {"MUL": 1, "ADD": 1})])
def test_int8_hard_sigmoid_is_delegated_without_minimum(shape, ops, tmp_path):
    """XNNPACK has no int8 MINIMUM: the clip to [0, 1] is the saturation of an output grid that
    spans [0, <= 1]. Magnitude 4 drives alpha * x + beta past both ends. At most 16 channels:
    the depthwise conv runs on rows of W * C channels (XNNPACK's int8 kernel wastes most of its
    channel tile on 6 channels), more as they are; batch 2 keeps images apart."""
    nodes = [helper.make_node("HardSigmoid", ["x"], ["y"], name="act", alpha=0.25, beta=0.4)]
    model = make_model(nodes, {"x": shape}, ["y"])
    feeds = [{"x": 4.0 * feed["x"]} for feed in structured_inputs(model)]
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"] == {"QUANTIZE": 1, **ops, "DEQUANTIZE": 1}
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("slope", [
    RNG_SLOPES.uniform(-0.3, 0.6, size=(6, 1, 1)), np.float32(0.25), RNG_SLOPES.uniform(0.5, 1.5, size=(6, 1, 1)),
    np.array([-1.28, -0.5, 0.0, 0.3, 0.9, 1.01]).reshape(6, 1, 1),  # like MTCNN PNet's first PReLU
    RNG_SLOPES.uniform(0.1, 0.3, size=(6, 7, 1))],
    ids=["per-channel", "scalar", "slope-above-1", "negative-slopes", "spatial"])
def test_int8_prelu_is_a_float_island_inside_the_partition(slope, tmp_path):
    """XNNPACK has no int8 PRELU: DEQUANTIZE, float PRELU, QUANTIZE, all delegated, reported as a
    float node; any slope sign or size, spatial slopes too."""
    conv_w = RNG_SLOPES.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.5
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c", "slope"], ["y"], name="prelu")]
    model = make_model(nodes, {"x": [1, 3, 7, 8]}, ["y"], {"w": conv_w, "slope": np.asarray(slope, np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["prelu"]
    assert report.result["op_histogram"]["PRELU"] == 1 and "DEPTHWISE_CONV_2D" not in report.result["op_histogram"]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("channels", [6, 24])
def test_prelu_runs_on_rows_of_w_times_c_channels_where_xnnpack_is_faster(channels, tmp_path):
    """A per-channel PRelu on NHWC: on the [N, H, W * C] view (slope repeated W times, RESHAPE each
    side) in the int8 model's float island always, in the fp32 model at up to 16 channels (the
    forms XNNPACK runs faster, benchmarks/xnnpack_op_speed.py); same values."""
    conv_w = RNG_SLOPES.normal(size=(channels, 3, 3, 3)).astype(np.float32) * 0.5
    slope = np.linspace(-0.6, 1.3, channels, dtype=np.float32).reshape(channels, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
             helper.make_node("Conv", ["p", "w2"], ["y"], name="head")]
    model = make_model(nodes, {"x": [1, 3, 9, 8]}, ["y"], {
        "w": conv_w, "slope": slope, "w2": RNG_SLOPES.normal(size=(4, channels, 1, 1)).astype(np.float32) * 0.3})
    report = check_conformance(model, tmp_path)
    for name, rows in (("model.tflite", True), ("model.fp32.tflite", channels <= 16)):
        interpreter = make_interpreter(report.out_dir / name, "reference")
        shapes = {d["index"]: list(d["shape"]) for d in interpreter.get_tensor_details()}
        (prelu,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "PRELU"]
        assert shapes[prelu["inputs"][0]] == ([1, 9, 8 * channels] if rows else [1, 9, 8, channels]), name
        assert len(delegate_partitions(report.out_dir / name)) == 1, name


@pytest.mark.parametrize("slope_high", [0.6, 1.3], ids=["below-1", "above-1"])
def test_int8_prelu_after_dense_layer_is_delegated(slope_high, tmp_path):
    """A PReLU on [N, C] (MTCNN's heads after a Linear): the float island on [N, C] as it is."""
    weights = RNG_SLOPES.normal(size=(12, 10)).astype(np.float32) * 0.4
    slope = RNG_SLOPES.uniform(-0.2, slope_high, size=(10,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
             helper.make_node("PRelu", ["h", "slope"], ["y"], name="prelu")]
    model = make_model(nodes, {"x": [2, 12]}, ["y"], {"w": weights, "slope": slope})
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["prelu"]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("gate_first", [False, True], ids=["image-first", "gate-first"])
def test_squeeze_excite_gate_multiplies_in_float_inside_the_partition(gate_first, tmp_path):
    """x * hardsigmoid(conv(mean(x))): the Mul of the image by its [N, C, 1, 1] gate is a float
    island (XNNPACK's int8 broadcast MUL is slower than DEQUANTIZE, MUL, QUANTIZE), reported as a
    float node, inside the one partition; a Mul of two images stays int8."""
    channels = 8
    operands = ["gate", "x"] if gate_first else ["x", "gate"]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"], name="squeeze"),
             helper.make_node("Conv", ["pooled", "w"], ["excite"], name="excite"),
             helper.make_node("HardSigmoid", ["excite"], ["gate"], name="gate_act", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", operands, ["scaled"], name="gate_mul"),
             helper.make_node("Mul", ["scaled", "x"], ["y"], name="image_mul")]
    model = make_model(nodes, {"x": [1, channels, 5, 6]}, ["y"],
                       {"w": RNG_SLOPES.normal(size=(channels, channels, 1, 1)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["gate_mul"]
    assert report.result["op_histogram"]["MUL"] == 2
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_same_average_pool_stays_in_the_partition(tmp_path):
    """TFLite SAME average pooling (pads excluded, as ONNX count_include_pad=0): float inside the
    int8 partition, since XNNPACK has no int8 AVERAGE_POOL_2D."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], auto_pad="SAME_UPPER")]
    model = make_model(nodes, {"x": [1, 3, 7, 8]}, ["y"], {"w": RNG_SLOPES.normal(size=(4, 3, 3, 3)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["float_nodes"] == ["pool"] and report.result["op_histogram"]["AVERAGE_POOL_2D"] == 1
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("op_type", ["Add", "Sub"])
def test_int8_add_of_a_tiny_constant_stays_delegated(op_type, tmp_path):
    """A learned bias of ~1e-7 (PP-OCR's hardswish-like x * w + b) has its own int8 grid 1e5 times
    finer than the activations': XNNPACK refuses such an ADD unless the constant is re-gridded."""
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"], name="scale"),
             helper.make_node(op_type, ["m", "b"], ["y"], name="shift")]
    model = make_model(nodes, {"x": [1, 6, 7, 8]}, ["y"], {"w": np.array([0.8], np.float32),
                                                          "b": np.array([3e-7], np.float32)})
    report = check_conformance(model, tmp_path)
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def _mobilenet_like(settle_batchnorm: bool) -> nn.Module:
    """Stride-2 convs (PyTorch symmetric pads: explicit PAD in TFLite), depthwise + pointwise,
    hardswish, a residual add, global pool and a linear head. With default BatchNorm statistics
    activations shrink layer after layer (tiny ranges deep in the net); settled statistics keep
    them near unit scale as in a trained model."""
    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU6(), nn.Conv2d(channels, channels, 1),
                                      nn.BatchNorm2d(channels))

        def forward(self, x):
            return x + self.body(x)

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish()]

    layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
    layers += block(16, 24, 2) + [Residual(24)] + block(24, 32, 2) + block(32, 48, 1) + block(48, 64, 2)
    module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    if settle_batchnorm:
        module.train()
        with torch.no_grad():
            for _ in range(3):
                module(torch.randn(8, 3, 64, 64))
    return module.eval()


def _build(module: nn.Module, shape, out_dir):
    exported = export_torch(module, {"image": shape}, ["logits"], 17)
    model = fold_batchnorm(run_simplify(exported, check=False)[0])[0]
    calibration = minmax_calibration(model, structured_inputs(model, 4))
    return build_tflite(model, calibration, out_dir, {})


@pytest.mark.parametrize("settle", [False, True], ids=["default-bn", "settled-bn"])
def test_mobilenet_like_int8_is_one_partition(settle, tmp_path):
    result = _build(_mobilenet_like(settle), [1, 3, 64, 64], tmp_path)
    histogram = result["op_histogram"]
    assert histogram.get("PAD", 0) >= 1 and histogram["DEPTHWISE_CONV_2D"] >= 4
    assert result["float_nodes"] == ["/30/Gemm"]  # the head writing the float model output (ops/linear.py)
    assert len(delegate_partitions(tmp_path / "model.tflite")) == 1
    assert len(delegate_partitions(tmp_path / "model.fp32.tflite")) == 1


def test_demo_int8_is_one_partition(tmp_path):
    from edgepipe.demo.model import build_demo

    _build(build_demo(), [1, 3, 32, 32], tmp_path)
    assert len(delegate_partitions(tmp_path / "model.tflite")) == 1
    interpreter = make_interpreter(tmp_path / "model.tflite", "xnnpack")
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.float32))
    interpreter.invoke()


@pytest.mark.parametrize("gain", [300.0, 3e5], ids=["two-steps", "three-steps"])
def test_int8_concat_of_sigmoid_and_wide_tensor_stays_in_the_partition(gain, tmp_path):
    """YOLOv8's output: Concat(box coordinates in pixels, sigmoid scores). The scores' 1/256 grid
    is requantized to the output's grid, a scale ratio below XNNPACK's 1/256 limit for an int8
    QUANTIZE: it is done in equal steps inside that limit instead of on the builtin kernel."""
    nodes = [helper.make_node("Mul", ["x", "gain"], ["boxes"], name="boxes"),
             helper.make_node("Sigmoid", ["x"], ["scores"], name="scores"),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], name="concat", axis=1)]
    model = make_model(nodes, {"x": [1, 4, 50]}, ["y"], {"gain": np.float32(gain)})
    # int8 output Concat asked for (by default, backend.float_output_concats keeps this one float)
    report = check_conformance(model, tmp_path, float_output_concats=False)
    steps = {300.0: 2, 3e5: 3}[gain]
    assert report.result["op_histogram"]["QUANTIZE"] == 1 + steps  # the input's, then the steps
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_int8_standalone_relu_is_a_saturating_quantize(tmp_path):
    """A Relu its producer cannot fuse (the conv output also feeds an Add): XNNPACK leaves an int8
    RELU on the builtin kernel, while a QUANTIZE onto the Relu's [0, max] grid gives the same values
    and stays in the partition."""
    conv_w = RNG_SLOPES.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.5
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["c", "r"], ["y"], name="add")]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 7, 8]}, ["y"], {"w": conv_w}), tmp_path)
    assert "RELU" not in report.result["op_histogram"] and report.result["op_histogram"]["QUANTIZE"] == 2
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("source,target", [((1 / 256, -128), (1.26, -128)), ((0.9, 3), (1e-4, -20)),
                                           ((0.05, 0), (0.06, 10))], ids=["down", "up", "one-step"])
def test_stepped_grids_stay_within_the_ratio_and_cover_the_narrower_grid(source, target):
    from edgepipe.backends.tflite.lower import REQUANT_RATIO
    from edgepipe.quantmath import stepped_grids

    grids = stepped_grids(source, target, REQUANT_RATIO)
    assert grids[-1] == target
    scales = [source[0]] + [scale for scale, _ in grids]
    assert all(REQUANT_RATIO[0] <= a / b <= REQUANT_RATIO[1] for a, b in zip(scales, scales[1:]))
    narrow = min(source, target, key=lambda grid: grid[0])
    low, high = narrow[0] * (-128 - narrow[1]), narrow[0] * (127 - narrow[1])
    for scale, zero in grids[:-1]:  # every intermediate grid holds what the narrower one holds
        assert scale * (-128 - zero) <= low + scale / 2 and scale * (127 - zero) >= high - scale / 2
