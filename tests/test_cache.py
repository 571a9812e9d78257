"""A cache that cannot lie: a hit is byte-identical to a fresh build, and editing a module that the
user's factory imports (not the factory's own file, not the weights) rebuilds with the new network."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.helpers import run_cli

NET = '''import torch
from cachepkg import layers


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return layers.head(torch.relu(self.conv(x)))


def build():
    return Net()
'''
LAYERS = '''def head(x):
    return x.mean(dim=(2, 3)) * {scale}
'''


def _package(root: Path, scale: str) -> None:
    package = root / "cachepkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "net.py").write_text(NET)
    (package / "layers.py").write_text(LAYERS.format(scale=scale))


def _build(root: Path, out: str) -> dict:
    result = run_cli("build", "--model", "cachepkg.net:build", "--calib", "calib.npz", "--target", "arm-cpu",
                     "--out", out, "--no-host-report", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    return {stage["name"]: stage["cached"] for stage in json.loads(result.stdout)["stages"]}


def _bundle_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _torch_reference(root: Path, x: np.ndarray) -> np.ndarray:
    """The factory's network as the edited source defines it, run in this process."""
    import torch

    sys.path.insert(0, str(root))
    try:
        for name in [m for m in sys.modules if m == "cachepkg" or m.startswith("cachepkg.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        net = importlib.import_module("cachepkg.net").build().eval()
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "cachepkg" or m.startswith("cachepkg.")]:
            del sys.modules[name]


def _reference_output(bundle: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(bundle / "reference.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_cache_hit_is_byte_identical_and_an_imported_module_edit_rebuilds(tmp_path):
    _package(tmp_path, "1.0")
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)

    first = _build(tmp_path, "first")
    assert not any(first.values())
    again = _build(tmp_path, "again")
    assert again["export"] is False  # always re-exported: the exported graph keys the rest
    assert again["simplify"] and again["fold"] and again["calibrate"]
    assert _bundle_bytes(tmp_path / "again") == _bundle_bytes(tmp_path / "first")

    shutil.rmtree(tmp_path / "build" / ".cache")
    _build(tmp_path, "fresh")
    assert _bundle_bytes(tmp_path / "fresh") == _bundle_bytes(tmp_path / "again")

    # edit only the imported module (another size, so no stale bytecode can hide the change)
    (tmp_path / "cachepkg" / "layers.py").write_text(LAYERS.format(scale="-2.5  # edited"))
    edited = _build(tmp_path, "edited")
    assert not edited["simplify"] and not edited["fold"] and not edited["calibrate"]
    got = _reference_output(tmp_path / "edited", x[:1])
    np.testing.assert_allclose(got, _torch_reference(tmp_path, x[:1]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, _reference_output(tmp_path / "first", x[:1]))
