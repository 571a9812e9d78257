"""Constant affine chains folded into Convs by the fold stage (edgepipe/fold/affine.py): exact in
float (ONNX Runtime on the original vs the folded model), only where exact (a shift in front of a
padded Conv is refused), grouped convs map each input channel to its own weights."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph
from edgepipe.fold.affine import fold_constant_affine
from edgepipe.stages.fold import run_fold

RNG = np.random.default_rng(5)
C = 4


def chain_model(extra_output: str | None = None):
    """conv1 (pads) -> LeakyRelu -> [/6, *gain, +bias] -> conv2 (1x1) -> [+cbias, *gain] -> LeakyRelu
    -> [*gain] -> conv3 (3x3, pads, 2 groups) -> LeakyRelu -> [*gain, +bias] -> conv4 (pads) -> y."""
    inits = {
        "w1": RNG.normal(0, 0.4, (C, 3, 3, 3)), "w2": RNG.normal(0, 0.4, (C, C, 1, 1)), "b2": RNG.normal(0, 0.2, C),
        "w3": RNG.normal(0, 0.4, (C, C // 2, 3, 3)), "b3": RNG.normal(0, 0.2, C),
        "w4": RNG.normal(0, 0.4, (2, C, 3, 3)),
        "six": np.array(6.0), "gain": RNG.uniform(0.5, 2.0, (C, 1, 1)), "bias": np.array([0.3]),
        "cbias": RNG.normal(0, 1.0, (1, C, 1, 1)), "gain3": RNG.uniform(0.5, 2.0, (1, C, 1, 1)),
    }
    def node(op, inputs, out, **attrs):
        return helper.make_node(op, inputs, [out], name=out, **attrs)
    nodes = [
        node("Conv", ["x", "w1"], "c1", pads=[1, 1, 1, 1]), node("LeakyRelu", ["c1"], "r1", alpha=0.1),
        node("Div", ["r1", "six"], "a_div"), node("Mul", ["gain", "a_div"], "a_mul"), node("Add", ["a_mul", "bias"], "a_add"),
        node("Conv", ["a_add", "w2", "b2"], "c2"),
        node("Add", ["c2", "cbias"], "b_add"), node("Mul", ["b_add", "gain"], "b_mul"),
        node("LeakyRelu", ["b_mul"], "r2", alpha=0.1), node("Mul", ["r2", "gain3"], "c_mul"),
        node("Conv", ["c_mul", "w3", "b3"], "c3", pads=[1, 1, 1, 1], group=2),
        node("LeakyRelu", ["c3"], "r3", alpha=0.1), node("Mul", ["r3", "gain"], "d_mul"),
        node("Sub", ["d_mul", "bias"], "d_sub"), node("Conv", ["d_sub", "w4"], "y", pads=[1, 1, 1, 1]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                          outputs, [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return graph.infer_shapes(model)


def assert_same_outputs(model, folded):
    before, after = graph.make_session(model), graph.make_session(folded)
    for _ in range(4):
        feed = {"x": RNG.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)}
        for want, got in zip(before.run(None, feed), after.run(None, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_chains_fold_where_exact_and_outputs_are_unchanged():
    model = chain_model()
    folded, report = fold_constant_affine(model)
    assert report["into_previous_conv"] == [{"conv": "c2", "nodes": ["b_add", "b_mul"]}]
    assert report["into_next_conv"] == [{"conv": "c2", "nodes": ["a_div", "a_mul", "a_add"]},
                                        {"conv": "c3", "nodes": ["c_mul"]}]  # a pure scale: padding is no obstacle
    # a shift in front of a padded conv would change its border outputs: refused, the nodes stay
    assert report["refused_padding"] == [{"conv": "y", "nodes": ["d_mul", "d_sub"]}]
    assert report["nodes_removed"] == 6
    left = {n.name for n in folded.graph.node}
    assert {"d_mul", "d_sub"} <= left and not {"a_div", "a_mul", "a_add", "b_add", "b_mul", "c_mul"} & left
    assert_same_outputs(model, folded)


def test_a_shift_folded_into_a_padded_conv_would_not_be_exact():
    """Why the refusal: moving the refused chain's shift into conv4's bias changes the border."""
    model = chain_model()
    forced = onnx.ModelProto()
    forced.CopyFrom(model)
    conv = next(n for n in forced.graph.node if n.name == "y")
    conv.attribute.remove(next(a for a in conv.attribute if a.name == "pads"))  # unpadded: the fold is allowed
    folded, report = fold_constant_affine(forced)
    assert {"conv": "y", "nodes": ["d_mul", "d_sub"]} in report["into_next_conv"]
    assert_same_outputs(forced, folded)
    graph.set_attribute(next(n for n in folded.graph.node if n.name == "y"), "pads", [1, 1, 1, 1])
    graph.set_attribute(conv, "pads", [1, 1, 1, 1])
    feed = {"x": RNG.normal(0, 1, (1, 3, 10, 10)).astype(np.float32)}
    want = graph.make_session(forced).run(None, feed)[0]
    got = graph.make_session(folded).run(None, feed)[0]
    inside = np.abs(got - want)[..., 1:-1, 1:-1].max()
    border = np.abs(got - want).max()
    assert inside < 1e-4 * np.abs(want).max() < border


def test_a_tensor_read_elsewhere_keeps_its_chain():
    model = chain_model(extra_output="a_add")  # the chain's result is also a graph output
    folded, report = fold_constant_affine(model)
    assert all(entry["conv"] != "c2" or "a_add" not in entry["nodes"]
               for entry in report["into_next_conv"] + report["into_previous_conv"])
    assert "a_add" in {n.name for n in folded.graph.node}
    assert_same_outputs(model, folded)


@pytest.mark.parametrize("enabled", [True, False])
def test_fold_stage_switch(enabled):
    model = chain_model()
    folded, report = run_fold(model, {"constant_affine": enabled})
    assert ("constant_affine" in report) == enabled
    if enabled:
        assert report["constant_affine"]["nodes_removed"] == 6
        assert report["constant_affine"]["max_rel_diff"] < 1e-5
        assert len(folded.graph.node) == len(model.graph.node) - 6
    else:
        assert len(folded.graph.node) == len(model.graph.node)


def layer_scale_model(perm=(0, 3, 1, 2), shift: bool = False):
    """ConvNeXt's block tail: x [1, C, 4, 4] -> Transpose to channels-last -> MatMul(W) ->
    Transpose(perm) -> * gamma[C, 1, 1] (then + beta when `shift`) -> + x."""
    inits = {"w": RNG.normal(0, 0.4, (C, C)), "gamma": RNG.uniform(0.1, 2.0, (C, 1, 1)),
             "beta": RNG.normal(0, 0.5, (1, C, 1, 1))}
    nodes = [helper.make_node("Transpose", ["x"], ["last"], name="to_last", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["last", "w"], ["fc"], name="fc"),
             helper.make_node("Transpose", ["fc"], ["back"], name="back", perm=list(perm)),
             helper.make_node("Mul", ["back", "gamma"], ["scaled"], name="layer_scale")]
    tail = "scaled"
    if shift:
        nodes.append(helper.make_node("Add", ["scaled", "beta"], ["shifted"], name="shift"))
        tail = "shifted"
    nodes.append(helper.make_node("Add", [tail, "x"], ["y"], name="residual"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return graph.infer_shapes(model)


def _same_outputs_4x4(model, folded):
    feed = {"x": RNG.normal(0, 1, (1, C, 4, 4)).astype(np.float32)}
    want = graph.make_session(model).run(None, feed)[0]
    np.testing.assert_allclose(graph.make_session(folded).run(None, feed)[0], want, rtol=1e-5,
                               atol=1e-5 * float(np.abs(want).max()))


def test_layer_scale_after_a_transposed_matmul_folds_into_its_columns():
    model = layer_scale_model()
    folded, report = fold_constant_affine(model)
    assert report["into_previous_matmul"] == [{"matmul": "fc", "nodes": ["layer_scale"]}]
    assert [n.op_type for n in folded.graph.node] == ["Transpose", "MatMul", "Transpose", "Add"]
    _same_outputs_4x4(model, folded)


@pytest.mark.parametrize("perm,shift", [((0, 3, 1, 2), True), ((0, 2, 3, 1), False)], ids=["shift", "other-axis"])
def test_layer_scale_that_a_matmul_cannot_take_stays(perm, shift):
    """A shift (the MatMul has no bias) or a Transpose that does not bring the product's columns
    to the chain's channel axis: nothing folds into the MatMul."""
    model = layer_scale_model(perm, shift)
    folded, report = fold_constant_affine(model)
    assert report["into_previous_matmul"] == []
    assert "layer_scale" in {n.name for n in folded.graph.node}
    _same_outputs_4x4(model, folded)
