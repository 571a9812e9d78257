"""A ViT-like model (patch conv, two timm-style attention blocks) from a `module:factory`: in
int8 one XNNPACK partition, and no more TRANSPOSE ops than the ONNX graph has Transposes
(layout propagation: patch-embedding reshape in NHWC, one transpose for q/k/v, k^T as AdjY)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from edgepipe.fold.batchnorm import fold_batchnorm
from edgepipe.stages.export import run_export
from edgepipe.stages.simplify import run_simplify
from tests.tflite_harness import check_conformance, delegate_partitions, op_names, structured_inputs

TESTS = Path(__file__).parent


def _transposes(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "Transpose" for node in model.graph.node)


def test_vit_like_conforms_in_one_partition_with_fewer_transposes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    model = run_export("fixture_models:build_vit_like", None, {"image": [1, 3, 32, 32]})
    model = fold_batchnorm(run_simplify(model, check=False)[0])[0]
    report = check_conformance(model, tmp_path, structured_inputs(model, 6), fp32_rtol=1e-5, int8_steps=3.0)
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / name)) == 1, name
    assert report.result["op_histogram"].get("TRANSPOSE", 0) <= _transposes(model)


def test_cli_build_of_the_factory_reports_one_partition(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "bundle"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    built = subprocess.run([sys.executable, "-m", "edgepipe", "build", "--model", "fixture_models:build_vit_like",
                            "--input-shape", "image:1x3x32x32", "--target", "arm-cpu", "--calib", str(calib),
                            "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    assert "XNNPACK int8: 1 partition; no op on builtin kernels" in built.stdout
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["delegation"] == {"partitions": 1, "outside": {}}
    onnx_transposes = _transposes(onnx.load(str(out / "reference.onnx")))
    assert op_names(out / "model.tflite", "no_delegates").count("TRANSPOSE") <= onnx_transposes
