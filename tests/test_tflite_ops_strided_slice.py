"""Slices with positive steps (YOLOX's Focus stem) and Concats of more than 5 inputs (unrolled
recurrent outputs): lowered to ops XNNPACK delegates, checked in LiteRT against ONNX Runtime
(tests/tflite_harness.py: fp32 under every resolver, int8 against a Q/DQ simulation)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import delegation
from tests.tflite_harness import check_conformance, delegate_partitions, make_model

RNG = np.random.default_rng(41)
CONV_W = RNG.normal(size=(5, 3, 3, 3)).astype(np.float32) * 0.4


def _slice(name: str, source: str, output: str, starts, ends, axes, steps, inits: dict) -> helper.NodeProto:
    for key, value in (("s", starts), ("e", ends), ("a", axes), ("t", steps)):
        inits[f"{name}_{key}"] = np.array(value, np.int64)
    return helper.make_node("Slice", [source] + [f"{name}_{key}" for key in "seat"], [output], name=name)


def test_focus_stem_is_one_xnnpack_partition(tmp_path):
    """x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2] -> Concat -> Conv
    (YOLOX / YOLOv5 Focus, as ddddocr's detector ships it): no STRIDED_SLICE, one partition."""
    inits = {"w": RNG.normal(size=(8, 12, 3, 3)).astype(np.float32) * 0.2}
    phases = [(0, 0), (1, 0), (0, 1), (1, 1)]
    nodes = [_slice(f"focus{k}", "x", f"p{k}", [dy, dx], [2**62, 2**62], [2, 3], [2, 2], inits)
             for k, (dy, dx) in enumerate(phases)]
    nodes += [helper.make_node("Concat", [f"p{k}" for k in range(4)], ["cat"], name="cat", axis=1),
              helper.make_node("Conv", ["cat", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["conv"], ["sig"], name="sig"),
              helper.make_node("Mul", ["conv", "sig"], ["y"], name="silu")]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 16, 12]}, ["y"], inits), tmp_path)
    histogram = report.result["op_histogram"]
    assert "STRIDED_SLICE" not in histogram and "TRANSPOSE" not in histogram, histogram
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / name)) == 1
        assert delegation.fully_delegated(delegation.measure(report.out_dir / name)), name


@pytest.mark.parametrize(("shape", "starts", "ends", "axes", "steps", "strided_slice"), [
    ([1, 6, 7, 5], [1], [7], [2], [3], False),          # window [1, 7) of 7 rows, phase 0
    ([1, 6, 7, 5], [2, 0], [7, 5], [2, 1], [2, 3], False),  # last element near the end: the window starts earlier
    ([1, 6, 7, 5], [0], [7], [2], [2], True),           # 4 of 7 rows need 8: STRIDED_SLICE stays
    ([2, 9, 4], [1, 0], [9, 3], [1, 2], [4, 1], False),  # 3-D, a step and a plain cut
])
def test_positive_steps_without_strided_slice(shape, starts, ends, axes, steps, strided_slice, tmp_path):
    inits: dict = {}
    model = make_model([_slice("cut", "x", "y", starts, ends, axes, steps, inits)], {"x": shape}, ["y"], inits)
    report = check_conformance(model, tmp_path)
    assert ("STRIDED_SLICE" in report.result["op_histogram"]) == strided_slice, report.result["op_histogram"]


@pytest.mark.parametrize("parts", [6, 11, 20])
def test_concat_of_many_inputs_is_one_xnnpack_partition(parts, tmp_path):
    """XNNPACK takes 2-5 inputs per CONCATENATION: more become a tree on the output's grid."""
    nodes = [helper.make_node("Mul", [f"x{k}", f"k{k}"], [f"m{k}"], name=f"scale{k}") for k in range(parts)]
    nodes.append(helper.make_node("Concat", [f"m{k}" for k in range(parts)], ["y"], name="cat", axis=0))
    inits = {f"k{k}": np.array(0.5 + k, np.float32) for k in range(parts)}
    model = make_model(nodes, {f"x{k}": [1, 2, 8] for k in range(parts)}, ["y"], inits)
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["CONCATENATION"] == -(-(parts - 1) // 4)  # a tree of <= 5-input ops
    for name in ("model.tflite", "model.fp32.tflite"):
        assert delegation.fully_delegated(delegation.measure(report.out_dir / name)), name


FLIPS = [  # torch.flip exports Slice(starts=-1, ends=-INT64_MAX, steps=-1) per flipped axis
    ([3], "W"), ([2], "H"), ([1], "C"), ([2, 3], "HW"), ([1, 3], "CW"),
]


@pytest.mark.parametrize("axes", [f[0] for f in FLIPS], ids=[f[1] for f in FLIPS])
def test_flip_after_conv_is_one_xnnpack_partition(axes, tmp_path):
    """torch.flip of an NHWC feature map: W and H (outer TFLite axes) as one-row SLICEs
    concatenated backwards, C (innermost) as FULLY_CONNECTED with an anti-diagonal matrix."""
    inits = {"w": CONV_W}
    count = len(axes)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             _slice("flip", "c", "y", [-1] * count, [-2**63 + 1] * count, axes, [-1] * count, inits)]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 6, 7]}, ["y"], inits), tmp_path)
    histogram = report.result["op_histogram"]
    assert "STRIDED_SLICE" not in histogram and "TRANSPOSE" not in histogram, histogram
    assert ("FULLY_CONNECTED" in histogram) == (1 in axes), histogram
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / name)) == 1, name


@pytest.mark.parametrize(("shape", "starts", "ends", "axes", "steps", "strided_slice"), [
    ([2, 9], [-1], [-2**63 + 1], [1], [-1], False),       # a token sequence reversed
    ([2, 9, 4], [6, 3], [1, 0], [1, 2], [-1, -1], False),  # windows inside both axes, reversed
    ([2, 9, 4], [7, 0], [0, 4], [1, 2], [-1, 1], False),   # one axis reversed, one cut
    ([2, 9, 4], [7], [0], [1], [-2], True),                # a step of -2 keeps STRIDED_SLICE
    ([1, 1, 150, 3], [-1], [-2**63 + 1], [2], [-1], False),  # 150 rows: a [50, 3] view, each reversed
    ([1, 2, 67, 3], [-1], [-2**63 + 1], [2], [-1], True),   # 67 is prime: STRIDED_SLICE stays
])
def test_reversed_slices(shape, starts, ends, axes, steps, strided_slice, tmp_path):
    inits: dict = {}
    model = make_model([_slice("cut", "x", "y", starts, ends, axes, steps, inits)], {"x": shape}, ["y"], inits)
    report = check_conformance(model, tmp_path)
    assert ("STRIDED_SLICE" in report.result["op_histogram"]) == strided_slice, report.result["op_histogram"]
    if not strided_slice:
        assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
