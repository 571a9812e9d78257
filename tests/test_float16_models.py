"""float16 ONNX models as users make them (torch `.half()` export, ONNX Runtime's float16 converter)
are computed in float32 and quantized on every target; ONNX Runtime on the float16 file is the reference."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16

from edgepipe import graph
from edgepipe.stages.float16 import to_float32
from tests import fixture_models
from tests.helpers import deployed_outputs, run_cli, sqnr_db

SHAPE = (1, 3, 16, 16)


def torch_half_export(path):
    net = fixture_models.build_small_cnn().half()
    torch.onnx.export(net, (torch.zeros(SHAPE, dtype=torch.half),), str(path), input_names=["x"], dynamo=False)
    return path


def ort_converter_export(path, keep_io_types: bool):
    fp32 = path.parent / "fp32.onnx"
    torch.onnx.export(fixture_models.build_small_cnn(), (torch.zeros(SHAPE),), str(fp32), input_names=["x"],
                      dynamo=False)
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=keep_io_types), str(path))
    return path


def ort_output(model_or_path, x: np.ndarray) -> np.ndarray:
    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    name = graph.graph_inputs(model)[0].name
    dtype = np.float16 if graph.graph_inputs(model)[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else np.float32
    (out,) = graph.make_session(model).run(None, {name: x.astype(dtype)})
    return out.astype(np.float32)


@pytest.mark.parametrize("make", ["torch_half", "ort_converter", "ort_converter_io_float32"])
def test_upcast_model_computes_what_the_float16_model_computes(tmp_path, make):
    path = tmp_path / "half.onnx"
    if make == "torch_half":
        torch_half_export(path)
    else:
        ort_converter_export(path, keep_io_types=make.endswith("io_float32"))
    half = onnx.load(str(path))
    upcast, changed = to_float32(half)
    assert changed > 0
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in upcast.graph.initializer)
    assert not any(a.i == onnx.TensorProto.FLOAT16 for n in upcast.graph.node if n.op_type == "Cast" for a in n.attribute)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    reference = ort_output(half, x)
    np.testing.assert_allclose(ort_output(upcast, x), reference, rtol=1e-2, atol=1e-2)


def test_keep_io_casts_at_the_boundary(tmp_path):
    half = onnx.load(str(torch_half_export(tmp_path / "half.onnx")))
    upcast, _ = to_float32(half, keep_io=True)
    onnx.checker.check_model(upcast, full_check=True)
    assert [i.type.tensor_type.elem_type for i in upcast.graph.input] == [onnx.TensorProto.FLOAT16]
    assert [o.type.tensor_type.elem_type for o in upcast.graph.output] == [onnx.TensorProto.FLOAT16]
    assert (upcast.graph.node[0].op_type, upcast.graph.node[-1].op_type) == ("Cast", "Cast")
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in upcast.graph.initializer)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer), "input model changed"
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(ort_output(upcast, x), ort_output(half, x), rtol=1e-2, atol=1e-2)


def test_float32_model_is_returned_unchanged(tmp_path):
    model = onnx.load(str(ort_converter_export(tmp_path / "half.onnx", True).parent / "fp32.onnx"))
    same, changed = to_float32(model)
    assert changed == 0 and same is model


@pytest.mark.parametrize("target,make", [("jetson", "torch_half"), ("arm-cpu", "torch_half"),
                                         ("arm-cpu", "ort_converter_io_float32")])
def test_float16_model_builds_int8_on_every_target(tmp_path, target, make):
    path = tmp_path / "half.onnx"
    torch_half_export(path) if make == "torch_half" else ort_converter_export(path, keep_io_types=True)
    calib = tmp_path / "calib.npy"
    x = np.random.default_rng(1).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    np.save(calib, x)
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", str(path), "--target", target, "--calib", str(calib), "--out", str(out),
                     "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any("float16 model computed in float32" in w for w in json.loads(result.stdout)["warnings"])
    if target == "jetson":  # TensorRT takes float16 I/O: the app's interface stays
        qdq = onnx.load(str(out / "model.qdq.onnx"))
        assert qdq.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        dq_outputs = {d.output[0] for d in qdq.graph.node if d.op_type == "DequantizeLinear"}
        weighted = [n for n in qdq.graph.node if n.op_type in ("Conv", "Gemm")]
        assert weighted and all(n.input[0] in dq_outputs for n in weighted)
    feed = x[:1].astype(np.float16 if target == "jetson" else np.float32)
    (deployed,) = deployed_outputs(out, {"x": feed})
    assert sqnr_db(ort_output(path, x[:1]), np.asarray(deployed, np.float32)) > 25


def test_unsorted_graph_is_put_in_order_on_load(tmp_path):
    """ONNX Runtime's converter appends the input casts at the end: the file as it writes it loads."""
    path = ort_converter_export(tmp_path / "half.onnx", keep_io_types=True)
    raw = onnx.load(str(path))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(raw)
    loaded = graph.load_model(path)
    onnx.checker.check_model(loaded)
    assert sorted(n.name for n in loaded.graph.node) == sorted(n.name for n in raw.graph.node)
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(ort_output(loaded, x), ort_output(raw, x))


@pytest.mark.parametrize("make", ["torch_half", "ort_converter_io_float32"])
def test_inspect_reports_a_float16_model_as_build_builds_it(tmp_path, make):
    """A Keras mixed-precision export casts to float16 inside (slovorez's morpheme segmenter, PyPI):
    build computes it in float32 on arm-cpu, so inspect must not list that Cast as unsupported
    (it did: 'cast to FLOAT16: only float32 / float64, int32 / int64 and bool are supported')."""
    path = tmp_path / "half.onnx"
    torch_half_export(path) if make == "torch_half" else ort_converter_export(path, keep_io_types=True)
    proc = run_cli("inspect", str(path), "--target", "arm-cpu", "--target", "jetson", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["unsupported"] == {"arm-cpu": [], "jetson": []}
    assert "arm-cpu" in info["delegation"]
