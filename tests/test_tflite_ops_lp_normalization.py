"""Conformance of LpNormalization (ops/lp_normalization.py): the L2 normalization embedding
models end in, after a dense layer (last axis) and on an NCHW conv output (channel axis: NHWC
layout, no transpose); p = 1 is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import unsupported_nodes
from tests.tflite_harness import check_conformance, make_model

RNG = np.random.default_rng(41)


def test_l2_normalized_embedding(tmp_path):
    weights = RNG.normal(size=(16, 24)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Gemm", ["x", "w"], ["e"], name="dense", transB=1),
             helper.make_node("Relu", ["e"], ["r"], name="relu"),
             helper.make_node("LpNormalization", ["r"], ["y"], name="l2", axis=1, p=2)]
    report = check_conformance(make_model(nodes, {"x": [1, 24]}, ["y"], {"w": weights}), tmp_path)
    assert "l2" in report.result["float_nodes"]


def test_l2_normalization_over_channels(tmp_path):
    weights = RNG.normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("LpNormalization", ["c"], ["y"], name="l2", axis=1, p=2)]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 5, 6]}, ["y"], {"w": weights}), tmp_path)
    assert "TRANSPOSE" not in report.result["op_histogram"]


@pytest.mark.parametrize("p", [1])
def test_other_norms_are_refused_by_name(p):
    model = make_model([helper.make_node("LpNormalization", ["x"], ["y"], name="l1", axis=-1, p=p)], {"x": [1, 8]}, ["y"])
    (entry,) = unsupported_nodes(model)
    assert entry[0] == "l1" and "only the L2 norm" in entry[2]


def test_an_all_zero_slice_normalizes_to_zero(tmp_path):
    """ONNX gives 0 where the norm is 0 (x / norm only where norm != 0): a Relu row that never fires."""
    from edgepipe.backends.tflite.runtime import run_tflite
    from tests.tflite_harness import run_onnx

    weights = np.zeros((4, 8), np.float32)
    weights[:2] = RNG.normal(size=(2, 8)) * 0.5
    nodes = [helper.make_node("Gemm", ["x", "w"], ["e"], name="dense", transB=1),
             helper.make_node("LpNormalization", ["e"], ["y"], name="l2", axis=0, p=2)]
    model = make_model(nodes, {"x": [3, 8]}, ["y"], {"w": weights})
    report = check_conformance(model, tmp_path)
    feed = {"x": RNG.normal(size=(3, 8)).astype(np.float32)}
    expected = run_onnx(model, feed)["y"]
    assert np.all(expected[:, 2:] == 0)
    fp32_io = {k: [dict(s, dtype="float32", quantization=None) for s in v] for k, v in report.result["io"].items()}
    got = run_tflite(report.out_dir / "model.fp32.tflite", fp32_io, feed)["y"]
    assert np.all(np.isfinite(got)) and np.all(got[:, 2:] == 0)
