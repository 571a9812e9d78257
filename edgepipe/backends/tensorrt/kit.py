"""The engine build kit: `build_engine.py` (TensorRT Python API) and `build_engine.sh` (trtexec).

The engine must be built where it runs (it is specific to the GPU and the TensorRT version), so
the bundle ships two equivalent ways to build it: a Python script for boards with the TensorRT
bindings and a trtexec script for those without. Both build the explicit-quantization model by
default and can fall back to implicit INT8 (`reference.onnx` + `calibration.cache`) for old
JetPack TensorRT. Values are baked in as Python literals (`repr`) and shell-quoted words
(`shlex.quote`), so odd tensor names cannot break the generated code.
"""

from __future__ import annotations

import os
import pprint
import shlex
from pathlib import Path

import onnx

from edgepipe import graph, templating
from edgepipe.errors import UserError

REFERENCE_MODEL_FILE = "reference.onnx"
CACHE_FILE = "calibration.cache"
PLAN_FILE = "model.plan"
DEFAULT_OPTIONS = {"workspace_mb": 1024, "dla_core": None, "timing_cache": "timing.cache"}


def input_specs(model: onnx.ModelProto) -> list[dict]:
    """[{name, shape, dtype}] of the model's real inputs; every dimension must be static."""
    specs = []
    for value in graph.graph_inputs(model):
        shape = graph.tensor_shape(value)
        if not graph.is_static(graph.declared_shape(value)):  # a scalar [] is static
            raise UserError(f"input '{value.name}' has dynamic shape {shape}; TensorRT engines are built for "
                            "fixed shapes here - pass --input-shape")
        specs.append({"name": value.name, "shape": [int(d) for d in shape],
                      "dtype": graph.tensor_dtype(value).name})
    return specs


def _normalize_inputs(inputs) -> list[dict]:
    normalized = []
    for item in inputs:
        if isinstance(item, dict):
            name, shape, dtype = item["name"], item["shape"], item.get("dtype", "float32")
        else:
            name, shape, dtype = (list(item) + ["float32"])[:3]
        if any(not isinstance(d, int) or d <= 0 for d in shape):
            raise UserError(f"input '{name}' has dynamic shape {list(shape)}; the engine kit needs fixed shapes")
        normalized.append({"name": str(name), "shape": [int(d) for d in shape], "dtype": str(dtype)})
    if not normalized:
        raise UserError("the model has no inputs; the engine kit needs at least one input shape")
    return normalized


def trtexec_shapes(inputs: list[dict]) -> str:
    """trtexec's --shapes value: name:1x3x224x224,other:1x10."""
    return ",".join(f"{item['name']}:{'x'.join(str(d) for d in item['shape'])}" for item in inputs)


def kit_config(model_file: str, inputs, precision: dict | None, options: dict | None) -> dict:
    """Everything the two scripts need, as plain data."""
    options = {**DEFAULT_OPTIONS, **(options or {})}
    precision = {"int8": True, "fp16": True, **(precision or {})}
    dla_core = options.get("dla_core")
    return {
        "model_file": model_file,
        "reference_file": REFERENCE_MODEL_FILE,
        "cache_file": CACHE_FILE,
        "plan_file": PLAN_FILE,
        "inputs": _normalize_inputs(inputs),
        "int8": bool(precision["int8"]),
        "fp16": bool(precision["fp16"]),
        "workspace_mb": int(options["workspace_mb"]),
        "dla_core": None if dla_core is None else int(dla_core),
        "timing_cache": options.get("timing_cache") or "",
    }


def render_engine_kit(out_dir: str | os.PathLike, model_file: str = "model.qdq.onnx", inputs=(),
                      precision: dict | None = None, options: dict | None = None) -> list[Path]:
    """Write build_engine.py and build_engine.sh (executable) into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = kit_config(model_file, inputs, precision, options)
    python_script = templating.render("tensorrt/build_engine.py.j2",
                                      config_literal=pprint.pformat(config, width=100, sort_dicts=True))
    shell_words = {key: shlex.quote(str(value)) for key, value in config.items() if key != "inputs"}
    shell_script = templating.render(
        "tensorrt/build_engine.sh.j2",
        sh=shell_words,
        shapes=shlex.quote(trtexec_shapes(config["inputs"])),
        workspace_mb=config["workspace_mb"],
        dla_core="" if config["dla_core"] is None else str(config["dla_core"]),
        fp16=config["fp16"],
        int8=config["int8"],
        has_timing_cache=bool(config["timing_cache"]),
    )
    written = []
    for name, text in (("build_engine.py", python_script), ("build_engine.sh", shell_script)):
        path = out_dir / name
        path.write_text(text)
        path.chmod(0o755)
        written.append(path)
    return written
