"""input_values pins an input to a constant; an If whose condition is then constant (or constant
once shapes are static) is replaced by its branch. Checked against ONNX Runtime on the original
model fed the pinned value, and through the CLI on both targets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgepipe import branches, graph
from edgepipe.errors import UserError
from edgepipe.stages.export import run_export
from tests.branch_models import data_if_model, sample_rate_model, shape_if_model
from tests.helpers import run_cli

RNG = np.random.default_rng(2)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return graph.make_session(model).run(None, feed)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_pinned_sample_rate_keeps_the_branch_it_selects(rate, tmp_path):
    path = tmp_path / "rate.onnx"
    onnx.save(sample_rate_model(), str(path))
    model = run_export(str(path), None, {}, input_values={"sr": rate})
    assert [i.name for i in graph.graph_inputs(model)] == ["x"]
    assert not any(n.op_type == "If" for n in model.graph.node)
    x = RNG.normal(size=(1, 8)).astype(np.float32)
    (expected,) = _run(sample_rate_model(), {"x": x, "sr": np.array(rate, np.int64)})
    (got,) = _run(model, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    kept = {n.op_type for n in model.graph.node}
    assert ("Relu" in kept) == (rate == 16000) and ("Tanh" in kept) == (rate != 16000)


def test_if_on_a_static_shape_folds_with_its_nested_if(tmp_path):
    """PyTorch's `if x.shape[0] == 1`: no input_values needed once --input-shape fixes the dim."""
    path = tmp_path / "shape_if.onnx"
    onnx.save(shape_if_model(), str(path))
    for rows, kept in ((1, "Squeeze"), (3, "ReduceMax")):
        model = run_export(str(path), None, {"x": [rows, 6]})
        assert not any(n.op_type == "If" for n in model.graph.node)
        assert kept in {n.op_type for n in model.graph.node}
        x = RNG.normal(size=(rows, 6)).astype(np.float32)
        np.testing.assert_allclose(_run(model, {"x": x})[0], _run(shape_if_model(), {"x": x})[0], rtol=1e-6)


@pytest.mark.parametrize(("values", "fragment"), [
    ({"rate": 16000}, "has no input 'rate' (inputs: x, sr)"),
    ({"sr": 16000.5}, "the input is int64, got the non-integer 16000.5"),
    ({"sr": [16000, 8000]}, "the input has shape [], got a value of shape [2]"),
    ({"sr": 2**70}, "does not fit"),
])
def test_bad_pins_are_refused_naming_the_input(values, fragment, tmp_path):
    path = tmp_path / "rate.onnx"
    onnx.save(sample_rate_model(), str(path))
    with pytest.raises(UserError) as caught:
        run_export(str(path), None, {}, input_values=values)
    assert fragment in str(caught.value) and "input_values" in str(caught.value)


def test_an_if_on_data_is_refused_naming_the_node_and_the_input():
    model = branches.pin_inputs(data_if_model(), {"sr": 16000}, "model.onnx")
    with pytest.raises(UserError, match=r"node 'rate_switch' \(If\): its condition 'gate_on' reads input 'x'; "
                                        r"pin it with input_values"):
        branches.fold_constant_ifs(model, {"sr": 16000})
    unpinned = branches.fold_constant_ifs(data_if_model())  # no pins asked for: left to the target's check
    assert any(n.op_type == "If" for n in unpinned.graph.node)


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
def test_cli_builds_the_pinned_branch(target, tmp_path):
    path = tmp_path / "rate.onnx"
    onnx.save(sample_rate_model(), str(path))
    x = RNG.normal(size=(16, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "bundle"
    proc = run_cli("build", "--model", str(path), "--target", target, "--calib", str(tmp_path / "calib.npz"),
                   "--input-value", "sr=8000", "--no-host-report", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reference = onnx.load(str(out / "reference.onnx"))
    assert [i.name for i in reference.graph.input] == ["x"]
    (expected,) = _run(sample_rate_model(), {"x": x[0], "sr": np.array(8000, np.int64)})
    np.testing.assert_allclose(_run(reference, {"x": x[0]})[0], expected, rtol=1e-6)


def test_cli_refuses_an_unpinned_if_suggesting_input_values(tmp_path):
    path = tmp_path / "rate.onnx"
    onnx.save(sample_rate_model(), str(path))
    proc = run_cli("build", "--model", str(path), "--target", "arm-cpu", "--out", str(tmp_path / "b"), cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "node 'rate_switch' (If)" in lines[0] and "--input-value NAME=VALUE" in lines[0]


@pytest.mark.parametrize(("text", "fragment"), [("sr", "expected NAME=VALUE"), ("sr=fast", "must be a number"),
                                                ("sr=nan", "finite")])
def test_input_value_flag_is_checked(text, fragment, tmp_path):
    proc = run_cli("build", "--model", "m.onnx", "--target", "arm-cpu", "--input-value", text, cwd=tmp_path)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr


def test_config_file_pins_and_inspect_shows_the_pinned_graph(tmp_path):
    path = tmp_path / "rate.onnx"
    onnx.save(sample_rate_model(), str(path))
    np.savez(tmp_path / "calib.npz", x=RNG.normal(size=(8, 1, 8)).astype(np.float32))
    (tmp_path / "edgepipe.yaml").write_text(f"model: {path}\ntarget: arm-cpu\ncalib: {tmp_path / 'calib.npz'}\n"
                                            f"input_values: {{sr: 16000}}\nout: {tmp_path / 'bundle'}\n"
                                            "report: {host: false}\n")
    proc = run_cli("build", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {n.op_type for n in onnx.load(str(tmp_path / "bundle" / "reference.onnx")).graph.node} >= {"Relu"}
    shown = run_cli("inspect", str(path), "--target", "arm-cpu", "--input-value", "sr=16000", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert '"If"' not in shown.stdout and "rate_switch" not in shown.stdout
    unpinned = run_cli("inspect", str(path), "--target", "arm-cpu", "--json", cwd=tmp_path)
    assert "rate_switch" in unpinned.stdout


def test_config_refuses_a_pin_that_is_not_a_number(tmp_path):
    (tmp_path / "edgepipe.yaml").write_text("model: m.onnx\ntarget: arm-cpu\ninput_values: {sr: fast}\n")
    proc = run_cli("build", cwd=tmp_path)
    assert proc.returncode == 2 and "input_values.sr" in proc.stderr and "finite number" in proc.stderr, proc.stderr


def test_sensitivity_takes_the_same_pins_as_build(tmp_path):
    """The accuracy commands prepare the model as build does, pins included: pinned, the If is gone
    and the kept branch's layers are ranked; unpinned, the pinned input is missing from the data
    and the one error line names it."""
    path = tmp_path / "rate.onnx"
    onnx.save(sample_rate_model(), str(path))
    np.savez(tmp_path / "calib.npz", x=RNG.normal(size=(16, 1, 8)).astype(np.float32))
    args = ["sensitivity", str(path), "--target", "arm-cpu", "--calib", str(tmp_path / "calib.npz"),
            "--max-samples", "4", "--json"]
    pinned = run_cli(*args, "--input-value", "sr=16000", cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    assert "rate_switch" not in pinned.stdout and json.loads(pinned.stdout)["nodes"], pinned.stdout[:400]
    unpinned = run_cli(*args, cwd=tmp_path)
    lines = [line for line in unpinned.stderr.splitlines() if line.strip()]
    assert unpinned.returncode == 2 and len(lines) == 1 and "input 'sr'" in lines[0], unpinned.stderr
