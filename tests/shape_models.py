"""ONNX models with the input shapes real files ship with (symbolic, -1, 0, static leading dims,
RNN states, several inputs, none) and a CLI build-and-compare helper for tests/test_shapes.py.

Each model is saved exactly as built: the tool gets the file as a user has it, never one whose
shapes were fixed or simplified first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import run_cli


def _model(nodes, inputs, outputs, inits=(), value_info=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "shapes", inputs, outputs, list(inits), value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _const(name, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def ocr_like(seed: int = 0) -> onnx.ModelProto:
    """A recognizer head as PaddleOCR exports it: symbolic batch and width, stale partial value_info,
    ReduceMean (opset 18 axes input) over height, a Reshape with 0/-1 and a Transpose to [B, W, C]."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, 8, "p2o.DynamicDimension.0"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["?", "p2o.DynamicDimension.1", 4])
    stale = [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["?", 4, 8, "p2o.DynamicDimension.0"]),
             helper.make_tensor_value_info("m", TensorProto.FLOAT, None)]  # a type without a shape
    inits = [_const("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             _const("b", rng.standard_normal(4).astype(np.float32)),
             _const("axes", np.array([2], np.int64)),
             _const("target", np.array([0, 4, -1], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=1),
             helper.make_node("Reshape", ["m", "target"], ["s"]),
             helper.make_node("Transpose", ["s"], ["y"], perm=[0, 2, 1])]
    return _model(nodes, [x], [y], inits, stale, opset=18)


def conv_with_batch(batch) -> onnx.ModelProto:
    """A classifier whose batch dim is stored as `batch` (-1, 0, a name)."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])
    inits = [_const("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             _const("fc", rng.standard_normal((5, 4)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return _model(nodes, [x], [y], inits)


def static_leading(shape=(3, 4, 5)) -> onnx.ModelProto:
    """y = x * k + c on an input whose static leading dim is not a batch (ONNX node-test style)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    k = np.linspace(0.5, 1.5, shape[-1]).astype(np.float32)
    nodes = [helper.make_node("Mul", ["x", "k"], ["t"]), helper.make_node("Add", ["t", "c"], ["y"])]
    return _model(nodes, [x], [y], [_const("k", k), _const("c", np.float32(0.25))])


def rnn_state() -> onnx.ModelProto:
    """Two inputs with different leading dims: x [B, 7] and an RNN state h [2, B, 8] (batch on axis 1)."""
    rng = np.random.default_rng(2)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 7])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, "B", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])
    inits = [_const("w", rng.standard_normal((7, 8)).astype(np.float32)), _const("axes", np.array([0], np.int64))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]),
             helper.make_node("Relu", ["p"], ["q"]),
             helper.make_node("ReduceSum", ["h", "axes"], ["s"], keepdims=0),
             helper.make_node("Add", ["q", "s"], ["y"])]
    return _model(nodes, [x, h], [y], inits, opset=18)


def no_inputs() -> onnx.ModelProto:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, np.float32)))
    return _model([node], [], [y])


def input_is_output() -> onnx.ModelProto:
    """The input itself is also a graph output (a pass-through seen in exported preprocessing)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    return _model(nodes, [x], [y, helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])])


# --- building through the CLI and checking against ONNX Runtime on the ORIGINAL model ---------------


def build(tmp_path: Path, model: onnx.ModelProto, data: dict, target: str, *extra: str, name: str = "model"):
    """Save the model and its calibration .npz as shipped, build through the CLI; (result, bundle dir)."""
    model_path, calib = tmp_path / f"{name}.onnx", tmp_path / f"{name}.npz"
    if not model_path.exists():
        onnx.save(model, str(model_path))
        np.savez(calib, **data)
    out = tmp_path / f"out-{name}-{target}"
    result = run_cli("build", "--model", str(model_path), "--calib", str(calib), "--target", target,
                     "--out", str(out), "--no-host-report", "--json", *extra, cwd=tmp_path)
    return result, out


def original_outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def tflite_outputs(path: Path, manifest: dict, feed: dict) -> dict[str, np.ndarray]:
    """Run a bundle's .tflite on an ONNX-layout feed (NHWC inputs transposed as the manifest says)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    interpreter.allocate_tensors()
    specs = {s["name"]: s for s in manifest["io"]["inputs"]}
    for detail in interpreter.get_input_details():
        x = feed[detail["name"]]
        if specs.get(detail["name"], {}).get("layout") == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        scale, zero = detail["quantization"]
        if detail["dtype"] != np.float32:
            x = np.clip(np.rint(x / scale) + zero, -128, 127)
        interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    outputs = {}
    out_specs = {s["name"]: s for s in manifest["io"]["outputs"]}
    for detail in interpreter.get_output_details():
        y = interpreter.get_tensor(detail["index"])
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        if out_specs.get(detail["name"], {}).get("layout") == "NHWC" and y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        outputs[detail["name"]] = y
    return outputs


def check_bundle(out: Path, target: str, model: onnx.ModelProto, feed: dict, int8_tolerance: float = 0.08) -> None:
    """fp32 .tflite within 1e-4 of ONNX Runtime on the original model; int8 (.tflite or the TensorRT
    Q/DQ ONNX, which must pass the ONNX checker) within `int8_tolerance` of the output range."""
    import onnxruntime as ort

    manifest = json.loads((out / "manifest.json").read_text())
    names = [o.name for o in model.graph.output]
    expected = dict(zip(names, original_outputs(model, feed)))
    if target == "arm-cpu":
        fp32 = tflite_outputs(out / "model.fp32.tflite", manifest, feed)
        int8 = tflite_outputs(out / "model.tflite", manifest, feed)
    else:
        qdq = onnx.load(str(out / "model.qdq.onnx"))
        onnx.checker.check_model(qdq, full_check=True)
        session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
        fp32, int8 = None, dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    for name, want in expected.items():
        scale = max(float(np.max(np.abs(want))), 1e-6)
        if fp32 is not None:
            got = fp32[name].reshape(want.shape)
            assert float(np.max(np.abs(got - want))) <= 1e-4 * scale, (name, got, want)
        got = int8[name].reshape(want.shape)
        span = max(float(np.ptp(want)), 1e-6)
        assert float(np.max(np.abs(got - want))) <= int8_tolerance * span, (name, target, got, want)
