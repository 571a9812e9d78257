"""Conformance of Pad (PAD, PAD + ADD for non-zero fills, reflect / edge as row copies), incl. the fold stage's Pad(0) + Add(border)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import unsupported_nodes
from edgepipe.fold.normalization import fold_input_normalization
from tests.tflite_harness import (check_conformance, delegate_partitions, make_interpreter, make_model, op_names,
                                  structured_inputs)

RNG = np.random.default_rng(11)
CONV_W = RNG.normal(size=(5, 3, 3, 3)).astype(np.float32) * 0.4


def _pad_model(shape, pads, mode="constant", value=None, after_conv=False, opset=17, axes=None):
    inputs = {"x": shape}
    inits = {"p": np.asarray(pads, np.int64)}
    pad_inputs = ["c" if after_conv else "x", "p"]
    if value is not None or axes is not None:
        pad_inputs.append("v" if value is not None else "")
        if value is not None:
            inits["v"] = np.array(value, np.float32)
    if axes is not None:
        pad_inputs.append("a")
        inits["a"] = np.asarray(axes, np.int64)
    nodes = [helper.make_node("Pad", pad_inputs, ["y"], name="pad", mode=mode)]
    if after_conv:
        nodes.insert(0, helper.make_node("Conv", ["x", "w"], ["c"], name="conv"))
        inits["w"] = CONV_W[:, : shape[1]]
    return make_model(nodes, inputs, ["y"], inits, opset=opset)


def _delegated_fully(path) -> bool:
    """One XNNPACK partition that reads only graph inputs/constants and writes every graph output."""
    interpreter = make_interpreter(path, "xnnpack")
    delegates = [op for op in interpreter._get_ops_details() if op["op_name"] == "DELEGATE"]
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    graph_outputs = {d["index"] for d in interpreter.get_output_details()}
    constants = {d["index"] for d in interpreter.get_tensor_details() if d["index"] not in graph_inputs
                 and not any(d["index"] in op["outputs"] for op in interpreter._get_ops_details())}
    return (len(delegates) == 1 and graph_outputs <= set(delegates[0]["outputs"])
            and set(delegates[0]["inputs"]) <= graph_inputs | constants)


@pytest.mark.parametrize("after_conv", [False, True], ids=["input", "after_conv"])
@pytest.mark.parametrize("value", [None, 0.0, 0.75, 9.0], ids=["zero", "explicit_zero", "inside", "outside"])
def test_constant_pad_4d(value, after_conv, tmp_path):
    pads = [0, 0, 1, 2, 0, 1, 2, 0]
    report = check_conformance(_pad_model([1, 3, 6, 7], pads, value=value, after_conv=after_conv), tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram["PAD"] == 1 and histogram.get("ADD", 0) == (1 if value else 0), histogram
    assert not report.result["float_nodes"]
    assert _delegated_fully(report.out_dir / "model.tflite") and _delegated_fully(report.out_dir / "model.fp32.tflite")


@pytest.mark.parametrize("shape,pads", [([2, 5], [1, 0, 0, 3]), ([1, 4, 6], [0, 2, 1, 0, 0, 2]),
                                        ([1, 2, 3, 4], [1, 1, 0, 0, 0, 2, 1, 1])])
def test_constant_pad_plain_and_channel_axes(shape, pads, tmp_path):
    report = check_conformance(_pad_model(shape, pads, value=-0.5), tmp_path)
    assert report.result["op_histogram"]["PAD"] == 1
    assert list(report.result["io"]["outputs"][0]["onnx_shape"]) == \
        [s + pads[i] + pads[i + len(shape)] for i, s in enumerate(shape)]


@pytest.mark.parametrize("mode,pads", [("reflect", [0, 0, 2, 1, 0, 0, 1, 3]),  # H and W
                                       ("reflect", [0, 0, 2, 2, 0, 0, 2, 2]),  # ReflectionPad2d(2)
                                       ("edge", [0, 0, 1, 1, 0, 1, 0, 1]),  # channels too (NHWC's innermost)
                                       ("edge", [0, 0, 3, 2, 0, 0, 2, 4]),  # wider than MIRROR_PAD's SYMMETRIC
                                       ("edge", [0, 2, 0, 0, 0, 3, 0, 0])])  # channels only
@pytest.mark.parametrize("after_conv", [False, True], ids=["input", "after_conv"])
def test_mirror_pad(mode, pads, after_conv, tmp_path):
    """Reflect / edge pads are copies of rows (SLICE, CONCATENATION; FULLY_CONNECTED for the innermost
    axis): exact in float and int8 (0 steps from the simulation) and one XNNPACK partition."""
    # copies add no rounding; after a conv, the conv's own int8 rounding on the builtin kernels may
    # differ from the simulation's by one step
    report = check_conformance(_pad_model([1, 3, 5, 6], pads, mode=mode, after_conv=after_conv), tmp_path,
                               int8_steps=1.0 if after_conv else 0.0)
    assert "MIRROR_PAD" not in report.result["op_histogram"]
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


@pytest.mark.parametrize("mode,shape,pads", [("reflect", [4, 20], [0, 6, 0, 5]),  # Silero VAD's STFT framing
                                              ("reflect", [1, 2, 16], [0, 0, 0, 0, 0, 7]),
                                              ("edge", [2, 9], [0, 1, 0, 1])])
def test_mirror_pad_of_the_last_axis_is_delegated(mode, shape, pads, tmp_path):
    """Audio framing pads the time axis only: SLICE + FULLY_CONNECTED reversal + CONCATENATION, exact
    in float and int8 (0 steps from the simulation), and one XNNPACK partition (no MIRROR_PAD)."""
    report = check_conformance(_pad_model(shape, pads, mode=mode), tmp_path, int8_steps=0.0)
    histogram = report.result["op_histogram"]
    assert "MIRROR_PAD" not in histogram and histogram["CONCATENATION"] == 1
    assert histogram["FULLY_CONNECTED"] == sum(1 for p in (pads[len(shape) - 1], pads[-1]) if p)
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1


def test_opset18_axes_input_and_opset10_attributes(tmp_path):
    report = check_conformance(_pad_model([1, 3, 5, 6], [1, 2, 0, 1], value=0.25, axes=[-1, 2], opset=18),
                               tmp_path / "axes")
    assert report.result["io"]["outputs"][0]["shape"] == [1, 8, 7, 3]  # NHWC: H (axis 2) 5+2+1, W (axis -1) 6+1+0
    node = helper.make_node("Pad", ["x"], ["y"], name="pad", pads=[0, 1, 0, 2], value=1.5)
    report = check_conformance(make_model([node], {"x": [3, 4]}, ["y"], opset=10), tmp_path / "v10")
    assert report.result["op_histogram"]["PAD"] == 1


def test_unsupported_pads_are_reported():
    nodes = [helper.make_node("Pad", ["x", "p"], ["a"], name="negative"),
             helper.make_node("Pad", ["a", "q"], ["b"], name="wide_edge", mode="edge"),
             helper.make_node("Pad", ["b", "q"], ["y"], name="wrap", mode="wrap")]
    model = make_model(nodes, {"x": [1, 2, 6, 6]}, ["y"],
                       {"p": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64),
                        "q": np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64)}, opset=19)
    problems = {name: reason for name, _, reason in unsupported_nodes(model)}
    assert set(problems) == {"negative", "wrap"}  # any edge pad is row copies
    assert "negative" in problems["negative"] and "wrap" in problems["wrap"]


def _folded_first_conv(mean, std):
    """The fold stage's output for a model whose first conv pads its normalized input."""
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"image": [1, 3, 12, 10]}, ["y"], {"w": CONV_W})
    return fold_input_normalization(model, "image", "mean_std", mean=mean, std=std)[0]


@pytest.mark.parametrize("mean,ops", [([0.485, 0.456, 0.406], ["Pad", "Add", "Conv"]), ([0.5], ["Pad", "Conv"])],
                         ids=["per_channel_border", "equal_mean"])
def test_folded_input_normalization_is_fully_delegated(mean, ops, tmp_path):
    """Pad(0) + Add(constant [1,C,H,W] border) on the NHWC image input, in front of the first conv."""
    folded = _folded_first_conv(mean, [0.229, 0.224, 0.225])
    assert [n.op_type for n in folded.graph.node][: len(ops)] == ops
    raw = [{"image": (0.5 + 0.25 * f["image"]).clip(0, 1)} for f in structured_inputs(folded)]
    report = check_conformance(folded, tmp_path, raw)
    result = report.result
    assert not result["float_nodes"] and "TRANSPOSE" not in result["op_histogram"]
    assert result["io"]["inputs"][0]["layout"] == "NHWC"
    for name in ("model.tflite", "model.fp32.tflite"):
        assert _delegated_fully(report.out_dir / name), op_names(report.out_dir / name)


@pytest.mark.parametrize("pad_value,folded", [(None, True), (0.0, True), (0.5, False)])
def test_zero_pad_before_conv_becomes_the_convs_padding(pad_value, folded, tmp_path):
    """Pad(0) of H/W then a VALID conv (what some exporters write) is the conv's SAME padding: no
    PAD op; a non-zero fill is not padding a conv can do."""
    extra = {"v": np.array(pad_value, np.float32)} if pad_value is not None else {}
    nodes = [helper.make_node("Pad", ["x", "pads", *extra], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv")]
    model = make_model(nodes, {"x": [1, 3, 7, 8]}, ["y"],
                       {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), **extra,
                        "w": np.random.default_rng(2).normal(size=(4, 3, 3, 3)).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert ("PAD" not in histogram) == folded and histogram["CONV_2D"] == 1, histogram
