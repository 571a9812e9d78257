"""TensorRT's INT8 calibration cache: the implicit-quantization fallback for old JetPack boards.

Some boards run TensorRT 8.x, whose Q/DQ support misses layers that calibration-based
(implicit) INT8 handles. For them the bundle carries `calibration.cache`, the text file an
`IInt8EntropyCalibrator2` would have written, filled with *our* calibration so the device never
needs calibration data. Format (what TensorRT writes and reads):

    TRT-<version number>-EntropyCalibration2
    <tensor name>: <8 hex digits: the IEEE-754 float32 scale, big-endian>

scale = amax / 127. Tensor names are the FP32 ONNX names TensorRT's parser keeps: graph inputs
and node outputs. The version number is major*1000+minor*100+patch for 8.x (8.6.1 -> 8601) and
major*10000+minor*100+patch from 10.0 on (10.9.0 -> 100900); the build kit rewrites the header
to the device's version, the scales do not depend on it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import onnx

from edgepipe import graph
from edgepipe.calibrate.result import CalibrationResult
from edgepipe.errors import UserError

CALIBRATOR_NAME = "EntropyCalibration2"
DEFAULT_TRT_VERSION = "8.6.1"  # JetPack 6 (oldest board TensorRT we target with this file)


def trt_version_number(version: str | int) -> int:
    """'8.6.1' -> 8601, '10.9.0' -> 100900 (the number in the cache header); ints pass through."""
    if isinstance(version, int) or str(version).isdigit():
        return int(version)
    parts = [int(p) for p in (str(version).split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def encode_scale(scale: float) -> str:
    """Hex of the big-endian float32 bit pattern (always 8 digits)."""
    return struct.pack(">f", float(scale)).hex()


def decode_scale(text: str) -> float:
    text = text.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


def tensors_tensorrt_sees(model: onnx.ModelProto) -> set[str]:
    """Graph input names and node output names: the names a TensorRT network keeps from ONNX."""
    names = {value.name for value in graph.graph_inputs(model)}
    names.update(out for node in model.graph.node for out in node.output if out)
    return names


def fits_one_line(name: str) -> bool:
    """A name the line format can hold: one with a line break would end its line early and turn
    its own text into forged `name: scale` entries for other tensors (the format has no escape)."""
    return name.splitlines() == [name]


def cache_entries(calibration: CalibrationResult, model: onnx.ModelProto | None = None) -> dict[str, float]:
    """{tensor name: float32 scale} for every calibrated activation (restricted to `model`'s names)
    whose name fits on one line; TensorRT runs a tensor missing from the cache in float."""
    names = [name for name in sorted(calibration.tensors) if fits_one_line(name)]
    if model is not None:
        visible = tensors_tensorrt_sees(model)
        names = [name for name in names if name in visible]
    return {name: float(np.float32(calibration.symmetric_scale(name))) for name in names}


def write_calibration_cache(calibration: CalibrationResult, path: str | os.PathLike,
                            trt_version: str | int = DEFAULT_TRT_VERSION,
                            model: onnx.ModelProto | None = None) -> Path:
    """Write the cache; with `model`, only names TensorRT sees in that FP32 model are kept."""
    entries = cache_entries(calibration, model)
    if not entries:
        raise UserError(f"{path}: no calibrated tensor matches the model's tensor names; re-run calibration "
                        "on the folded model")
    lines = [f"TRT-{trt_version_number(trt_version)}-{CALIBRATOR_NAME}"]
    lines += [f"{name}: {encode_scale(scale)}" for name, scale in entries.items()]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_calibration_cache(path: str | os.PathLike) -> dict[str, float]:
    """{tensor name: scale} from a TensorRT calibration cache (ours or one TensorRT wrote)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read calibration cache ({type(exc).__name__})") from exc
    if not lines or not (lines[0].startswith("TRT-") and "Calibration" in lines[0]):
        raise UserError(f"{path}: not a TensorRT calibration cache (first line should be "
                        f"'TRT-<version>-{CALIBRATOR_NAME}')")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        try:
            if not sep:
                raise ValueError(line)
            scales[name.strip()] = decode_scale(value)
        except ValueError as exc:
            raise UserError(f"{path}:{number}: malformed cache line '{line}'; expected "
                            "'<tensor name>: <8 hex digits>'") from exc
    return scales

