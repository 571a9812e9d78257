"""ONNX files from torch.onnx.export's default (dynamo) exporter, as shipped in tests/dynamo_exported
(opset 20, Gelu / LayerNormalization ops, external weights), build on both targets; ONNX Runtime on
the file is the reference."""

from pathlib import Path

import numpy as np
import pytest

from edgepipe import graph
from tests.helpers import deployed_outputs, run_cli, sqnr_db

FILES = Path(__file__).parent / "dynamo_exported"
SHAPES = {"cnn": (1, 3, 32, 32), "attention": (1, 17, 32)}


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_dynamo_exported_file_builds_int8(tmp_path, name, target):
    path = FILES / f"{name}.onnx"
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"  # with an array named after no input, as a typo would make
    np.savez(calib, x=rng.standard_normal((32, *SHAPES[name][1:])).astype(np.float32), X=np.zeros(3))
    result = run_cli("build", "--model", str(path), "--target", target, "--calib", str(calib),
                     "--out", str(tmp_path / "bundle"), "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: calib.npz: arrays ['X'] name no model input (inputs: ['x']) and were not used" in result.stderr
    x = rng.standard_normal(SHAPES[name]).astype(np.float32)
    (reference,) = graph.make_session(graph.load_model(path)).run(None, {"x": x})
    (got,) = deployed_outputs(tmp_path / "bundle", {"x": x})
    assert sqnr_db(reference, got) > 30
