"""Conformance of elementwise math (Neg, Abs, Exp, Log, Floor, Ceil, Round, Reciprocal, Softplus, Mish), GlobalMaxPool,
DepthToSpace / SpaceToDepth and unfolded BatchNormalization."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import unsupported_nodes
from tests.tflite_harness import (assert_onnx_case_fp32, check_conformance, delegate_partitions, make_model, onnx_node_case,
                                  structured_inputs)

RNG = np.random.default_rng(29)

UNARY = {  # op: (opset, input transform: keeps Log / Reciprocal away from 0, spreads the rest)
    "Neg": (17, lambda x: 3 * x), "Abs": (17, lambda x: 3 * x), "Exp": (17, lambda x: 2 * x),
    "Log": (17, lambda x: np.abs(x) + 0.2), "Reciprocal": (17, lambda x: np.abs(x) + 0.2),
    "Softplus": (17, lambda x: 40 * x), "Mish": (18, lambda x: 10 * x),
    "Sign": (17, lambda x: 3 * x), "Floor": (17, lambda x: 5 * x), "Ceil": (17, lambda x: 5 * x), "Round": (17, lambda x: 5 * x),
}


@pytest.mark.parametrize("op_type", sorted(UNARY))
def test_unary(op_type, tmp_path):
    opset, transform = UNARY[op_type]
    model = make_model([helper.make_node(op_type, ["x"], ["y"], name="op")], {"x": [1, 3, 5, 6]}, ["y"], opset=opset)
    feeds = [{"x": transform(feed["x"]).astype(np.float32)} for feed in structured_inputs(model)]
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["float_nodes"] == ([] if op_type == "Exp" else ["op"])


@pytest.mark.parametrize("op_type", ["Floor", "Ceil", "Round", "Sign"])
def test_rounding_after_conv_is_one_xnnpack_partition(op_type, tmp_path):
    """FLOOR / CEIL / ROUND in float inside the int8 partition; halves round to even (ONNX Round)."""
    weights = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["c"], ["y"], name="op")]
    model = make_model(nodes, {"x": [1, 3, 5, 6]}, ["y"], {"w": weights})
    report = check_conformance(model, tmp_path)
    for path in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / path)) == 1, path


@pytest.mark.parametrize("name", ["test_round", "test_floor", "test_ceil", "test_floor_example", "test_ceil_example",
                                  "test_sign"])
def test_rounding_onnx_cases_fp32(name, tmp_path):
    """The ONNX backend cases hold exact halves (+-0.5, 2.5, ...): half to even, like ONNX."""
    assert_onnx_case_fp32(name, tmp_path, 0.0)


def test_global_max_pool(tmp_path):
    model = make_model([helper.make_node("GlobalMaxPool", ["x"], ["y"], name="gmp")], {"x": [1, 6, 5, 7]}, ["y"])
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["REDUCE_MAX"] == 1


@pytest.mark.parametrize("op_type,mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", None)])
def test_depth_and_space(op_type, mode, tmp_path):
    """After a conv, as in super-resolution heads (PixelShuffle exports DepthToSpace CRD).
    SpaceToDepth's CRD mode (opset 28) is checked in fp32 by the ONNX case below: ONNX Runtime
    has no QuantizeLinear-28 for the int8 reference."""
    weights = RNG.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["c"], ["y"], name="move", blocksize=2, **({"mode": mode} if mode else {}))]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 6, 8]}, ["y"], {"w": weights}), tmp_path)
    assert "GATHER" not in report.result["op_histogram"]  # CRD: the conv writes its channels in DCR order
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_crd_depth_to_space_of_a_shared_tensor_reorders_with_a_gather(tmp_path):
    """When the conv output is read elsewhere, its channel order must stay: a GATHER reorders."""
    weights = np.random.default_rng(8).normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["c"], ["y"], name="move", blocksize=2, mode="CRD")]
    # the conv output is a model output too: the app reads its channels in the model's order
    report = check_conformance(make_model(nodes, {"x": [1, 3, 6, 8]}, ["y", "c"], {"w": weights}), tmp_path)
    assert report.result["op_histogram"]["GATHER"] == 1


def test_unfolded_batch_norm_with_relu(tmp_path):
    """A BatchNormalization no conv precedes (here on the input): a 1x1 depthwise conv + fused Relu."""
    channels = 5
    inits = {"g": RNG.uniform(0.5, 2, channels), "b": RNG.normal(size=channels), "m": RNG.normal(size=channels),
             "v": RNG.uniform(0.5, 2, channels)}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], name="bn", epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [1, channels, 6, 7]}, ["y"], {k: v.astype(np.float32) for k, v in inits.items()})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["DEPTHWISE_CONV_2D"] == 1 and "RELU" not in report.result["op_histogram"]


def test_training_mode_batch_norm_is_refused():
    model, _, _ = onnx_node_case("test_batchnorm_example_training_mode")
    problems = {op: reason for _, op, reason in unsupported_nodes(model)}
    assert "training_mode=1" in problems["BatchNormalization"]


@pytest.mark.parametrize("name", [
    "test_neg", "test_abs", "test_exp", "test_log", "test_reciprocal", "test_softplus", "test_mish",
    "test_globalmaxpool", "test_depthtospace_example", "test_depthtospace_crd_mode_example", "test_spacetodepth",
    "test_spacetodepth_example", "test_spacetodepth_crd_mode_example", "test_batchnorm_example",
    "test_batchnorm_epsilon"])
def test_onnx_cases_match_expected_outputs(name, tmp_path):
    assert_onnx_case_fp32(name, tmp_path, tolerance=1e-5)


def test_crd_depth_to_space_after_two_convs_sharing_weights(tmp_path):
    """A weight-tied upsampler (one conv + PixelShuffle module applied twice): both convs read one
    weight initializer, and each reordered copy (here for block sizes 2 and 4) must be a tensor of its own."""
    weights = np.random.default_rng(5).normal(size=(16, 3, 3, 3)).astype(np.float32) * 0.4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["c1"], ["y1"], name="move1", blocksize=2, mode="CRD"),
             helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["c2"], ["y2"], name="move2", blocksize=4, mode="CRD")]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 6, 8]}, ["y1", "y2"], {"w": weights}), tmp_path)
    assert "GATHER" not in report.result["op_histogram"]


def test_round_halves_to_even_over_the_float_range(tmp_path):
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.50000006, 1e-30, 3.7, -3.7,
                       4194304.5, 8388607.5, -8388607.5, 8388609.0, 1e12, -3e13, 0.0], np.float32)
    model = make_model([helper.make_node("Round", ["x"], ["y"], name="op")], {"x": [values.size]}, ["y"])
    report = check_conformance(model, tmp_path, [{"x": values}] + structured_inputs(model), fp32_rtol=0.0)
    assert report.fp32_error["xnnpack"] == 0.0


def test_sign_of_zero_tiny_and_huge_values(tmp_path):
    values = np.array([0.0, -0.0, 1e-37, -1e-37, 3e-30, 1.0, -2.5, 3e38, -3e38, 7e-8], np.float32)
    model = make_model([helper.make_node("Sign", ["x"], ["y"], name="op")], {"x": [values.size]}, ["y"])
    report = check_conformance(model, tmp_path, [{"x": values}] + structured_inputs(model), fp32_rtol=0.0)
    assert report.fp32_error["xnnpack"] == 0.0
