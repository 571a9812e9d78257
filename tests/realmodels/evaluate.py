"""Build a corpus model through the real CLI and judge the bundle against independent references.

References never come from the artifact under test:
- FP32: ONNX Runtime on the .onnx file as shipped, or PyTorch on the factory model with the
  shipped weights;
- int8 peer: ONNX Runtime `quantize_static` (QDQ, MinMax, per-channel int8 weights, symmetric
  int8 activations; benchmarks/ort_peer.py) on the same file with the same calibration samples.
The .tflite files run in LiteRT (ai-edge-litert, XNNPACK); the jetson `model.qdq.onnx` runs in
ONNX Runtime (the TensorRT engine itself needs a GPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.realmodels import corpus
from tests.realmodels.inputs import make_inputs

ROOT = Path(__file__).resolve().parents[2]
CALIB_SAMPLES = 16
CALIB_SEED, EVAL_SEED = 1, 2


def cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """The real `edgepipe` entry point run from `cwd`, a fresh project folder (its stage cache
    build/.cache and its own TMPDIR live there, so no other build on the machine is shared);
    PYTHONPATH holds the repository so `tests.realmodels.*:factory` imports like an installed package."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    (cwd / "tmp").mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(cwd / "tmp")
    return subprocess.run([sys.executable, "-m", "edgepipe", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def model_argument(name: str) -> list[str]:
    spec = corpus.MODELS[name]
    if not spec.is_factory:
        return ["--model", str(corpus.model_path(name))]
    weights = corpus.weights_path(name)
    return ["--model", spec.source] + (["--weights", str(weights)] if weights else [])


@dataclass
class Data:
    calib: np.ndarray
    eval: np.ndarray
    calib_file: Path
    eval_file: Path


def write_data(name: str, work: Path, calib_samples: int = CALIB_SAMPLES) -> Data:
    """Calibration and held-out eval sets as .npz keyed by the input name, [N, C, H, W] (a model
    with several inputs: one [N, *sample shape] array per input)."""
    spec = corpus.MODELS[name]
    calib = make_inputs(name, calib_samples, CALIB_SEED)["x"]
    evaluation = make_inputs(name, spec.eval_samples, EVAL_SEED)["x"]
    work.mkdir(parents=True, exist_ok=True)
    pinned = dict(spec.input_values)  # given to the build as --input-value, not as data
    for part, arrays in (("calib", calib), ("eval", evaluation)):
        arrays = arrays if isinstance(arrays, dict) else {spec.input_name: arrays}
        np.savez(work / f"{name}_{part}.npz", **{k: v for k, v in arrays.items() if k not in pinned})
    return Data(calib, evaluation, work / f"{name}_calib.npz", work / f"{name}_eval.npz")


def join_samples(outputs: list[np.ndarray]) -> np.ndarray:
    """Per-sample outputs as one array: concatenated on the batch axis, or stacked when the model
    writes a scalar (PLCMOS's score has shape [])."""
    return np.stack(outputs) if np.ndim(outputs[0]) == 0 else np.concatenate(outputs)


def feeds(input_name: str, images) -> list[dict[str, np.ndarray]]:
    """One ONNX Runtime / LiteRT feed per sample: `images[i:i+1]` of a single-input model, or
    row i of every input's array for a model with several inputs (a dict, rows as the model takes them)."""
    if isinstance(images, dict):
        return [{key: np.asarray(value[i]) for key, value in images.items()} for i in range(len(next(iter(images.values()))))]
    return [{input_name: images[i : i + 1]} for i in range(len(images))]


def build(name: str, target: str, data: Data, out: Path, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    spec = corpus.MODELS[name]
    args = ["build", *model_argument(name), "--target", target, "--calib", str(data.calib_file),
            "--eval", str(data.eval_file), "--no-host-report", "--out", str(out), *(extra or [])]
    if spec.input_shape_flag:
        args += ["--input-shape", f"{spec.input_name}:" + "x".join(map(str, spec.shape))]
    args += [f"--input-value={key}={value}" for key, value in spec.input_values]
    return cli(*args, cwd=out.parent)


def refusal_arguments(name: str, target: str, out: Path) -> list[str]:
    """`edgepipe build` for a model that must be refused: no calibration data."""
    spec = corpus.MODELS[name]
    args = ["build", *model_argument(name), "--target", target, "--no-host-report", "--out", str(out)]
    if spec.shape:
        args += ["--input-shape", f"{spec.input_name}:" + "x".join(map(str, spec.shape))]
    return args


# --- references ------------------------------------------------------------------------------


def _onnx_session(path: Path, optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx_file(path: Path, input_name: str, images: np.ndarray, optimize: bool = True) -> dict[str, np.ndarray]:
    """{output name: [N, ...]} one sample at a time (batch 1, as the bundle runs); inputs the
    file does not have (a value the build pinned) are not fed."""
    session = _onnx_session(path, optimize)
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    runs = [session.run(None, {k: v for k, v in feed.items() if k in wanted}) for feed in feeds(input_name, images)]
    return {n: join_samples([r[k] for r in runs]) for k, n in enumerate(names)}


def torch_model(name: str):
    import importlib

    import torch

    spec = corpus.MODELS[name]
    module, _, attr = spec.source.partition(":")
    model = getattr(importlib.import_module(module), attr)()
    weights = corpus.weights_path(name)
    if weights:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        if spec.checkpoint_key:  # as the package loads its checkpoint (Resemblyzer: strict=False)
            model.load_state_dict(state[spec.checkpoint_key], strict=False)
        else:
            model.load_state_dict(state)
    return model.eval()


def run_torch(name: str, images: np.ndarray) -> list[np.ndarray]:
    import torch

    model = torch_model(name)
    with torch.no_grad():
        runs = [model(torch.from_numpy(images[i : i + 1])) for i in range(len(images))]
    runs = [r if isinstance(r, (tuple, list)) else (r,) for r in runs]
    return [join_samples([r[k].numpy() for r in runs]) for k in range(len(runs[0]))]


def fp32_reference(name: str, images: np.ndarray) -> list[np.ndarray]:
    """The independent FP32 outputs, in the model's output order."""
    spec = corpus.MODELS[name]
    if spec.is_factory:
        return run_torch(name, images)
    return list(run_onnx_file(corpus.reference_model_path(name), spec.input_name, images).values())


def reference_float_noise(name: str, images: np.ndarray) -> float | None:
    """How far two correct FP32 runs of the shipped file disagree: ONNX Runtime with and without
    its graph optimizations (fusions re-associate float sums), max relative error over outputs.
    Context for an fp32 failure: a model whose own float noise is above the tolerance."""
    spec = corpus.MODELS[name]
    if spec.is_factory:
        return None
    path = corpus.reference_model_path(name)
    plain = run_onnx_file(path, spec.input_name, images, optimize=False)
    fused = run_onnx_file(path, spec.input_name, images)
    return max(max_relative_error(plain[k], fused[k]) for k in plain)


def peer_source(name: str, work: Path) -> Path:
    """The ONNX file ORT's quantizer gets: the shipped file, or the factory exported by torch
    exactly as `edgepipe` does (TorchScript exporter, opset 17, static batch-1 shape)."""
    spec = corpus.MODELS[name]
    if not spec.is_factory:
        return corpus.reference_model_path(name)
    import torch

    path = work / f"{name}_torch.onnx"
    torch.onnx.export(torch_model(name), (torch.zeros(spec.shape),), str(path), opset_version=17,
                      input_names=[spec.input_name], dynamo=False)
    return path


def peer_opset13(path: Path, work: Path) -> Path:
    """The file ORT's quantizer gets: per-channel Q/DQ needs opset 13 (DequantizeLinear's axis),
    and ORT's guidance for older models is to convert them first, so the peer gets the shipped
    graph converted by onnx.version_converter (ours gets the file as shipped)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    if graph_opset(model) >= 13:
        return path
    converted = work / f"{path.stem}_opset13.onnx"
    onnx.save(version_converter.convert_version(model, 13), str(converted))
    return converted


def graph_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ort_peer(name: str, data: Data, work: Path) -> list[np.ndarray]:
    """Eval outputs of ONNX Runtime's own int8 model (MinMax, per-channel) for the same samples."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ort_peer import ort_quantize_static

    spec = corpus.MODELS[name]
    out = work / f"{name}_ort_minmax.onnx"
    calib = feeds(spec.input_name, data.calib)
    ort_quantize_static(peer_opset13(peer_source(name, work), work), out, len(calib), lambda i: calib[i],
                        method="MinMax")
    return list(run_onnx_file(out, spec.input_name, data.eval).values())


# --- the bundle under test -------------------------------------------------------------------


def interpreter(path: Path, resolver: str = "AUTO", threads: int = 1):
    """LiteRT interpreter; resolver AUTO = XNNPACK, BUILTIN_WITHOUT_DEFAULT_DELEGATES = reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), num_threads=threads,
                         experimental_op_resolver_type=getattr(OpResolverType, resolver))
    interp.allocate_tensors()
    return interp


def run_tflite(path: Path, io: dict, images: np.ndarray) -> list[np.ndarray]:
    """Outputs of a bundle .tflite in manifest order, in ONNX layout, dequantized when int8."""
    return invoke(interpreter(path), io, images)


def invoke(interp, io: dict, images: np.ndarray) -> list[np.ndarray]:
    """Run `images` one sample at a time (NCHW float in, as the manifest's io says the file wants it)."""
    from edgepipe import quantmath

    in_details = {d["name"]: d for d in interp.get_input_details()}
    out_details = {d["name"]: d for d in interp.get_output_details()}
    outputs: list[list[np.ndarray]] = [[] for _ in io["outputs"]]
    for feed in feeds(io["inputs"][0]["name"], images):
        for spec_in in io["inputs"]:
            index_in, value = in_details[spec_in["name"]], feed[spec_in["name"]]
            if spec_in["layout"] == "NHWC":
                value = value.transpose(0, 2, 3, 1)
            if index_in["dtype"] == np.int8:
                scale, zero = index_in["quantization"]
                value = np.clip(np.round(value / scale) + zero, -128, 127)
            value = np.ascontiguousarray(value, index_in["dtype"])  # (ascontiguousarray makes a scalar 1-D)
            interp.set_tensor(index_in["index"], value.reshape(index_in["shape"]) if value.size == 1 else value)
        interp.invoke()
        for k, spec in enumerate(io["outputs"]):
            detail = out_details[spec["name"]]
            out = interp.get_tensor(detail["index"])
            if detail["dtype"] == np.int8:
                scale, zero = detail["quantization"]
                out = quantmath.dequantize(out, scale, zero)
            if spec["layout"] == "NHWC":
                out = np.moveaxis(out, -1, 1)
            outputs[k].append(np.asarray(out, np.float32).reshape(spec["onnx_shape"]))
    return [join_samples(o) for o in outputs]


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def bundle_outputs(name: str, target: str, bundle: Path, images: np.ndarray) -> dict[str, list[np.ndarray]]:
    """{"fp32": ..., "int8": ...} for arm-cpu, {"int8": ...} (the Q/DQ model in ORT) for jetson and
    desktop-gpu, each a list in the model's output order."""
    spec = corpus.MODELS[name]
    if target in ("jetson", "desktop-gpu"):
        outputs = run_onnx_file(bundle / "model.qdq.onnx", spec.input_name, images)
        return {"int8": ordered(name, outputs)}
    io = manifest(bundle)["io"]
    names = [o["name"] for o in io["outputs"]]
    result = {}
    for key, file in (("fp32", "model.fp32.tflite"), ("int8", "model.tflite")):
        result[key] = ordered(name, dict(zip(names, run_tflite(bundle / file, io, images))))
    return result


def ordered(name: str, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs in the reference's order: by name for shipped files, in graph order for factories
    (whose output names the exporter makes up)."""
    spec = corpus.MODELS[name]
    if spec.is_factory:
        return list(outputs.values())
    import onnx

    model = onnx.load(str(corpus.model_path(name)), load_external_data=False)
    return [outputs[o.name] for o in model.graph.output]


def onnx_transposes(path: Path) -> int:
    """Transpose nodes of an ONNX file (the shipped one, or a factory's torch export)."""
    import onnx

    return sum(node.op_type == "Transpose" for node in onnx.load(str(path), load_external_data=False).graph.node)


def tflite_transposes(path: Path) -> int:
    """TRANSPOSE operators of a .tflite as LiteRT lists them (builtin kernels, no delegate)."""
    return [op["op_name"] for op in interpreter(path, "BUILTIN_WITHOUT_DEFAULT_DELEGATES")._get_ops_details()].count(
        "TRANSPOSE")


# --- metrics ---------------------------------------------------------------------------------


def max_relative_error(reference: np.ndarray, test: np.ndarray) -> float:
    """max |test - reference| / max |reference| over the whole eval set."""
    return float(np.max(np.abs(test - reference)) / max(float(np.max(np.abs(reference))), 1e-12))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference.astype(np.float64) - test)))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def one_error_line(proc: subprocess.CompletedProcess) -> str | None:
    """The single `error: ...` line of a clean refusal, or None when the output is anything else."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stdout + proc.stderr:
        return lines[0]
    return None
