"""The shipped demo: model structure, weights, data files in all formats, and their accuracy."""

from __future__ import annotations

import operator
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from edgepipe.data import load_dataset
from edgepipe.demo import (DEMO_INPUT_NAME, DEMO_PREPROCESS, demo_calib_dir, demo_data_dir,
                           demo_eval_dir, demo_eval_npz)
from edgepipe.demo.model import DemoNet, build_demo

SPECS = {DEMO_INPUT_NAME: ((1, 3, 32, 32), np.float32)}


@pytest.fixture(scope="module")
def model() -> DemoNet:
    return build_demo()


def _top1(model: DemoNet, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def test_demo_defaults_module_does_not_import_torch():
    code = "import sys, edgepipe.demo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preprocess_contract():
    assert DEMO_PREPROCESS["size"] == [32, 32] and DEMO_PREPROCESS["layout"] == "NCHW"
    assert DEMO_PREPROCESS["channel_order"] == "RGB" and DEMO_PREPROCESS["scale"] == pytest.approx(1 / 255)
    assert len(DEMO_PREPROCESS["mean"]) == len(DEMO_PREPROCESS["std"]) == 3
    assert len(set(DEMO_PREPROCESS["mean"])) == 3  # channels differ: per-channel folding matters


def test_model_has_the_layers_the_pipeline_must_handle(model):
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 100_000
    modules = list(model.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert convs[0].padding == (1, 1) and convs[0].in_channels == 3
    assert any(m.groups == m.in_channels > 1 for m in convs), "no depthwise conv"
    assert any(m.kernel_size == (1, 1) for m in convs), "no pointwise conv"
    for kind in (nn.BatchNorm2d, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Linear):
        assert any(isinstance(m, kind) for m in modules), kind.__name__
    traced = torch.fx.symbolic_trace(model)
    adds = [n for n in traced.graph.nodes if n.target in (operator.add, torch.add)]
    assert adds and all(isinstance(arg, torch.fx.Node) for arg in adds[0].args), "no residual Add"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_weights_are_a_trained_state_dict(model):
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # trained, not init
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_shipped_data_layout_and_size():
    calib = sorted(demo_calib_dir().iterdir())
    assert 150 <= len(calib) <= 300 and all(p.suffix == ".png" for p in calib)
    classes = sorted(p.name for p in demo_eval_dir().iterdir())
    assert classes == [str(d) for d in range(10)]
    assert 250 <= sum(1 for _ in demo_eval_dir().glob("*/*.png")) <= 400
    total = sum(p.stat().st_size for p in demo_data_dir().rglob("*") if p.is_file())
    assert total < 3_000_000
    assert "npz" in (demo_data_dir() / "README.md").read_text()


def test_eval_npz_equals_the_preprocessed_image_folder():
    folder = load_dataset(demo_eval_dir(), SPECS, DEMO_PREPROCESS)
    npz = load_dataset(demo_eval_npz(), SPECS)
    assert len(folder) == len(npz) and folder.labels is not None
    np.testing.assert_array_equal(folder.labels, npz.labels)
    np.testing.assert_allclose(folder.stack(DEMO_INPUT_NAME), npz.stack(DEMO_INPUT_NAME), atol=1e-6)


def test_calibration_images_have_correlated_channels():
    calib = load_dataset(demo_calib_dir(), SPECS, {"scale": 1 / 255}, limit=50)
    assert calib.labels is None and len(calib) == 50
    pixels = calib.stack(DEMO_INPUT_NAME).transpose(1, 0, 2, 3).reshape(3, -1)
    correlation = np.corrcoef(pixels)
    assert correlation[np.triu_indices(3, 1)].min() > 0.5  # ZCA whitening is not a no-op
    assert np.ptp(pixels.mean(axis=1)) > 0.05


def test_demo_accuracy_on_the_shipped_eval_set(model):
    npz = load_dataset(demo_eval_npz(), SPECS)
    assert _top1(model, npz.stack(DEMO_INPUT_NAME), npz.labels) >= 0.90
    folder = load_dataset(demo_eval_dir(), SPECS, DEMO_PREPROCESS)
    assert _top1(model, folder.stack(DEMO_INPUT_NAME), folder.labels) >= 0.90


def test_render_is_deterministic_and_colourful():
    from edgepipe.demo.train import render

    digits = np.random.default_rng(3).random((4, 8, 8)).astype(np.float32)
    first = render(digits, np.random.default_rng(7))
    again = render(digits, np.random.default_rng(7))
    assert first.dtype == np.uint8 and first.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[..., 0], first[..., 1])
