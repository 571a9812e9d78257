"""Conformance of Resize / Upsample: every coordinate_transformation_mode TFLite can express, scales or sizes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite, unsupported_nodes
from tests.tflite_harness import (check_conformance, convert, delegate_partitions, make_model, onnx_node_case,
                                  run_onnx, run_tflite, structured_inputs)

RNG = np.random.default_rng(17)
CONV_W = RNG.normal(size=(4, 3, 1, 1)).astype(np.float32) * 0.5
EMPTY = np.zeros(0, np.float32)


def _resize_model(mode, transform, in_hw=(5, 6), scales=None, sizes=None, nearest_mode=None, after_conv=True):
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    if nearest_mode:
        attrs["nearest_mode"] = nearest_mode
    inits = {"roi": EMPTY, "w": CONV_W}
    if scales is not None:
        inits["scales"] = np.array([1, 1, *scales], np.float32)
    if sizes is not None:
        inits["sizes"] = np.array([1, 4, *sizes], np.int64)
    source = "c" if after_conv else "x"
    resize_inputs = [source, "roi", "scales" if scales is not None else "", *(["sizes"] if sizes is not None else [])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Resize", resize_inputs, ["y"], name="resize", **attrs)]
    if not after_conv:
        nodes = nodes[1:]
        del inits["w"]
    return make_model(nodes, {"x": [1, 4 if not after_conv else 3, *in_hw]}, ["y"], inits, opset=13)


CASES = [  # mode, transform, scales, sizes, nearest_mode, expected (align_corners, half_pixel_centers)
    ("nearest", "asymmetric", (2, 2), None, "floor", (False, False)),
    ("nearest", "asymmetric", (2, 2), None, "round_prefer_floor", (False, False)),  # = floor at 2x
    ("nearest", "half_pixel", (2, 3), None, None, (False, False)),  # at integer factors = floor(out / f)
    ("nearest", "half_pixel", (1.5, 2.5), None, "round_prefer_ceil", (False, True)),
    ("nearest", "align_corners", None, (9, 11), "round_prefer_ceil", (True, False)),
    ("nearest", "pytorch_half_pixel", None, (3, 4), "round_prefer_ceil", (False, True)),
    ("linear", "asymmetric", (2, 2), None, None, (False, False)),
    ("linear", "half_pixel", (2, 1.5), None, None, (False, True)),
    ("linear", "pytorch_half_pixel", None, (8, 13), None, (False, True)),
    ("linear", "align_corners", None, (9, 4), None, (True, False)),
]


@pytest.mark.parametrize("after_conv", [True, False], ids=["after_conv", "input"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_resize_matches_onnxruntime(case, after_conv, tmp_path):
    mode, transform, scales, sizes, nearest_mode, _ = case
    model = _resize_model(mode, transform, scales=scales, sizes=sizes, nearest_mode=nearest_mode,
                          after_conv=after_conv)
    report = check_conformance(model, tmp_path)
    opcode = "RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR"
    histogram = report.result["op_histogram"]
    if opcode not in histogram:  # integer nearest upscaling: pixels repeated, fully delegated
        assert mode == "nearest" and histogram["CONCATENATION"] >= 1
        for name in ("model.tflite", "model.fp32.tflite"):
            assert len(delegate_partitions(report.out_dir / name)) == 1
    else:
        assert histogram[opcode] == 1
    assert "TRANSPOSE" not in histogram and not report.result["float_nodes"]


@pytest.mark.parametrize("factors", [(2, 2), (4, 4), (3, 2), (1, 6)])
def test_integer_nearest_upscaling_is_delegated_without_resize(factors, tmp_path):
    """FPN / DBNet decoders upsample by 2, 4 and 8: no RESIZE_NEAREST_NEIGHBOR (XNNPACK takes
    none), CONCATENATION + RESHAPE instead, equal to ONNX Runtime's nearest resize."""
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="nearest")
    model = make_model([node], {"x": [1, 5, 4, 3]}, ["y"], {"s": np.array([1, 1, *factors], np.float32)})
    report = check_conformance(model, tmp_path, int8_steps=0.0)  # pixels are copied, not computed
    assert "RESIZE_NEAREST_NEIGHBOR" not in report.result["op_histogram"]
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / name)) == 1


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_resize_flags(case):
    from edgepipe.backends.tflite.lower import Lowering, prepare_model
    from edgepipe.backends.tflite.ops.resize import resize_plan

    mode, transform, scales, sizes, nearest_mode, flags = case
    ctx = Lowering(prepare_model(_resize_model(mode, transform, scales=scales, sizes=sizes,
                                               nearest_mode=nearest_mode)))
    node = next(n for n in ctx.model.graph.node if n.op_type == "Resize")
    assert resize_plan(ctx, node) == (mode, flags)


def test_upsample_opset9(tmp_path):
    """The harness's Q/DQ reference needs opset >= 10, so compare with ONNX Runtime directly: a
    nearest copy of int8 values is off by at most half an input step."""
    node = helper.make_node("Upsample", ["x", "s"], ["y"], name="up", mode="nearest")
    model = make_model([node], {"x": [1, 2, 3, 4]}, ["y"], {"s": np.array([1, 1, 2, 3], np.float32)}, opset=9)
    feeds = structured_inputs(model)
    result, calibration = convert(model, tmp_path, feeds)
    assert result["op_histogram"]["CONCATENATION"] == 2  # 2 x 3: pixels repeated (2 prime steps)
    step = calibration.asymmetric_params("x")[0]
    for resolver in ("xnnpack", "no_delegates"):
        for name, io, tolerance in (("model.fp32.tflite", _float_io(result["io"]), 1e-6),
                                    ("model.tflite", result["io"], step / 2 + 1e-6)):
            got = run_tflite(tmp_path / name, io, feeds[0], resolver)["y"]
            assert np.max(np.abs(got - run_onnx(model, feeds[0])["y"])) <= tolerance


def _float_io(io):
    return {key: [dict(spec, dtype="float32", quantization=None) for spec in specs] for key, specs in io.items()}


def test_resize_opset10_is_asymmetric(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "s"], ["y"], name="resize", mode="linear")]
    model = make_model(nodes, {"x": [1, 2, 3, 4]}, ["y"], {"s": np.array([1, 1, 2, 3], np.float32)}, opset=10)
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["RESIZE_BILINEAR"] == 1


def test_unsupported_resizes_are_reported():
    nodes = [helper.make_node("Resize", ["x", "roi", "s"], ["a"], name="cubic", mode="cubic"),
             helper.make_node("Resize", ["a", "roi", "s"], ["b"], name="floor_half", mode="nearest",
                              coordinate_transformation_mode="half_pixel", nearest_mode="floor"),
             helper.make_node("Resize", ["b", "roi", "c"], ["d"], name="channels", mode="nearest"),
             helper.make_node("Resize", ["d", "roi", "s4"], ["y"], name="round_4x", mode="nearest",
                              coordinate_transformation_mode="asymmetric")]
    model = make_model(nodes, {"x": [1, 2, 3, 4]}, ["y"],
                       {"roi": EMPTY, "s": np.array([1, 1, 2, 2], np.float32),
                        "c": np.array([1, 2, 1, 1], np.float32),
                        "s4": np.array([1, 1, 4, 4], np.float32)}, opset=13)
    problems = {name: reason for name, _, reason in unsupported_nodes(model)}
    assert set(problems) == {"cubic", "floor_half", "channels", "round_4x"}
    assert "cubic" in problems["cubic"] and "half_pixel" in problems["floor_half"]
    assert "channel" in problems["channels"]


def test_align_corners_with_fractional_scale_is_refused():
    """ONNX's own case: 4 x 0.6 = 2.4; the spec samples with (4 - 1) / (2.4 - 1), ONNX Runtime and
    TFLite with (4 - 1) / (2 - 1). Refused in one line instead of silently matching one of them."""
    model, _, _ = onnx_node_case("test_resize_downsample_scales_linear_align_corners")
    ((name, op_type, reason),) = unsupported_nodes(model)
    assert op_type == "Resize" and "align_corners with scale 0.6" in reason and "sizes" in reason


def test_align_corners_with_integer_product_matches_expected(tmp_path):
    model, feed, expected = onnx_node_case("test_resize_upsample_scales_linear_align_corners")
    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], feed)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)
