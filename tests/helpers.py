"""Small shared test helpers: tiny ONNX models built with onnx.helper and a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_conv_model(dynamic_batch: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(3->4, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->5)."""
    rng = np.random.default_rng(seed)
    batch = "N" if dynamic_batch else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_cli(*args: str, cwd: str | Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `edgepipe` entry point in a subprocess (real exit codes, real stderr)."""
    return subprocess.run([sys.executable, "-m", "edgepipe", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def deployed_outputs(bundle: Path, feed: dict) -> list:
    """The bundle's int8 model on `feed` (ONNX layout): model.tflite in LiteRT, else the Q/DQ ONNX in ONNX Runtime."""
    import json

    import onnxruntime as ort

    if (bundle / "model.tflite").exists():
        from edgepipe.backends.tflite.runtime import run_tflite

        io = json.loads((bundle / "manifest.json").read_text())["io"]
        return list(run_tflite(bundle / "model.tflite", io, feed).values())
    session = ort.InferenceSession(str(bundle / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def sqnr_db(reference, got) -> float:
    import numpy as np

    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((got - reference) ** 2), 1e-30)))


class ArrayDataset:
    """Stand-in for edgepipe.data.Dataset over one input `x`: len, sample(i) with batch dim 1."""

    def __init__(self, x):
        import numpy as np

        self.x = np.asarray(x, np.float32)
        self.names = ["x"]

    def __len__(self):
        return len(self.x)

    def sample(self, i):
        return {"x": self.x[i : i + 1]}
