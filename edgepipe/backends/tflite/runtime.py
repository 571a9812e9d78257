"""Running our .tflite files on the build host with the real LiteRT interpreter.

Used wherever the build itself needs the interpreter's answer (the mixed-precision planner
confirms float islands on the real int8 kernels, the conformance harness compares with ONNX
Runtime): feeds and results are in ONNX layout and float32, converted with the io description
`build_tflite` returns (NHWC layout, int8 I/O quantization).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe import quantmath
from edgepipe.isolation import native_stderr_silenced
from edgepipe.errors import UserError

RESOLVERS = {
    "xnnpack": "AUTO",
    "no_delegates": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
    "reference": "BUILTIN_REF",
}


def model_source(path) -> dict:
    """LiteRT's Interpreter arguments for the model at `path`: its bytes when the path is not UTF-8
    text (a folder named in Latin-1 bytes), which LiteRT's C++ binding refused with a TypeError."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return {"model_content": Path(path).read_bytes()}
    return {"model_path": str(path)}


def make_interpreter(path: Path, resolver: str = "xnnpack", threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with native_stderr_silenced():  # LiteRT's C++ "INFO: Created ... XNNPACK delegate" line
        interpreter = Interpreter(**model_source(path), num_threads=threads,
                                  experimental_op_resolver_type=getattr(OpResolverType, RESOLVERS[resolver]))
        interpreter.allocate_tensors()
    return interpreter


def integer_input(value, name: str, dtype: np.dtype) -> np.ndarray:
    """An int64 (or any integer) feed as the int32 / bool a TFLite input holds; values int32
    cannot hold are refused naming the input (wrapping them would feed other token ids)."""
    value = np.asarray(value)
    if dtype == np.bool_ or value.dtype == dtype:
        return value.astype(dtype)
    info = np.iinfo(dtype)
    if value.size and (value.min() < info.min or value.max() > info.max):
        raise UserError(f"input '{name}' holds values outside {dtype} ({value.min()}..{value.max()}); the .tflite "
                        f"takes {dtype} for this input")
    return value.astype(dtype)


def run_tflite(path: Path, io: dict, feed: dict, resolver: str = "xnnpack", threads: int = 1,
               interpreter=None) -> dict:
    """Run a .tflite on an ONNX-layout float feed; outputs come back float, in ONNX layout."""
    interpreter = interpreter or make_interpreter(path, resolver, threads)
    details = {d["name"]: d for d in interpreter.get_input_details()}
    for spec in io["inputs"]:
        if spec["dtype"] in ("int32", "bool"):  # token ids, attention masks
            value = integer_input(feed[spec["name"]], spec["name"], np.dtype(spec["dtype"]))
            interpreter.set_tensor(details[spec["name"]]["index"], np.require(value, requirements="C"))
            continue
        value = np.asarray(feed[spec["name"]], np.float32)
        if spec["layout"] == "NHWC":
            value = value.transpose(0, 2, 3, 1)
        if spec["quantization"] and spec["dtype"] == "int8":
            value = quantmath.quantize(value, spec["quantization"]["scale"], spec["quantization"]["zero_point"])
        interpreter.set_tensor(details[spec["name"]]["index"], np.require(value, requirements="C"))  # keeps 0-d inputs 0-d
    interpreter.invoke()
    out_details = {d["name"]: d for d in interpreter.get_output_details()}
    results = {}
    for spec in io["outputs"]:
        value = interpreter.get_tensor(out_details[spec["name"]]["index"])
        if spec["dtype"] == "int8":
            value = quantmath.dequantize(value, spec["quantization"]["scale"], spec["quantization"]["zero_point"])
        if spec["layout"] == "NHWC":
            value = value.transpose(0, 3, 1, 2)
        results[spec["name"]] = value
    return results
