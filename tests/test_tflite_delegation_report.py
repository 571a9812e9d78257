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


def _results(**extra) -> dict:
    return {"target": "arm-cpu", "where": "host", "model": "model.tflite", "samples": 0,
            "latency_ms": {"p50": 2.0, "p90": 2.5, "p99": 3.0, "mean": 2.1}, **extra}


def test_report_shows_both_latencies_speedup_and_escaped_ops(tmp_path):
    from edgepipe.delivery.report import render_report

    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(
        compare={"model": "model.fp32.tflite", "latency_ms": {"p50": 5.0}}, speedup=2.5,
        delegation={"partitions": 3, "outside": {"<script>alert(1)</script>": 2, "SOFTMAX": 1}})))
    html = render_report(path, out_dir=tmp_path / "out").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; x2" in html
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| latency p50, compared model (same run) | 5 ms |" in md
    assert "| speed-up vs compared model (p50) | 2.5 x |" in md and "| XNNPACK partitions | 3 |" in md
    assert "`model.fp32.tflite`" in md and "SOFTMAX x1" in md


def test_wrongly_typed_speed_fields_are_refused_in_one_line(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(delegation={"partitions": "many", "outside": {}})))
    result = run_cli("report", str(path), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2 and "'delegation.partitions' must be a number or null" in result.stderr
    assert "Traceback" not in result.stderr
