"""skl2onnx's ai.onnx.ml Scaler (a StandardScaler in front of an MLP) as standard Sub / Mul
(edgepipe/ml_ops.py): the same numbers as ONNX Runtime's Scaler kernel, and a pipeline that was
refused for it builds. Found on the surfaces-onnx-files surrogate MLPs (PyPI)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.ml_ops import standard_from_ml
from tests.helpers import run_cli

RNG = np.random.default_rng(12)


def _scaler_mlp(elem_type=onnx.TensorProto.FLOAT, per_feature: bool = True) -> onnx.ModelProto:
    """skl2onnx's MLPRegressor pipeline: Scaler -> Cast -> MatMul -> Add -> Relu -> MatMul -> Add."""
    offset = [5.36, 0.0, 12.77, 75.48] if per_feature else [3.0]
    scale = [0.355, 1.0, 0.147, 0.0232] if per_feature else [0.5]
    nodes = [helper.make_node("Scaler", ["input"], ["scaled"], name="Scaler", domain="ai.onnx.ml",
                              offset=offset, scale=scale),
             helper.make_node("Cast", ["scaled"], ["cast_input"], name="Cast", to=onnx.TensorProto.FLOAT),
             helper.make_node("MatMul", ["cast_input", "w1"], ["h"], name="MatMul1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="Add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="Relu1"),
             helper.make_node("MatMul", ["r", "w2"], ["o"], name="MatMul2"),
             helper.make_node("Add", ["o", "b2"], ["variable"], name="Add2")]
    inits = [numpy_helper.from_array(RNG.normal(size=(4, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.normal(size=16).astype(np.float32), "b1"),
             numpy_helper.from_array(RNG.normal(size=(16, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(RNG.normal(size=1).astype(np.float32), "b2")]
    g = helper.make_graph(nodes, "skl2onnx", [helper.make_tensor_value_info("input", elem_type, [None, 4])],
                          [helper.make_tensor_value_info("variable", onnx.TensorProto.FLOAT, [None, 1])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _features(dtype) -> np.ndarray:
    values = RNG.normal([5.0, 0.5, 12.0, 75.0], [2.0, 1.0, 5.0, 30.0], size=(6, 4))
    return values.astype(dtype) if np.issubdtype(dtype, np.floating) else np.round(values).astype(dtype)


@pytest.mark.parametrize("elem_type, dtype, per_feature", [(onnx.TensorProto.FLOAT, np.float32, True),
                                                          (onnx.TensorProto.FLOAT, np.float32, False),
                                                          (onnx.TensorProto.INT64, np.int64, True),
                                                          (onnx.TensorProto.DOUBLE, np.float64, True)])
def test_scaler_as_sub_mul_computes_what_onnxruntime_computes(elem_type, dtype, per_feature):
    model = _scaler_mlp(elem_type, per_feature)
    rewritten, count = standard_from_ml(model)
    assert count == 1 and not any(n.domain == "ai.onnx.ml" for n in rewritten.graph.node)
    assert all(o.domain != "ai.onnx.ml" for o in rewritten.opset_import)
    onnx.checker.check_model(rewritten)
    x = _features(dtype)
    (expected,) = graph.make_session(model).run(None, {"input": x})
    (got,) = graph.make_session(rewritten).run(None, {"input": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_scaler_pipeline_builds_for_arm_cpu(tmp_path):
    """It was refused: node 'Scaler' (ai.onnx.ml::Scaler) ... custom domain 'ai.onnx.ml' has no
    implementation on arm-cpu. Now it builds, and its fp32 .tflite computes what ORT computes."""
    from edgepipe.backends.tflite.runtime import run_tflite

    model = _scaler_mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_features(np.float32).reshape(6, 1, 4))
    out = tmp_path / "bundle"
    proc = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--input-shape", "input:1x4",
                   "--calib", str(calib), "--no-host-report", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    io = json.loads((out / "manifest.json").read_text())["io"]
    x = _features(np.float32)[:1]
    (expected,) = graph.make_session(model).run(None, {"input": x})
    got = run_tflite(out / "model.fp32.tflite", io, {"input": x})["variable"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
