"""Shapes inside the tool: raw ONNX files with symbolic / -1 / 0 dims, static leading dims, an RNN
state with its batch on axis 1, several inputs and none, built through the CLI on arm-cpu and
jetson and compared with ONNX Runtime on the original model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgepipe import graph
from edgepipe.stages.export import fix_static_shapes
from tests import shape_models as sm
from tests.helpers import run_cli
from tests.test_cli_errors import assert_clean_error

TARGETS = ["arm-cpu", "jetson"]
RNG = np.random.default_rng(0)
IMAGES = RNG.standard_normal((6, 3, 8, 8)).astype(np.float32)
LINES = RNG.standard_normal((6, 3, 8, 16)).astype(np.float32)


def _built(result):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("extra", [["--input-shape", "x:1x3x8x16"], []], ids=["input-shape", "from-calib"])
def test_symbolic_dims_and_stale_value_info(tmp_path, target, extra):
    result, out = sm.build(tmp_path, sm.ocr_like(), {"x": LINES}, target, *extra)
    _built(result)
    reference = onnx.load(str(out / "reference.onnx"))
    assert all(graph.is_static(graph.declared_shape(v)) for v in
               list(reference.graph.input) + list(reference.graph.output) + list(reference.graph.value_info))
    sm.check_bundle(out, target, sm.ocr_like(), {"x": LINES[:1]})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("batch,data", [(-1, IMAGES), (0, IMAGES[:, None])], ids=["minus-one", "zero"])
def test_minus_one_and_zero_batch_are_dynamic(tmp_path, target, batch, data):
    result, out = sm.build(tmp_path, sm.conv_with_batch(batch), {"x": data}, target)
    _built(result)
    # ONNX Runtime takes a stored 0 literally; the same network with a named batch is the reference
    sm.check_bundle(out, target, sm.conv_with_batch("N"), {"x": IMAGES[:1]})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (6,)], ids=["3d", "1d"])
def test_static_leading_dim_is_part_of_each_sample(tmp_path, target, shape):
    data = RNG.standard_normal((5, *shape)).astype(np.float32)
    # the same file as --eval: without it the build holds out part of the calibration set
    result, out = sm.build(tmp_path, sm.static_leading(shape), {"x": data}, target,
                           "--eval", str(tmp_path / "model.npz"))
    _built(result)
    with np.load(out / "eval" / "eval.npz") as bundled:
        assert bundled["input:x"].shape == (5, *shape) and bundled["reference:y"].shape == (5, *shape)
    sm.check_bundle(out, target, sm.static_leading(shape), {"x": data[3]})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("extra", [["--input-shape", "h:2x1x8"], []], ids=["input-shape", "from-calib"])
def test_rnn_state_with_batch_on_axis_1_and_two_inputs(tmp_path, target, extra):
    data = {"x": RNG.standard_normal((6, 7)).astype(np.float32),
            "h": RNG.standard_normal((6, 2, 1, 8)).astype(np.float32)}
    result, out = sm.build(tmp_path, sm.rnn_state(), data, target, *extra)
    _built(result)
    sm.check_bundle(out, target, sm.rnn_state(), {"x": data["x"][:1], "h": data["h"][0]})


def test_sample_shape_mismatch_shows_both_forms(tmp_path):
    result, out = sm.build(tmp_path, sm.conv_with_batch("N"), {"x": IMAGES[:, :, :4]}, "arm-cpu",
                           "--input-shape", "x:1x3x8x8")
    assert_clean_error(result, "'x'", "[N, 3, 8, 8] or [N, 1, 3, 8, 8]")
    assert not out.exists()


@pytest.mark.parametrize("target", TARGETS)
def test_model_without_inputs_is_one_line(tmp_path, target):
    result, out = sm.build(tmp_path, sm.no_inputs(), {"x": np.zeros((2, 2), np.float32)}, target)
    assert_clean_error(result, "no inputs")
    assert not out.exists()


def test_input_that_is_also_an_output_builds_for_jetson(tmp_path):
    data = {"x": RNG.standard_normal((6, 6)).astype(np.float32)}
    result, out = sm.build(tmp_path, sm.input_is_output(), data, "jetson")
    _built(result)
    sm.check_bundle(out, "jetson", sm.input_is_output(), {"x": data["x"][:1]})


def test_fixing_refreshes_every_recorded_shape():
    model = fix_static_shapes(sm.ocr_like(), {"x": [1, 3, 8, 16]}, "ocr.onnx")
    shapes = {v.name: graph.declared_shape(v) for v in list(model.graph.value_info) + list(model.graph.output)}
    assert shapes["c"] == (1, 4, 8, 16) and shapes["m"] == (1, 4, 1, 16) and shapes["y"] == (1, 16, 4)
    onnx.checker.check_model(model, full_check=True)


def test_wrong_rank_and_conflicting_dims_name_the_input():
    with pytest.raises(Exception, match="input 'x'.*3 dims.*declares 4"):
        fix_static_shapes(sm.ocr_like(), {"x": [1, 3, 8]}, "ocr.onnx")
    with pytest.raises(Exception, match="dim 1 of ocr.onnx is static and differs from 4"):
        fix_static_shapes(sm.ocr_like(), {"x": [1, 4, 8, 16]}, "ocr.onnx")


def test_host_report_runs_a_bundle_whose_input_has_no_batch_axis(tmp_path):
    data = RNG.standard_normal((5, 3, 4, 5)).astype(np.float32)
    model_path, calib = tmp_path / "lead.onnx", tmp_path / "lead.npz"
    onnx.save(sm.static_leading(), str(model_path))
    np.savez(calib, x=data)
    # --eval: without it 1 of the 5 samples is held out and the SQNR is measured on that one alone
    result = run_cli("build", "--model", str(model_path), "--calib", str(calib), "--eval", str(calib),
                     "--target", "arm-cpu", "--out", str(tmp_path / "out"), "--json", cwd=tmp_path)
    outputs = _built(result)["results"]["accuracy"]["outputs"]
    assert outputs["y"]["shape"] == [3, 4, 5] and outputs["y"]["sqnr_db"] > 30


def test_inspect_checks_the_static_graph_a_build_lowers(tmp_path):
    onnx.save(sm.ocr_like(), str(tmp_path / "ocr.onnx"))
    result = run_cli("inspect", str(tmp_path / "ocr.onnx"), "--input-shape", "x:1x3x8x16",
                        "--target", "arm-cpu", "--target", "jetson", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["inputs"][0]["shape"] == [1, 3, 8, 16] and info["outputs"][0]["shape"] == [1, 16, 4]
    assert info["unsupported"] == {"arm-cpu": [], "jetson": []}


def test_refresh_measures_what_inference_cannot_but_never_data_dependent_shapes():
    """Shape inference cannot follow a custom-domain op; one ONNX Runtime run can. A NonZero output
    depends on the input values, so a zero-input run must not fix its shape."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Gelu", ["r"], ["g"], domain="com.microsoft")]
    outputs = [helper.make_tensor_value_info(n, t, None) for n, t in (("nz", TensorProto.INT64), ("g", TensorProto.FLOAT))]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outputs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    refreshed = graph.refresh_shapes(model)
    shapes = {v.name: graph.declared_shape(v) for v in list(refreshed.graph.value_info) + list(refreshed.graph.output)}
    assert shapes["r"] == (1, 6) and shapes["g"] == (1, 6)
    assert not graph.is_static(shapes["nz"])
