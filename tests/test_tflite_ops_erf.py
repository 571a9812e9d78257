"""Conformance of Erf and of exact GELU written with Erf (the form exporters use before opset 20)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite.lower import prepare_model
from tests.tflite_harness import assert_onnx_case_fp32, check_conformance, delegate_partitions, make_model

SQRT2 = np.float32(np.sqrt(2.0))
CONSTANTS = {"sqrt2": np.array(SQRT2), "inv_sqrt2": np.array(1 / SQRT2, np.float32),
             "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
             "w": np.random.default_rng(5).normal(size=(6, 3, 3, 3)).astype(np.float32) * 0.4}

GELU_FORMS = {  # y = GELU(t), t = Conv(x); every operand order torch / Hugging Face exports produce
    "torch-nn-gelu": [("Div", ["t", "sqrt2"], "d"), ("Erf", ["d"], "e"), ("Add", ["e", "one"], "a"),
                      ("Mul", ["t", "a"], "m"), ("Mul", ["m", "half"], "y")],
    "half-x-first": [("Mul", ["t", "half"], "h"), ("Mul", ["inv_sqrt2", "t"], "d"), ("Erf", ["d"], "e"),
                     ("Add", ["one", "e"], "a"), ("Mul", ["h", "a"], "y")],
    "half-a-first": [("Div", ["t", "sqrt2"], "d"), ("Erf", ["d"], "e"), ("Add", ["e", "one"], "a"),
                     ("Mul", ["a", "half"], "g"), ("Mul", ["t", "g"], "y")],
}


def gelu_model(form: str, extra_outputs=(), conv: bool = True):
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"], name="conv", pads=[1, 1, 1, 1])] if conv else []
    nodes += [helper.make_node(op, inputs, [out], name=f"{op.lower()}_{out}") for op, inputs, out in GELU_FORMS[form]]
    inputs = {"x": [1, 3, 8, 8]} if conv else {"t": [1, 6, 8, 8]}
    return make_model(nodes, inputs, ["y", *extra_outputs], CONSTANTS if conv else {k: v for k, v in CONSTANTS.items() if k != "w"})


@pytest.mark.parametrize("form", sorted(GELU_FORMS))
def test_erf_gelu_becomes_one_exact_gelu(form, tmp_path):
    model = gelu_model(form)
    report = check_conformance(model, tmp_path, fp32_rtol=1e-6)
    histogram = report.result["op_histogram"]
    assert histogram["GELU"] == 1 and "MUL" not in histogram and "DIV" not in histogram
    # float GELU inside the XNNPACK partition (the int8 GELU kernel is not delegated)
    assert len(report.result["float_nodes"]) == 1
    assert len(delegate_partitions(report.out_dir / "model.tflite")) == 1
    fused = [n for n in prepare_model(model).graph.node if n.op_type == "Gelu"]
    assert len(fused) == 1 and fused[0].input[0] == "t" and fused[0].output[0] == "y"


def test_gelu_pattern_with_a_used_intermediate_is_left_alone(tmp_path):
    """Erf's output is also a graph output: nothing is fused, Erf runs as its own float island
    (on the graph input: a one-step difference upstream would be amplified by the steep erf)."""
    model = gelu_model("torch-nn-gelu", extra_outputs=["e"], conv=False)
    report = check_conformance(model, tmp_path)
    assert "GELU" not in report.result["op_histogram"]
    assert report.result["float_nodes"] == ["erf_e"]


def test_standalone_erf(tmp_path):
    nodes = [helper.make_node("Erf", ["x"], ["y"], name="erf")]
    feeds = [{"x": np.linspace(-5, 5, 3 * 8 * 9, dtype=np.float32).reshape(1, 3, 8, 9) * s} for s in (1.0, 0.3, -0.7)]
    report = check_conformance(make_model(nodes, {"x": [1, 3, 8, 9]}, ["y"]), tmp_path, feeds, fp32_rtol=1e-6)
    assert report.result["float_nodes"] == ["erf"]


@pytest.mark.parametrize("name", ["test_erf", "test_gelu_default_1", "test_gelu_default_2"])
def test_onnx_cases_match_expected_outputs(name, tmp_path):
    assert_onnx_case_fp32(name, tmp_path, tolerance=1e-6)
