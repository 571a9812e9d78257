"""Conformance of Sin, Cos (SIN / COS), Tan, Atan, Asin, Acos (float chains of delegated ops), float
islands in int8."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import (assert_onnx_case_fp32, check_conformance, delegate_partitions, make_model,
                                  structured_inputs)

@pytest.mark.parametrize("op_type,spread", [("Sin", 6.0), ("Cos", 6.0), ("Atan", 40.0), ("Tan", 1.4), ("Asin", 0.99),
                                            ("Acos", 0.99)])
def test_trigonometry_of_the_input(op_type, spread, tmp_path):
    model = make_model([helper.make_node(op_type, ["x"], ["y"], name="op")], {"x": [1, 3, 5, 6]}, ["y"])
    squash = np.tanh if op_type in ("Asin", "Acos") else (lambda v: v)  # inside [-1, 1]
    feeds = [{"x": (spread * squash(feed["x"])).astype(np.float32)} for feed in structured_inputs(model)]
    report = check_conformance(model, tmp_path, feeds, fp32_rtol=2e-6)
    assert report.result["float_nodes"] == ["op"]


@pytest.mark.parametrize("op_type", ["Sin", "Cos", "Atan"])
def test_trigonometry_after_conv_is_one_xnnpack_partition(op_type, tmp_path):
    """Small conv outputs: a steep function turns a one-step difference between int8 conv kernels
    into (input step / output step) output steps, so the conv output's grid is kept fine here."""
    weights = np.random.default_rng(43).normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.15
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["c"], ["y"], name="op")]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 5, 6]}, ["y"], {"w": weights}), tmp_path,
                               fp32_rtol=2e-6)
    assert report.result["float_nodes"] == ["op"]
    for path in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / path)) == 1, path


def test_atan_over_the_whole_float_range(tmp_path):
    """Tiny, huge and exactly +-1 arguments (the reductions' edges), against numpy's arctan."""
    values = np.array([0.0, 1e-30, -1e-8, 0.3, -0.41421356, 1.0, -1.0, 2.5, -17.0, 1e4, -3e9, 1e20, -3e38],
                      np.float32)
    model = make_model([helper.make_node("Atan", ["x"], ["y"], name="op")], {"x": [values.size]}, ["y"])
    feeds = [{"x": values}] + structured_inputs(model)
    report = check_conformance(model, tmp_path, feeds, fp32_rtol=2e-7)
    assert report.fp32_error["xnnpack"] <= 2e-7


@pytest.mark.parametrize("name", ["test_sin", "test_sin_example", "test_cos", "test_cos_example", "test_atan",
                                  "test_atan_example", "test_tan", "test_tan_example", "test_asin",
                                  "test_asin_example", "test_acos", "test_acos_example"])
def test_trigonometry_onnx_cases_fp32(name, tmp_path):
    assert_onnx_case_fp32(name, tmp_path, 1e-6)


@pytest.mark.parametrize("op_type,function", [("Asin", np.arcsin), ("Acos", np.arccos)])
def test_asin_acos_at_the_ends(op_type, function, tmp_path):
    values = np.array([-1.0, -0.9999999, -0.5, 0.0, 1e-20, 0.7071068, 0.9999, 1.0], np.float32)
    model = make_model([helper.make_node(op_type, ["x"], ["y"], name="op")], {"x": [values.size]}, ["y"])
    from tests.tflite_harness import run_tflite
    from edgepipe.backends.tflite import build_tflite

    result = build_tflite(model, None, tmp_path)
    got = run_tflite(tmp_path / "model.fp32.tflite", result["io"], {"x": values})["y"]
    np.testing.assert_allclose(got, function(values.astype(np.float64)), rtol=0, atol=1e-6)
