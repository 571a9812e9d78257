"""Optional engine build on the build host, by running the bundle's own `build_engine.py`.

Desktop-GPU bundles can carry a ready `model.plan` when this host has TensorRT and a GPU. The
build runs the generated script in a subprocess rather than a second copy of the build logic:
what is tested here is exactly what the device runs, and a TensorRT crash cannot take the
pipeline down with it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

BUILD_TIMEOUT_S = 1800
ENGINE_OUTPUTS = ("model.plan", "timing.cache")


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when the `tensorrt` package imports in a fresh interpreter, else (False, why)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt Python package is not installed on this host"
    probe = subprocess.run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return False, f"tensorrt does not import on this host ({last})"
    return True, probe.stdout.strip()


def build_engine_on_host(bundle_dir: Path, extra_args: list[str] | None = None,
                         timeout_s: int = BUILD_TIMEOUT_S) -> tuple[bool, str, list[str]]:
    """Run `bundle_dir/build_engine.py`; returns (built, note, files written relative to bundle_dir)."""
    bundle_dir = Path(bundle_dir)
    available, detail = tensorrt_available()
    if not available:
        return False, f"engine not built here: {detail}; build_engine.py builds it on the device", []
    command = [sys.executable, str(bundle_dir / "build_engine.py"), *(extra_args or [])]
    try:
        result = subprocess.run(command, cwd=bundle_dir, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"engine build with TensorRT {detail} timed out after {timeout_s} s", []
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
        return False, f"engine build with TensorRT {detail} failed: {lines[-1]}", []
    files = [name for name in ENGINE_OUTPUTS if (bundle_dir / name).exists()]
    note = (result.stdout.strip().splitlines() or [f"built with TensorRT {detail}"])[-1]
    return True, note, files
