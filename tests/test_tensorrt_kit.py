"""Engine build kit and device runner: they render, compile, call only real TensorRT API names,
and build_engine.sh hands trtexec the right arguments; build_tensorrt writes the bundle files."""

from __future__ import annotations

import ast
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from edgepipe.backends.tensorrt import build_tensorrt
from edgepipe.backends.tensorrt.kit import render_engine_kit
from edgepipe.calibrate.result import CalibrationResult, TensorCalibration
from edgepipe.errors import UserError
from edgepipe.templating import render
from tests.helpers import tiny_conv_model

# TensorRT Python API names the generated code may use, compiled from NVIDIA's Python API
# reference for TensorRT 10 (https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):
#   infer/Core/Logger.html, Builder.html, BuilderConfig.html, Network.html, Engine.html,
#   ExecutionContext.html, Runtime.html, OptimizationProfile.html, TimingCache.html,
#   infer/Int8/EntropyCalibrator2.html, infer/FoundationalTypes/*.html, parsers/Onnx/pyOnnx.html,
# plus the pre-8.5 binding API (8.4 reference, infer/Core/Engine.html) used only as a fallback and
# NetworkDefinitionCreationFlag.EXPLICIT_BATCH (8.x; deprecated in 10, removed in 11) guarded by hasattr.
TRT_API = {
    "trt": {"__version__", "Logger", "Builder", "Runtime", "OnnxParser", "BuilderFlag",
            "NetworkDefinitionCreationFlag", "MemoryPoolType", "DeviceType", "TensorIOMode",
            "IInt8EntropyCalibrator2", "nptype", "volume", "DataType"},
    "Logger": {"INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"},
    "BuilderFlag": {"FP16", "BF16", "INT8", "FP8", "GPU_FALLBACK", "REFIT", "DEBUG", "TF32",
                    "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO",
                    "DISABLE_TIMING_CACHE", "VERSION_COMPATIBLE", "STRIP_PLAN"},
    "NetworkDefinitionCreationFlag": {"EXPLICIT_BATCH", "STRONGLY_TYPED"},
    "MemoryPoolType": {"WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM"},
    "DeviceType": {"GPU", "DLA"},
    "TensorIOMode": {"NONE", "INPUT", "OUTPUT"},
    "IInt8EntropyCalibrator2": {"__init__", "get_batch_size", "get_batch", "read_calibration_cache",
                                "write_calibration_cache", "get_algorithm"},
    "builder": {"create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network", "num_DLA_cores", "max_DLA_batch_size", "platform_has_fast_fp16",
                "platform_has_fast_int8", "logger"},
    "config": {"set_flag", "clear_flag", "get_flag", "set_memory_pool_limit", "get_memory_pool_limit",
               "add_optimization_profile", "create_timing_cache", "set_timing_cache", "get_timing_cache",
               "default_device_type", "DLA_core", "int8_calibrator", "set_device_type", "can_run_on_DLA",
               "profiling_verbosity", "builder_optimization_level", "flags"},
    "network": {"num_inputs", "num_outputs", "get_input", "get_output", "num_layers", "get_layer"},
    "tensor": {"name", "shape", "dtype"},
    "parser": {"parse", "parse_from_file", "num_errors", "get_error", "clear_errors", "supports_operator"},
    "error": {"code", "desc", "file", "func", "line", "node", "node_name", "node_operator",
              "local_function_stack"},
    "profile": {"set_shape", "get_shape"},
    "timing_cache": {"serialize", "combine", "reset"},
    "runtime": {"deserialize_cuda_engine"},
    "engine": {"num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
               "create_execution_context", "num_bindings", "get_binding_name", "binding_is_input",
               "get_binding_shape", "get_binding_dtype", "name", "num_layers"},
    "context": {"set_tensor_address", "execute_async_v3", "execute_async_v2", "set_input_shape",
                "get_tensor_shape", "engine"},
    # pycuda.driver (https://documen.tician.de/pycuda/driver.html)
    "cuda": {"init", "Device", "pagelocked_empty", "mem_alloc", "memcpy_htod_async", "memcpy_dtoh_async", "Stream"},
    "device": {"make_context", "name", "compute_capability"},
    "allocation": {"free", "gpudata"},
    "stream": {"handle", "synchronize"},
    "cuda_context": {"pop", "push", "detach"},
}
ENUMS = {"Logger", "BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DeviceType", "TensorIOMode",
         "IInt8EntropyCalibrator2"}


def receiver(node: ast.expr) -> str | None:
    """'trt' for trt.X, 'engine' for self.engine.X / engine.X, 'runtime' for self._runtime.X."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr.lstrip("_")
    return None


def unknown_api_names(source: str) -> list[str]:
    """Attribute uses on TensorRT/pycuda objects that are not in TRT_API (an API typo shows up here)."""
    unknown = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        owner = receiver(node.value)
        if owner in TRT_API and owner not in ENUMS and node.attr not in TRT_API[owner]:
            unknown.append(f"{owner}.{node.attr}")
        value = node.value
        if isinstance(value, ast.Attribute) and receiver(value.value) == "trt" and value.attr in ENUMS:
            if node.attr not in TRT_API[value.attr]:
                unknown.append(f"trt.{value.attr}.{node.attr}")
    return unknown


def used_receivers(source: str) -> set[str]:
    return {receiver(n.value) for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)} & set(TRT_API)


@pytest.fixture
def kit(tmp_path):
    inputs = [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"},
              {"name": "odd name'\"$(x)", "shape": [1, 4], "dtype": "float32"}]
    files = render_engine_kit(tmp_path, inputs=inputs, options={"workspace_mb": 512, "dla_core": None})
    return tmp_path, files


def test_kit_renders_and_compiles(kit):
    out_dir, files = kit
    assert sorted(p.name for p in files) == ["build_engine.py", "build_engine.sh"]
    py_compile.compile(str(out_dir / "build_engine.py"), doraise=True)
    assert subprocess.run(["sh", "-n", str(out_dir / "build_engine.sh")]).returncode == 0
    assert all(os.access(p, os.X_OK) for p in files)


def test_generated_code_uses_only_documented_tensorrt_api(kit):
    out_dir, _ = kit
    build_source = (out_dir / "build_engine.py").read_text()
    runner_source = render("tensorrt/runner_tensorrt.py.j2")
    assert unknown_api_names(build_source) == []
    assert unknown_api_names(runner_source) == []
    # the check really looks at the objects that matter ...
    assert {"trt", "builder", "config", "network", "parser", "error", "profile"} <= used_receivers(build_source)
    assert {"trt", "engine", "context", "runtime", "cuda", "stream", "device", "allocation"} <= used_receivers(runner_source)
    # ... and catches a typo
    typo = build_source.replace("set_memory_pool_limit", "set_memory_pool_limt")
    assert unknown_api_names(typo) == ["config.set_memory_pool_limt"]
    assert unknown_api_names(runner_source.replace("TensorIOMode.INPUT", "TensorIOMode.INPT")) == \
        ["trt.TensorIOMode.INPT"]


def test_build_script_covers_the_required_settings(kit):
    source = (kit[0] / "build_engine.py").read_text()
    for needle in ("BuilderFlag.INT8", "BuilderFlag.FP16", "BuilderFlag.GPU_FALLBACK", "DeviceType.DLA",
                   "build_serialized_network", "create_timing_cache", "set_timing_cache",
                   "add_optimization_profile", "IInt8EntropyCalibrator2", "get_error", "STRONGLY_TYPED"):
        assert needle in source, needle


def test_build_script_without_tensorrt_fails_with_one_line(kit):
    if shutil.which("nvidia-smi") or _imports("tensorrt"):
        pytest.skip("tensorrt is installed here; the engine test covers the real build")
    result = subprocess.run([sys.executable, str(kit[0] / "build_engine.py")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "TensorRT Python package is not installed" in result.stderr
    assert not (kit[0] / "model.plan").exists()


def _imports(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def _fake_trtexec(tmp_path: Path, supports_int8: bool) -> Path:
    """A stand-in that only records its argv: this tests our shell script, not TensorRT."""
    stub = tmp_path / "trtexec-argv-recorder"
    help_text = "  --int8  --fp16  --calib=<file>" if supports_int8 else "  --stronglyTyped"
    stub.write_text("#!/bin/sh\nif [ \"$1\" = --help ]; then echo '" + help_text + "'; exit 0; fi\n"
                    "for a in \"$@\"; do printf '%s\\n' \"$a\"; done\n")
    stub.chmod(0o755)
    return stub


def _run_sh(out_dir: Path, stub: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRTEXEC": str(stub)}
    return subprocess.run(["sh", str(out_dir / "build_engine.sh"), *args], capture_output=True, text=True, env=env)


def test_shell_script_arguments(kit, tmp_path_factory):
    out_dir, _ = kit
    stub = _fake_trtexec(tmp_path_factory.mktemp("bin"), supports_int8=True)
    argv = _run_sh(out_dir, stub).stdout.splitlines()
    assert argv[:3] == ["--onnx=model.qdq.onnx", "--int8", "--fp16"]
    assert "--saveEngine=model.plan" in argv and "--timingCacheFile=timing.cache" in argv
    assert "--shapes=x:1x3x8x8,odd name'\"$(x):1x4" in argv, "a tensor name with quotes stays one argument"
    assert "--memPoolSize=workspace:512M" in argv and not any(a.startswith("--useDLACore") for a in argv)

    implicit = _run_sh(out_dir, stub, "--implicit-calib", "--dla-core", "1").stdout.splitlines()
    assert implicit[:4] == ["--onnx=reference.onnx", "--int8", "--fp16", "--calib=calibration.cache"]
    assert "--useDLACore=1" in implicit and "--allowGPUFallback" in implicit

    strongly_typed = _fake_trtexec(tmp_path_factory.mktemp("bin11"), supports_int8=False)
    assert _run_sh(out_dir, strongly_typed).stdout.splitlines()[:2] == ["--onnx=model.qdq.onnx", "--stronglyTyped"]
    refused = _run_sh(out_dir, strongly_typed, "--implicit-calib")
    assert refused.returncode == 1 and "removed implicit INT8" in refused.stderr


def test_runner_contract_compiles_standalone(tmp_path):
    source = render("tensorrt/runner_tensorrt.py.j2")
    path = tmp_path / "runner.py"
    path.write_text(source)
    py_compile.compile(str(path), doraise=True)
    tree = ast.parse(source)
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], "imports stay lazy"
    runner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Runner")
    methods = {f.name: [a.arg for a in f.args.args] for f in runner.body if isinstance(f, ast.FunctionDef)}
    assert methods["__init__"] == ["self", "bundle_dir", "options"]
    assert methods["infer"] == ["self", "feed"]
    for name in ("inputs", "describe", "close"):
        assert methods[name] == ["self"], name
    imported = {alias.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for alias in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - {None} <= {"numpy", "tensorrt", "pycuda.driver", "pathlib", "subprocess", "sys"}
    assert "execute_async_v3" in source and "execute_async_v2" in source and "pagelocked_empty" in source


def test_import_works_without_tensorrt_and_pycuda():
    code = ("import sys; sys.modules['tensorrt'] = None; sys.modules['pycuda'] = None; "
            "import edgepipe.backends.tensorrt as t; print(t.build_tensorrt.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "build_tensorrt"


def _minmax_calibration(model) -> CalibrationResult:
    from edgepipe.backends.tensorrt.cache import tensors_tensorrt_sees

    names = sorted(tensors_tensorrt_sees(model))
    return CalibrationResult(tensors={n: TensorCalibration(n, -2.0, 2.0, 2.0, -2.0, 2.0, "minmax") for n in names})


def test_build_tensorrt_writes_the_bundle_files(tmp_path):
    model = tiny_conv_model()
    result = build_tensorrt(model, _minmax_calibration(model), tmp_path, {"build_engine": False, "dla_core": 0})
    assert result["files"] == ["model.qdq.onnx", "calibration.cache", "build_engine.py", "build_engine.sh"]
    assert all((tmp_path / f).is_file() for f in result["files"])
    assert result["engine_built"] is False and "device" in result["engine_note"]
    assert result["qdq_report"]["qdq_pairs"] > 0
    qdq = onnx.load(str(tmp_path / "model.qdq.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    assert "'dla_core': 0" in (tmp_path / "build_engine.py").read_text()


def test_build_tensorrt_engine_request_without_tensorrt_records_why(tmp_path):
    if _imports("tensorrt"):
        pytest.skip("tensorrt imports here; the tensorrt-marked test builds a real engine")
    model = tiny_conv_model()
    result = build_tensorrt(model, _minmax_calibration(model), tmp_path, {"build_engine": True})
    assert result["engine_built"] is False and "not installed" in result["engine_note"]
    assert "model.plan" not in result["files"]


def test_dynamic_input_fails_before_writing(tmp_path):
    model = tiny_conv_model(dynamic_batch=True)
    with pytest.raises(UserError, match="input 'x' has dynamic shape"):
        build_tensorrt(model, _minmax_calibration(model), tmp_path / "out", {})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_build_script_prints_tensorrt_text_as_one_inert_line(kit):
    """TensorRT's parser and builder messages quote node names from the model: every `error:` line
    goes through one_line, so a name cannot drive the terminal or forge a second line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rendered_build_engine", kit[0] / "build_engine.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # defines functions only; tensorrt is imported inside build()
    hostile = "node 'conv\x1b]52;c;Y3VybA==\x07\u202e':\nerror: forged line\r"
    assert script.one_line(hostile) == "node 'conv\\x1b]52;c;Y3VybA==\\x07\\u202e': error: forged line"
    tree = ast.parse((kit[0] / "build_engine.py").read_text())
    printed = [value.value for call in ast.walk(tree)
               if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "print"
               for arg in call.args if isinstance(arg, ast.JoinedStr)
               for value in arg.values if isinstance(value, ast.FormattedValue)]
    raw = [ast.unparse(v) for v in printed if isinstance(v, ast.Name) and v.id == "exc"]
    assert not raw, f"exception text printed without one_line: {raw}"
    assert sum(isinstance(v, ast.Call) and getattr(v.func, "id", "") == "one_line" for v in printed) == 2
