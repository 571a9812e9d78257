"""Conformance of activation lowerings, standalone and fused into their producer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, make_model, structured_inputs

RNG = np.random.default_rng(3)
CONV_W = RNG.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.5

ACTIVATIONS = {
    "Relu": ({}, {}),
    "Sigmoid": ({}, {}),
    "Tanh": ({}, {}),
    "HardSigmoid": ({"alpha": 0.2, "beta": 0.4}, {}),
    "HardSwish": ({}, {}),
    "LeakyRelu": ({"alpha": 0.1}, {}),
    "PRelu": ({}, {"slope": RNG.uniform(0.05, 0.5, size=(6, 1, 1)).astype(np.float32)}),
    "Elu": ({}, {}),
    "Elu_alpha": ({"alpha": 0.4}, {}),
    "Selu": ({}, {}),
    "Celu": ({"alpha": 1.5}, {}),
    "Clip": ({}, {"lo": np.array(-0.5, np.float32), "hi": np.array(1.5, np.float32)}),
}
# computed in float inside the int8 partition (XNNPACK has no int8 PRELU, and takes MAXIMUM /
# MINIMUM in float only, so a Clip that is no RELU kind is a float island: ops/activations.py)
FLOAT_IN_INT8 = {"PRelu", "Clip", "Elu", "Elu_alpha", "Selu", "Celu"}  # the ELU family: EXP, MINIMUM too


@pytest.mark.parametrize("op_type", sorted(ACTIVATIONS))
def test_standalone_activation(op_type, tmp_path):
    """On a 4-D graph input (NHWC inside TFLite), so the op's input grid is exactly the
    reference's: a one-step difference upstream would be amplified by steep activations."""
    attrs, constants = ACTIVATIONS[op_type]
    nodes = [helper.make_node(op_type.split("_")[0], ["x", *constants], ["y"], name="act", **attrs)]
    feeds = [{"x": 2.5 * feed["x"]} for feed in structured_inputs(make_model(nodes, {"x": [1, 6, 7, 8]}, ["y"],
                                                                             constants))]
    model = make_model(nodes, {"x": [1, 6, 7, 8]}, ["y"], constants)
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["float_nodes"] == (["act"] if op_type in FLOAT_IN_INT8 else [])


@pytest.mark.parametrize("bounds,fused", [((0.0, 6.0), "RELU6"), ((-1.0, 1.0), "RELU_N1_TO_1"), (None, "RELU")])
def test_activation_fused_into_conv(bounds, fused, tmp_path):
    constants = {"lo": np.array(bounds[0], np.float32), "hi": np.array(bounds[1], np.float32)} if bounds else {}
    act = helper.make_node("Clip" if bounds else "Relu", ["c", *constants], ["y"], name="act")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), act]
    model = make_model(nodes, {"x": [1, 3, 7, 8]}, ["y"], {"w": CONV_W, **constants})
    report = check_conformance(model, tmp_path)
    assert set(report.result["op_histogram"]) == {"CONV_2D", "QUANTIZE", "DEQUANTIZE"}


def test_silu_pattern_and_gelu(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Mul", ["x", "s"], ["silu"], name="silu"),
             helper.make_node("Gelu", ["silu"], ["y"], name="gelu")]
    model = make_model(nodes, {"x": [1, 16, 4, 4]}, ["y"], opset=20)
    report = check_conformance(model, tmp_path, int8_steps=3.0)
    assert report.result["op_histogram"]["GELU"] == 1 and report.result["op_histogram"]["LOGISTIC"] == 1


@pytest.mark.parametrize("with_max", [False, True])
def test_clip_with_computed_bound(with_max, tmp_path):
    """A log-mel frontend's top-dB floor: Clip(x, min=ReduceMax(x) - 2) (openWakeWord's
    melspectrogram), once with a constant max as well. The bound is a scalar tensor, broadcast."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["peak"], name="peak", keepdims=0),
             helper.make_node("Sub", ["peak", "top"], ["floor"], name="floor"),
             helper.make_node("Clip", ["x", "floor", *(["hi"] if with_max else [])], ["y"], name="clip")]
    constants = {"top": np.array(2.0, np.float32), **({"hi": np.array(1.0, np.float32)} if with_max else {})}
    model = make_model(nodes, {"x": [1, 1, 12, 16]}, ["y"], constants, opset=13)
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["MAXIMUM"] == 1
    assert report.result["op_histogram"].get("MINIMUM", 0) == int(with_max)


@pytest.mark.parametrize("op_type,attrs", [("Elu", {}), ("Selu", {}), ("Celu", {"alpha": 0.7})])
def test_elu_family_between_convs_is_one_partition(op_type, attrs, tmp_path):
    """The float island (MINIMUM, EXP, ADD, MAXIMUM, MUL) stays inside XNNPACK's partition."""
    from tests.tflite_harness import delegate_partitions

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["c"], ["e"], name="act", **attrs),
             helper.make_node("Conv", ["e", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = make_model(nodes, {"x": [1, 3, 7, 8]}, ["y"], {"w": CONV_W, "w2": RNG.normal(size=(4, 6, 3, 3)).astype(
        np.float32) * 0.3})
    report = check_conformance(model, tmp_path, int8_steps=3.0)
    assert report.result["float_nodes"] == ["act"] and "EXP" in report.result["op_histogram"]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
