"""Delegation as users see it: the build's one line, the host report (int8 and fp32 timed in one
run, partitions, ops outside XNNPACK) and `inspect --target arm-cpu`'s prediction, each checked
against the real LiteRT interpreter's node list (delegate_partitions), not against itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

from edgepipe.backends.tflite import delegation
from tests.helpers import run_cli
from tests.tflite_harness import convert, delegate_partitions, make_model

RNG = np.random.default_rng(5)
CONV_W = RNG.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.3


def _conv_exp_conv():
    """Conv -> Exp -> Conv: EXP has no int8 XNNPACK kernel (builtins.py), so it splits the graph."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Exp", ["a"], ["b"], name="exp"),
             helper.make_node("Conv", ["b", "w"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    return make_model(nodes, {"x": [1, 4, 8, 8]}, ["y"], {"w": CONV_W})


def test_measured_outside_ops_match_the_prediction_and_the_interpreter(tmp_path):
    model = _conv_exp_conv()
    result, _ = convert(model, tmp_path)
    measured = delegation.measure(tmp_path / "model.tflite")
    assert measured["partitions"] == len(delegate_partitions(tmp_path / "model.tflite")) == 2
    assert measured["outside"] == {"EXP": 1}
    assert delegation.predicted_outside(result["kernels"])["outside"] == {"EXP": 1}
    assert delegation.predict(model)["outside"] == {"EXP": 1}  # placeholder ranges, same ops
    line = delegation.summary_line(measured)
    assert "2 partitions" in line and "EXP x1" in line


def test_build_line_report_and_inspect_name_the_ops_outside_xnnpack(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_exp_conv(), str(path))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=RNG.standard_normal((8, 1, 4, 8, 8)).astype(np.float32).reshape(8, 4, 8, 8))
    inspected = run_cli("inspect", str(path), "--target", "arm-cpu", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "int8 ops predicted outside XNNPACK: EXP x1" in inspected.stdout
    out = tmp_path / "bundle"
    built = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--calib", str(calib), "--out", str(out),
                    cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "XNNPACK int8: 2 partitions; on builtin kernels: EXP x1" in built.stdout
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["delegation"] == {"partitions": 2, "outside": {"EXP": 1}}
    assert results["compare"]["delegation"]["partitions"] == len(delegate_partitions(out / "model.fp32.tflite"))
    assert "EXP x1" in (out / "report" / "report.md").read_text()
