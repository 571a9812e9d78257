"""ONNX Runtime on the device's CPU: the int8 Q/DQ model the target simulates, run by ORT's kernels.

Everything edgepipe needs from a target is here and in templates/: the runner that run.py
includes (templates/runner_onnxruntime.py.j2, found because this package ships a templates/
folder), the model file, and the I/O description. No edgepipe module names this target.
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.graph import describe_io
from edgepipe.targets import BackendResult, Target

MODEL_FILE = "model.qdq.onnx"


class OnnxRuntimeCpuTarget(Target):
    name = "onnxrt-cpu"
    backend = "onnxruntime"
    description = "ONNX Runtime on the device CPU (int8 Q/DQ ONNX)"
    precision = "int8 Q/DQ (activations symmetric, weights per channel)"
    input_layout = "NCHW"
    activation_symmetric = True
    runner_template = "runner_onnxruntime.py.j2"
    runtime_requirements = ["onnxruntime>=1.16"]
    verified_here = "run.py runs the Q/DQ model in ONNX Runtime on this host"
    host_report = True
    default_options = {"threads": 1}

    def build_backend(self, model, calibration, out_dir: Path, settings: dict) -> BackendResult:
        float_nodes = frozenset(settings.get("float_nodes") or ())
        qdq, report = self.qdq_model(model, calibration, keep_float=float_nodes)
        (Path(out_dir) / MODEL_FILE).write_bytes(qdq.SerializeToString(deterministic=True))
        manifest = {"model": MODEL_FILE, "precision": {"policy": self.precision, "qdq": report,
                                                       "float_nodes": sorted(float_nodes)}}
        return BackendResult(files=[MODEL_FILE], io=describe_io(model), manifest=manifest)
