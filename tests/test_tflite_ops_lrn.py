"""Conformance of LRN on arm-cpu (ops/lrn.py): odd and even window sizes, betas built from RSQRT /
SQRT and the POW fallback, in LiteRT against ONNX Runtime; the float island stays inside one
XNNPACK partition; an int8 AlexNet-style block through the CLI against ONNX Runtime FP32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepipe import graph, quantmath
from edgepipe.backends.tflite import unsupported_nodes
from edgepipe.backends.tflite.ops.lrn import window_matrix
from tests.helpers import run_cli
from tests.tflite_harness import check_conformance, delegate_partitions, make_model

RNG = np.random.default_rng(57)


@pytest.mark.parametrize("size,alpha,beta,bias,ops", [
    (5, 1e-4, 0.75, 1.0, {"RSQRT": 1, "SQRT": 1}),  # AlexNet / GoogLeNet
    (3, 0.5, 0.75, 2.0, {"RSQRT": 1, "SQRT": 1}),  # a window that matters
    (3, 0.3, 0.5, 1.0, {"RSQRT": 1}),
    (1, 0.2, 1.0, 0.5, {"RSQRT": 1}),  # ONNX Runtime runs odd sizes only
    (7, 0.4, 0.25, 1.5, {"RSQRT": 1, "SQRT": 1}),
    (3, 0.4, 0.6, 1.0, {"POW": 1}),
])
def test_lrn(size, alpha, beta, bias, ops, tmp_path):
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=size, alpha=alpha, beta=beta, bias=bias)
    model = make_model([node], {"x": [2, 6, 5, 4]}, ["y"])
    feeds = [{"x": (RNG.normal(size=(2, 6, 5, 4)) * 2).astype(np.float32)} for _ in range(4)]
    report = check_conformance(model, tmp_path, feeds, fp32_rtol=1e-5)
    histogram = report.result["op_histogram"]
    assert report.result["float_nodes"] == ["lrn"]
    assert histogram["CONV_2D"] == 1 and all(histogram.get(op) == n for op, n in ops.items()), histogram
    assert "TRANSPOSE" not in histogram and "LOCAL_RESPONSE_NORMALIZATION" not in histogram


def test_window_matrix_is_onnx_window():
    """ONNX: channel c sums [c - floor((size-1)/2), c + ceil((size-1)/2)], clipped to [0, C); an
    even size reaches one channel further up (ONNX Runtime refuses even sizes: checked here only)."""
    band = window_matrix(6, 4, 4.0)  # alpha / size = 1
    for c in range(6):
        assert np.flatnonzero(band[c]).tolist() == list(range(max(0, c - 1), min(6, c + 3)))


def test_lrn_stays_in_one_xnnpack_partition(tmp_path):
    """beta 0.75 between int8 convs: DEQUANTIZE, the float kernels and QUANTIZE all delegated."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("LRN", ["r1"], ["n1"], name="lrn", size=5, alpha=1e-3, beta=0.75, bias=1.0),
             helper.make_node("Conv", ["n1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = {"w1": (RNG.normal(size=(8, 3, 3, 3)) * 0.5).astype(np.float32),
             "w2": (RNG.normal(size=(4, 8, 3, 3)) * 0.3).astype(np.float32)}
    report = check_conformance(make_model(nodes, {"x": [1, 3, 10, 10]}, ["y"], inits), tmp_path)
    assert report.result["float_nodes"] == ["lrn"]
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(tmp_path / "tflite" / name)) == 1, name


def test_lrn_over_other_ranks_is_refused_by_name():
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn3d", size=3)
    problems = unsupported_nodes(make_model([node], {"x": [1, 4, 7]}, ["y"]), "arm-cpu")
    assert problems == [("lrn3d", "LRN", "only 4-D NCHW input is supported (input 'x' has 3 dims)")]


def test_int8_alexnet_block_matches_onnxruntime(tmp_path):
    """Conv -> Relu -> LRN -> MaxPool -> Conv -> Relu -> LRN as AlexNet writes it (size 5, alpha
    1e-4, beta 0.75, activations in the hundreds), built by the CLI from the file as written; the
    int8 .tflite on held-out inputs against ONNX Runtime FP32 on the same file."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("LRN", ["r1"], ["n1"], name="norm1", size=5, alpha=1e-4, beta=0.75, bias=1.0),
             helper.make_node("MaxPool", ["n1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("LRN", ["r2"], ["y"], name="norm2", size=5, alpha=1e-4, beta=0.75, bias=1.0)]
    inits = {"w1": (RNG.normal(size=(16, 3, 5, 5)) * 20).astype(np.float32),
             "b1": RNG.normal(size=16).astype(np.float32),
             "w2": (RNG.normal(size=(12, 16, 5, 5)) * 0.3).astype(np.float32),
             "b2": RNG.normal(size=12).astype(np.float32)}
    model = make_model(nodes, {"x": [1, 3, 31, 31]}, ["y"], inits, opset=9)
    onnx.save(model, tmp_path / "m.onnx")
    calib = RNG.normal(size=(32, 1, 3, 31, 31)).astype(np.float32)
    held = RNG.normal(size=(4, 1, 3, 31, 31)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=calib)
    np.savez(tmp_path / "e.npz", x=held)
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), "--eval",
                     str(tmp_path / "e.npz"), "--target", "arm-cpu", "--out", str(out), "--no-host-report")
    assert result.returncode == 0, result.stderr
    from edgepipe.backends.tflite.runtime import run_tflite

    manifest = json.loads((out / "manifest.json").read_text())
    io = manifest["io"]
    fp32_io = {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in io.items()}
    want = np.concatenate([graph.make_session(model).run(None, {"x": x})[0] for x in held])
    fp32 = np.concatenate([run_tflite(out / "model.fp32.tflite", fp32_io, {"x": x})["y"] for x in held])
    int8 = np.concatenate([run_tflite(out / "model.tflite", io, {"x": x})["y"] for x in held])
    np.testing.assert_allclose(fp32, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert quantmath.sqnr_db(want, int8) > 30.0
    assert manifest["delegation"]["outside"] == {}
