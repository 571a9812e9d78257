"""PyTorch files saved on a real GPU (tests/gpu_saved, made by its make_files.py on an NVIDIA H200
with torch 2.11) open on this CPU-only host and export to ONNX that reproduces the GPU's outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepipe import graph
from edgepipe.errors import UserError
from edgepipe.stages.export import run_export
from tests.helpers import run_cli

SAVED = Path(__file__).parent / "gpu_saved"
REFERENCE = np.load(SAVED / "reference.npz")
SHAPE = {"x": list(REFERENCE["x"].shape)}


@pytest.fixture
def factory_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def onnx_output(model) -> np.ndarray:
    name = graph.graph_inputs(model)[0].name
    (out,) = graph.make_session(model).run(None, {name: REFERENCE["x"]})
    return out


def test_files_were_made_on_a_gpu():
    made_on = json.loads(str(REFERENCE["made_on"]))
    assert made_on["device"].startswith("NVIDIA") and "+cu" in made_on["torch"]
    assert not torch.cuda.is_available()  # the point: a CPU-only host opens them
    state = torch.load(SAVED / "small_cnn_state_dict.pt", map_location="meta", weights_only=True)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(SAVED / "small_cnn_state_dict.pt", weights_only=True)
    assert state["conv.weight"].shape == (8, 3, 3, 3)


@pytest.mark.parametrize("name", ["small_cnn_traced.pt", "position_cnn_traced.pt", "small_cnn.pt2", "position_cnn.pt2"])
def test_gpu_saved_torch_file_exports_to_the_gpu_outputs(name):
    model = run_export(str(SAVED / name), None, SHAPE)
    expected = REFERENCE[name.split("_traced")[0].removesuffix(".pt2")]
    np.testing.assert_allclose(onnx_output(model), expected, rtol=1e-4, atol=1e-5)


def test_position_codes_made_on_cuda_fail_in_plain_torch():
    """Why the loader rewrites device constants: torch's own map_location leaves them on CUDA."""
    module = torch.jit.load(str(SAVED / "position_cnn_traced.pt"), map_location="cpu")
    with pytest.raises(Exception, match="CUDA"):
        module(torch.from_numpy(REFERENCE["x"]))


@pytest.mark.parametrize("name,rtol", [("small_cnn_state_dict.pt", 1e-4), ("small_cnn_checkpoint.pt", 1e-4),
                                       ("small_cnn_state_dict_fp16.pt", 2e-2)])
def test_gpu_saved_checkpoint_loads_into_the_factory(factory_path, name, rtol):
    model = run_export("fixture_models:build_small_cnn", str(SAVED / name), SHAPE)
    np.testing.assert_allclose(onnx_output(model), REFERENCE["small_cnn"], rtol=rtol, atol=rtol * 0.1)


def test_cli_builds_a_gpu_saved_export_program(tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, *SHAPE["x"][1:])).astype(np.float32))
    result = run_cli("build", "--model", str(SAVED / "position_cnn.pt2"), "--target", "jetson",
                     "--calib", str(calib), "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bundle" / "model.qdq.onnx").exists()


def training_checkpoints(net) -> dict:
    """The checkpoint layouts training code writes, made with the real wrappers."""
    plain = net.state_dict()
    return {
        "DataParallel": torch.nn.DataParallel(net).state_dict(),
        "torch.compile": torch.compile(net).state_dict(),
        "tutorial dict": {"epoch": 3, "model_state_dict": plain, "optimizer_state_dict": {"state": {}}, "loss": 0.1},
        "Lightning, wrapped net": {"state_dict": {f"model.{k}": v for k, v in plain.items()}, "epoch": 1},
        "DDP inside a dict": {"model": torch.nn.DataParallel(net).state_dict()},
    }


@pytest.mark.parametrize("layout", ["DataParallel", "torch.compile", "tutorial dict", "Lightning, wrapped net",
                                    "DDP inside a dict"])
def test_training_checkpoint_layouts_load(factory_path, tmp_path, layout):
    import fixture_models

    net = fixture_models.build_small_cnn()
    with torch.no_grad():
        net.fc.bias.fill_(3.0)
    path = tmp_path / "ckpt.pt"
    torch.save(training_checkpoints(net)[layout], path)
    model = run_export("fixture_models:build_small_cnn", str(path), SHAPE)
    with torch.no_grad():
        expected = net(torch.from_numpy(REFERENCE["x"])).numpy()
    np.testing.assert_allclose(onnx_output(model), expected, rtol=1e-4, atol=1e-5)


def test_prefix_that_does_not_make_the_keys_match_is_still_a_mismatch(factory_path, tmp_path):
    import fixture_models

    state = {f"module.backbone.{k}": v for k, v in fixture_models.build_small_cnn().state_dict().items()}
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="does not match the model"):
        run_export("fixture_models:build_small_cnn", str(tmp_path / "ckpt.pt"), SHAPE)
