"""Chains of constant Mul/Add/Sub/Div lowered as one per-channel affine op (ops/affine.py).

The int8 reference is ONNX Runtime on the unfused graph with Q/DQ only where the .tflite keeps an
int8 tensor (tests/tflite_harness.py): a chain lowered as one rounding stays within one output step
of it; FP32 is compared with the unfused graph in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite, ops
from edgepipe.backends.tflite.ops import affine
from edgepipe.backends.tflite.lower import prepare_model
from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import check_conformance, delegate_partitions, make_model, minmax_calibration, run_onnx
from tests.tflite_harness import fake_quantized_weights, structured_inputs

RNG = np.random.default_rng(21)
C = 6
REWRITES = list(ops.rewrites())
CONSTANTS = {
    "w": (RNG.normal(size=(C, 3, 3, 3)) * 0.4).astype(np.float32),
    "six": np.float32(6.0),
    "gain": RNG.uniform(0.5, 2.0, size=(C, 1, 1)).astype(np.float32),
    "negative_gain": -RNG.uniform(0.5, 2.0, size=(1, C, 1, 1)).astype(np.float32),
    "bias": np.float32(0.3),
    "scalar_gain": np.float32(1.7),
    "channel_bias": RNG.normal(size=(C, 1, 1)).astype(np.float32),
    "row": RNG.normal(size=(1, 1, 1, 8)).astype(np.float32),  # varies along W: not per channel
}
# a Conv, then the chain (op, inputs, output); y is the graph output
CHAINS = {
    "learnable_affine": [("Div", ["t", "six"], "d"), ("Mul", ["gain", "d"], "m"), ("Add", ["m", "bias"], "y")],
    "negative_scale_and_sub": [("Mul", ["t", "negative_gain"], "m"), ("Sub", ["m", "channel_bias"], "s"),
                               ("Sub", ["bias", "s"], "y")],
    "channel_shift_first": [("Add", ["t", "channel_bias"], "a"), ("Mul", ["a", "gain"], "y")],
}


def chain_model(chain, extra_outputs=(), after="relu"):
    """x -> Conv -> (Relu ->) t -> chain -> y: after a Relu the chain becomes a ChannelAffine node,
    right after the Conv (after="conv") it folds into the Conv's weights and bias."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["t" if after == "conv" else "c"], name="conv", pads=[1, 1, 1, 1])]
    if after != "conv":
        nodes.append(helper.make_node("LeakyRelu", ["c"], ["t"], name="act", alpha=0.1))
    nodes += [helper.make_node(op, inputs, [out], name=f"{op.lower()}_{out}") for op, inputs, out in chain]
    used = {name for _, inputs, _ in chain for name in inputs} | {"w"}
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["y", *extra_outputs],
                      {k: v for k, v in CONSTANTS.items() if k in used})


def fused_nodes(model):
    return [n for n in prepare_model(model).graph.node if n.op_type == "ChannelAffine"]


@pytest.mark.parametrize("form", sorted(CHAINS))
def test_constant_chain_becomes_one_rounding(form, tmp_path):
    model = chain_model(CHAINS[form])
    report = check_conformance(model, tmp_path, fp32_rtol=1e-5)
    fused = fused_nodes(model)
    assert len(fused) == 1 and fused[0].input[0] == "t" and fused[0].output[0] == "y"
    histogram = report.result["op_histogram"]
    # int8: the Conv and one 1x1 depthwise conv, nothing elementwise; all in one XNNPACK partition
    assert histogram.get("DEPTHWISE_CONV_2D") == 1 and not {"MUL", "ADD", "SUB", "DIV"} & set(histogram)
    assert report.result["float_nodes"] == []
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1

def fused_and_per_node_errors(model, tmp_path, monkeypatch) -> tuple[float, float]:
    """Mean |int8 .tflite - ONNX Runtime| on 8 structured inputs, with the affine rewrite and then
    with it switched off (the chain lowered node by node), same calibration."""
    feeds = structured_inputs(model, 8, seed=4)
    calibration = minmax_calibration(model, feeds)

    def mean_error(folder) -> float:
        built = build_tflite(model, calibration, folder, {})
        return float(np.mean([np.abs(run_tflite(folder / "model.tflite", built["io"], feed)["y"]
                                     - run_onnx(model, feed)["y"]).mean() for feed in feeds]))

    fused = mean_error(tmp_path / "fused")
    monkeypatch.setattr(ops, "rewrites", lambda: [r for r in REWRITES if r is not affine.fuse_constant_affine])
    return fused, mean_error(tmp_path / "per_node")


# PP-LCNetV3's learnable affine block after a hard-swish: one scale and one shift for the tensor
SCALAR_CHAIN = [("Div", ["t", "six"], "d"), ("Mul", ["d", "scalar_gain"], "m"), ("Add", ["m", "bias"], "y")]


def test_scalar_chain_is_a_float_chain_in_the_delegate(tmp_path, monkeypatch):
    """One scale and one shift: DEQUANTIZE, MUL, ADD, QUANTIZE (a float node, inside the one XNNPACK
    partition, which evaluates such a chain of one int8 tensor as a lookup table) instead of the
    1x1 depthwise conv; one rounding still, closer to FP32 than the chain lowered node by node."""
    model = chain_model(SCALAR_CHAIN)
    report = check_conformance(model, tmp_path / "check", fp32_rtol=1e-5)
    assert [(n.input[0], n.output[0]) for n in fused_nodes(model)] == [("t", "y")]
    histogram = report.result["op_histogram"]
    assert "DEPTHWISE_CONV_2D" not in histogram and histogram["MUL"] == 1 and histogram["ADD"] == 1, histogram
    assert report.result["float_nodes"] == ["add_y"]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
    fused, per_node = fused_and_per_node_errors(model, tmp_path, monkeypatch)
    assert fused < 0.95 * per_node, (fused, per_node)


@pytest.mark.parametrize("after", ["conv", "relu"])
def test_one_rounding_is_closer_to_fp32_than_one_per_node(after, tmp_path, monkeypatch):
    """The same chain lowered node by node (the rewrite switched off) ends further from FP32."""
    model = chain_model(CHAINS["learnable_affine"], after=after)
    fused, per_node = fused_and_per_node_errors(model, tmp_path, monkeypatch)
    assert fused < {"conv": 0.85, "relu": 0.95}[after] * per_node, (fused, per_node)


@pytest.mark.parametrize("form", sorted(CHAINS))
def test_chain_after_a_conv_folds_into_it(form, tmp_path):
    model = chain_model(CHAINS[form], after="conv")
    prepared = prepare_model(model)
    assert [n.op_type for n in prepared.graph.node] == ["Conv"] and prepared.graph.node[0].output[0] == "y"
    report = check_conformance(model, tmp_path, fp32_rtol=1e-5)
    assert report.result["op_histogram"].get("CONV_2D") == 1 and len(report.result["op_histogram"]) <= 3


def test_conv_output_used_elsewhere_is_not_folded(tmp_path):
    model = chain_model(CHAINS["learnable_affine"], extra_outputs=["t"], after="conv")
    assert [n.op_type for n in prepare_model(model).graph.node] == ["Conv", "ChannelAffine"]
    check_conformance(model, tmp_path)


def test_chain_stops_where_an_intermediate_is_used(tmp_path):
    """m is also a graph output: Div and Mul stay apart from the Add (which alone is no chain)."""
    chain = CHAINS["learnable_affine"]
    model = chain_model(chain, extra_outputs=["m"])
    fused = fused_nodes(model)
    assert [(n.input[0], n.output[0]) for n in fused] == [("t", "m")]
    check_conformance(model, tmp_path, int8_steps=2.0)


@pytest.mark.parametrize("chain", [
    [("Mul", ["t", "row"], "m"), ("Add", ["m", "bias"], "y")],  # constant varies along W
    [("Div", ["six", "t"], "d"), ("Add", ["d", "bias"], "y")],  # c / x is not affine
    [("Mul", ["t", "t"], "m"), ("Add", ["m", "bias"], "y")],  # no constant
])
def test_non_affine_chains_are_left_alone(chain, tmp_path):
    model = chain_model(chain)
    assert fused_nodes(model) == []


def test_fused_chain_in_16x8(tmp_path):
    """activations: int16 lowers the fused node with int16 MUL / ADD: within a few int16 steps of
    ONNX Runtime on the graph with its Conv weights rounded to int8 (the only int8 left in 16x8)."""
    model = chain_model(CHAINS["learnable_affine"])
    feeds = structured_inputs(model, 6, seed=3)
    calibration = minmax_calibration(model, feeds)
    built = build_tflite(model, calibration, tmp_path, {"activations": "int16"})
    assert "add_y" in built["int16_nodes"]
    tensor = calibration.tensors["y"]
    grid = max(abs(tensor.min), abs(tensor.max)) / 32767
    for feed in feeds[:3]:
        got = run_tflite(tmp_path / "model.tflite", built["io"], feed)["y"]
        want = run_onnx(fake_quantized_weights(model), feed)["y"]
        assert float(np.max(np.abs(got - want))) <= 6 * grid


def test_float_request_for_a_folded_node_applies_to_its_owner(tmp_path):
    """precision.float_nodes (a user's, or the planner's tensor groups, which name the original
    graph's nodes) naming a node folded into the Conv keeps the Conv float; the planner's
    placement counts the folded nodes with the Conv."""
    from edgepipe.backends.tflite.placement import int8_grids

    model = chain_model(CHAINS["learnable_affine"], after="conv")
    feeds = structured_inputs(model, 4, seed=5)
    calibration = minmax_calibration(model, feeds)
    built = build_tflite(model, calibration, tmp_path, {"float_nodes": {"add_y"}})
    assert built["float_nodes"] == ["conv"]
    for feed in feeds:  # the float Conv computes the whole chain: FP32 up to the output's int8 grid
        got = run_tflite(tmp_path / "model.tflite", built["io"], feed)["y"]
        step = calibration.asymmetric_params("y")[0]
        assert float(np.max(np.abs(got - run_onnx(model, feed)["y"]))) <= 0.51 * step + 1e-6
    placement = int8_grids(model, calibration)
    assert {"conv", "div_d", "mul_m", "add_y"} <= placement["int8_nodes"] and "conv" in placement["weights"]
