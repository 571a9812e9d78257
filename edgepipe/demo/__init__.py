"""Defaults for the shipped demo model (colourized handwritten digits, 3x32x32 -> 10 logits).

The CLI imports this module for its defaults, so it must stay free of torch imports: the model
itself lives in `edgepipe.demo.model`, re-training in `edgepipe.demo.train`. The demo data is
installed as the package `edgepipe_calibration_sets`; the helpers below locate it with
importlib.resources so they work from a source checkout and from an installed wheel alike.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

DEMO_INPUT_NAME = "image"
DEMO_OUTPUT_NAME = "logits"
DEMO_FACTORY = "edgepipe.demo.model:build_demo"

# The model was trained on exactly this preprocessing (pixel * scale, then (x - mean) / std per
# channel, in RGB order). mean/std are the training-set channel statistics that
# `python -m edgepipe.demo.train` prints; it refuses to train if they drift from these values.
DEMO_PREPROCESS = {
    "size": [32, 32],
    "scale": 1 / 255,
    "mean": [0.4542, 0.4112, 0.3382],
    "std": [0.2547, 0.2301, 0.1942],
    "channel_order": "RGB",
    "layout": "NCHW",
}

_DATA_PACKAGE = "edgepipe_calibration_sets"


def demo_data_dir() -> Path:
    """Folder of the installed demo data set (calib/, eval/, eval.npz, README.md)."""
    return Path(str(importlib.resources.files(_DATA_PACKAGE) / "demo"))


def demo_calib_dir() -> Path:
    """Flat folder of unlabeled calibration PNGs."""
    return demo_data_dir() / "calib"


def demo_eval_dir() -> Path:
    """ImageFolder-layout evaluation PNGs (eval/<class>/*.png, classes "0".."9")."""
    return demo_data_dir() / "eval"


def demo_eval_npz() -> Path:
    """The same evaluation set, already preprocessed: keys `image` [N,3,32,32], `labels`."""
    return demo_data_dir() / "eval.npz"
