"""Shared behaviour of the NVIDIA targets: explicit-quantization TensorRT (Q/DQ ONNX + engine kit).

TensorRT engines are specific to one GPU and one TensorRT version, so the bundle carries the
Q/DQ ONNX and a build kit; the engine is built on the device (or on this host when `tensorrt`
imports and the target is a desktop GPU).
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.graph import describe_io
from edgepipe.targets import BackendResult, Target

VERIFIED_HERE = (
    "Q/DQ ONNX run in ONNX Runtime (int8 arithmetic), calibration cache format, engine kit "
    "compiles and uses only TensorRT 10 API names; engine build and run.py need TensorRT + GPU"
)


HOST_EMULATION = "host emulation, not device"


def control_flow_note(qdq_report: dict) -> str:
    """One line naming the control-flow nodes whose subgraphs run float ('' when there are none),
    and the tensors calibration.cache leaves out (names with line breaks)."""
    nodes = sorted(name for name, why in qdq_report.get("float_nodes", {}).items() if why.startswith("control flow"))
    left_out = qdq_report.get("calibration_cache_left_out") or []
    notes = []
    if nodes:
        shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        notes.append(f"float (control flow, FP16 on the device): {shown}")
    if left_out:
        notes.append(f"calibration.cache leaves out {len(left_out)} tensor(s) whose names hold line breaks "
                     f"(e.g. {left_out[0]!r}); the implicit-INT8 fallback runs them in float")
    return "; ".join(notes)


class TensorRTTarget(Target):
    backend = "tensorrt"
    input_layout = "NCHW"
    activation_symmetric = True
    runner_template = "tensorrt/runner_tensorrt.py.j2"
    runtime_requirements = ["pycuda"]  # TensorRT itself comes with JetPack / NVIDIA's packages
    verified_here = VERIFIED_HERE
    host_report = False
    build_engine_on_host = False
    backend_options = ("threads", "build_engine", "workspace_mb", "dla_core", "per_channel")

    def operators(self):
        from edgepipe.backends.tensorrt.operators import tensorrt_operators

        return tensorrt_operators()

    def supports(self, model) -> list[tuple[str, str, str]]:
        """The operator table's refusals plus TensorRT's control-flow restrictions (loop trip counts,
        If branch outputs)."""
        from edgepipe.backends.tensorrt.control_flow import control_flow_problems

        return super().supports(model) + control_flow_problems(model)

    def build_backend(self, model, calibration, out_dir: Path, settings: dict) -> BackendResult:
        from edgepipe.backends.tensorrt import build_tensorrt

        options = {**self.options, **{k: v for k, v in settings.items() if v is not None}}
        options["build_engine"] = bool(options.get("build_engine", True)) and self.build_engine_on_host
        result = build_tensorrt(model, calibration, out_dir, options)
        manifest = {
            "precision": {
                "policy": self.precision,
                "float_nodes": sorted(options.get("float_nodes") or []),
                "requested_float_nodes": sorted(options.get("float_nodes") or []),
                "qdq": result.get("qdq_report", {}),
            },
            "engine": {"built_on_host": bool(result.get("engine_built")), "note": result.get("engine_note", "")},
            # written on the device by build_engine.py: not part of the verified bundle
            "device_generated": ["model.plan", "timing.cache"],
        }
        return BackendResult(files=list(result["files"]), io=describe_io(model), manifest=manifest,
                             note=control_flow_note(result.get("qdq_report", {})))

    def deployed_probe(self, bundle: Path, manifest: dict, tensors: list[str] | None = None):
        """The bundle's Q/DQ ONNX in ONNX Runtime: TensorRT's int8 arithmetic emulated on this host
        (the engine itself fuses layers and picks kernels on the device)."""
        from edgepipe import graph
        from edgepipe.backends.tensorrt import QDQ_MODEL_FILE
        from edgepipe.accuracy.compare import OnnxTensorProbe

        model = graph.load_model(Path(bundle) / QDQ_MODEL_FILE)
        return OnnxTensorProbe(model, f"{QDQ_MODEL_FILE} in ONNX Runtime", HOST_EMULATION, tensors)

