"""float64 tensors on arm-cpu (TFLite has no float64 kernels): computed in float32, said in one
warning line, quantized exactly as their float32 twins; refused only where float32 changes an
integer. ONNX Runtime on the float64 file is the reference."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepipe import graph
from edgepipe.errors import UserError
from edgepipe.stages.float64 import to_float32
from tests.helpers import deployed_outputs, run_cli, sqnr_db
from tests.tflite_harness import convert, structured_inputs

RNG = np.random.default_rng(64)
SCALE = RNG.uniform(0.5, 2.0, (1, 8)).astype(np.float64)
DENSE = RNG.normal(size=(6, 8)).astype(np.float32) * 0.5


def decoding_tail(double: bool, scale=SCALE) -> onnx.ModelProto:
    """A conv feature then, as SwiftF0 decodes its pitch, a (float64) Softmax / weighted sum / Exp."""
    kind = onnx.TensorProto.DOUBLE if double else onnx.TensorProto.FLOAT
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
             helper.make_node("Cast", ["h"], ["hd"], name="to_double", to=kind),
             helper.make_node("Softmax", ["hd"], ["p"], name="softmax", axis=-1),
             helper.make_node("Mul", ["p", "scale"], ["weighted"], name="weigh"),
             helper.make_node("ReduceSum", ["weighted"], ["s"], name="sum", keepdims=0),
             helper.make_node("Exp", ["s"], ["y"], name="exp")]
    inits = [onnx.numpy_helper.from_array(DENSE, "w"),
             onnx.numpy_helper.from_array(np.asarray(scale, np.float64 if double else np.float32), "scale")]
    model = helper.make_model(helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", 1, [1, 6])],
                                                [helper.make_tensor_value_info("y", kind, None)], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return graph.infer_shapes(model)


def test_float64_tail_is_retyped_and_named():
    model = decoding_tail(double=True)
    single, changed, first = to_float32(model, "tail.onnx", "arm-cpu")
    assert changed >= 3 and first == "to_double"
    kinds = {t.data_type for t in single.graph.initializer} | {i.type.tensor_type.elem_type for i in
                                                               (*single.graph.output, *single.graph.value_info)}
    assert onnx.TensorProto.DOUBLE not in kinds
    assert to_float32(decoding_tail(double=False), "tail.onnx", "arm-cpu")[1:] == (0, "")


def test_int8_model_quantizes_float64_like_its_float32_twin(tmp_path):
    single, _, _ = to_float32(decoding_tail(double=True), "tail.onnx", "arm-cpu")
    twin = decoding_tail(double=False)
    feeds = structured_inputs(twin)
    ours, _ = convert(single, tmp_path / "double", feeds)
    theirs, _ = convert(twin, tmp_path / "twin", feeds)
    assert ours["io"] == theirs["io"] and ours["float_nodes"] == theirs["float_nodes"]
    assert (tmp_path / "double" / "model.tflite").read_bytes() == (tmp_path / "twin" / "model.tflite").read_bytes()


def test_float64_constant_with_inexact_integers_is_refused():
    scale = SCALE.copy()
    scale[0, 3] = 2 ** 24 + 1  # a sample count float32 rounds to 2**24
    with pytest.raises(UserError, match=r"float64 constant 'scale' .*16777217.*arm-cpu has no float64 kernels"):
        to_float32(decoding_tail(double=True, scale=scale), "tail.onnx", "arm-cpu")
    scale[0, 3] = 2 ** 25  # exact in float32: accepted
    assert to_float32(decoding_tail(double=True, scale=scale), "tail.onnx", "arm-cpu")[1] > 0


@pytest.mark.slow
def test_cli_builds_float64_tail_on_arm_cpu_with_one_warning(tmp_path):
    model = decoding_tail(double=True)
    path = tmp_path / "tail.onnx"
    onnx.save(model, str(path))
    x = RNG.normal(size=(16, 1, 6)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--calib", str(tmp_path / "calib.npy"),
                     "--out", str(out), "--no-host-report", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [w for w in json.loads(result.stdout)["warnings"] if "float64" in w]
    assert len(lines) == 1 and "node 'to_double'" in lines[0], lines
    (expected,) = graph.make_session(model).run(None, {"x": x[0]})
    from edgepipe.backends.tflite.runtime import run_tflite

    io = json.loads((out / "manifest.json").read_text())["io"]
    fp32 = run_tflite(out / "model.fp32.tflite", {k: [dict(s, dtype="float32", quantization=None) for s in v]
                                                   for k, v in io.items()}, {"x": x[0]})
    np.testing.assert_allclose(np.asarray(list(fp32.values())[0]), expected, rtol=1e-5)
    (deployed,) = deployed_outputs(out, {"x": x[0]})
    np.testing.assert_allclose(np.asarray(deployed, np.float64), expected, rtol=0.05)


def test_float64_graph_input_is_retyped_to_float32():
    """The bundle takes float32 where the model declared a float64 input (run.py casts the data)."""
    model = decoding_tail(double=True)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    single, changed, _ = to_float32(model, "tail.onnx", "arm-cpu")
    assert changed > 0 and single.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE  # the caller's model unchanged


def _double_mlp(path) -> onnx.ModelProto:
    """A float64 network as torch exports it after `.double()`: float64 input, weights and output."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double().eval()
    torch.onnx.export(net, (torch.zeros(1, 6, dtype=torch.float64),), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    return onnx.load(str(path))


@pytest.mark.slow
def test_cli_builds_a_float64_input_model_on_arm_cpu_against_onnxruntime(tmp_path):
    model = _double_mlp(tmp_path / "mlp.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    calib, evals = RNG.normal(size=(64, 1, 6)), RNG.normal(size=(16, 1, 6))  # float64, as the app has them
    np.save(tmp_path / "calib.npy", calib)
    np.save(tmp_path / "eval.npy", evals)
    # jetson first, in the same project: its stage cache holds the float64 graph, which arm-cpu must not reuse
    jetson = run_cli("build", "--model", "mlp.onnx", "--target", "jetson", "--calib", "calib.npy", "--out",
                     str(tmp_path / "jetson"), "--no-host-report", cwd=tmp_path)
    assert jetson.returncode == 0, jetson.stderr
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", "mlp.onnx", "--target", "arm-cpu", "--calib", "calib.npy", "--eval",
                     "eval.npy", "--out", str(out), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    lines = [w for w in summary["warnings"] if "float64" in w]
    assert len(lines) == 1 and "float64 input(s) 'x' take float32" in lines[0], lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert [spec["dtype"] for spec in manifest["io"]["inputs"]] == ["float32"]
    with np.load(out / "eval" / "eval.npz") as data:
        assert data["input:x"].dtype == np.float32
    # the bundle's own run.py ran on this host (the host report): int8 vs the FP32 reference
    assert summary["results"]["accuracy"]["outputs"]["y"]["sqnr_db"] > 25.0
    session = graph.make_session(model)  # ONNX Runtime on the float64 file, float64 data
    expected = np.concatenate([session.run(None, {"x": x})[0] for x in evals])
    from edgepipe.backends.tflite.runtime import run_tflite

    fp32_io = {k: [dict(s, quantization=None) for s in v] for k, v in manifest["io"].items()}
    fp32 = np.concatenate([run_tflite(out / "model.fp32.tflite", fp32_io, {"x": x})["y"] for x in evals])
    np.testing.assert_allclose(fp32, expected, rtol=1e-4, atol=1e-5)
    int8 = np.concatenate([deployed_outputs(out, {"x": x})[0] for x in evals])
    assert sqnr_db(expected, int8) > 25.0


def test_float64_data_beyond_float32_is_refused_by_sample(tmp_path):
    """float64 data for a float32 input: a value the cast would turn into Inf is named, not fed."""
    from edgepipe.data import load_dataset

    values = RNG.normal(size=(4, 6))
    np.save(tmp_path / "ok.npy", values)
    assert load_dataset(tmp_path / "ok.npy", {"x": ((1, 6), np.float32)}).sample(3)["x"].dtype == np.float32
    values[2, 1] = 1e39
    np.save(tmp_path / "big.npy", values)
    with pytest.raises(UserError, match=r"big.npy: input 'x' has values beyond float32's range in sample 2"):
        load_dataset(tmp_path / "big.npy", {"x": ((1, 6), np.float32)})
    assert len(load_dataset(tmp_path / "big.npy", {"x": ((1, 6), np.float64)})) == 4  # a float64 input takes it


def test_bias_correction_leaves_float64_layers_alone(tmp_path):
    """A float64 Gemm stays float in jetson's Q/DQ model: no int8 error to correct, and a float32
    bias written into it would make the model unloadable."""
    from edgepipe.calibrate.bias_correction import correction_sites

    model = _double_mlp(tmp_path / "mlp.onnx")
    assert correction_sites(model) == {}
    single, _, _ = to_float32(model, "mlp.onnx", "arm-cpu")  # the same layers in float32 are corrected
    assert len(correction_sites(single)) == 2
