"""TensorRT INT8 backend (targets jetson, desktop-gpu): Q/DQ ONNX + calibration cache + engine kit.

A TensorRT engine is tied to one GPU model and one TensorRT version, so what the bundle carries
is what *builds* the engine on the device: the explicit-quantization model `model.qdq.onnx`
(qdq.py), `calibration.cache` for the implicit-INT8 fallback of old JetPack releases (cache.py)
and `build_engine.py` / `build_engine.sh` (kit.py). When `tensorrt` imports on this host and the
target asks for it, the engine is also built here (engine.py) by running that same kit.

Only onnx/numpy are imported at module level: `import edgepipe.backends.tensorrt` must work on a
machine without TensorRT or pycuda.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgepipe import graph
from edgepipe.backends.tensorrt.cache import DEFAULT_TRT_VERSION, fits_one_line, write_calibration_cache
from edgepipe.backends.tensorrt.kit import input_specs, render_engine_kit
from edgepipe.backends.qdq import write_qdq_model
from edgepipe.calibrate.result import CalibrationResult

QDQ_MODEL_FILE = "model.qdq.onnx"
CACHE_FILE = "calibration.cache"

__all__ = ["build_tensorrt", "write_qdq_model", "write_calibration_cache", "render_engine_kit"]


def build_tensorrt(model: onnx.ModelProto, calibration: CalibrationResult, out_dir: Path, options: dict) -> dict:
    """Write the TensorRT bundle files into `out_dir`; build the engine here when asked and possible.

    options: float_nodes (node names kept float/FP16), per_channel (default True), int8_weights
    (default False), fp16 (default True), workspace_mb, dla_core, trt_version (cache header),
    build_engine (bool). Returns {"files", "qdq_report", "engine_built", "engine_note"}; files
    are relative to `out_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = input_specs(model)  # raises UserError on dynamic shapes before anything is written
    qdq_model, report = write_qdq_model(
        model,
        calibration,
        keep_float=frozenset(options.get("float_nodes") or ()),
        per_channel=bool(options.get("per_channel", True)),
        int8_weights=bool(options.get("int8_weights", False)),
    )
    graph.save_model(qdq_model, out_dir / QDQ_MODEL_FILE)
    write_calibration_cache(calibration, out_dir / CACHE_FILE,
                            trt_version=options.get("trt_version") or DEFAULT_TRT_VERSION, model=model)
    kit_files = render_engine_kit(
        out_dir,
        model_file=QDQ_MODEL_FILE,
        inputs=inputs,
        precision={"int8": True, "fp16": bool(options.get("fp16", True))},
        options={
            "workspace_mb": int(options.get("workspace_mb") or 1024),
            "dla_core": options.get("dla_core"),
            "timing_cache": "timing.cache",
        },
    )
    report["calibration_cache_left_out"] = sorted(name for name in calibration.tensors if not fits_one_line(name))
    files = [QDQ_MODEL_FILE, CACHE_FILE] + [p.relative_to(out_dir).as_posix() for p in kit_files]
    engine_built, note = False, "engine build not requested for this target: build_engine.py runs on the device"
    if options.get("build_engine"):
        from edgepipe.backends.tensorrt.engine import build_engine_on_host

        engine_built, note, engine_files = build_engine_on_host(out_dir)
        files += engine_files
    return {"files": files, "qdq_report": report, "engine_built": engine_built, "engine_note": note}
