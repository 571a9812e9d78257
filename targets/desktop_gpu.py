"""Desktop / server NVIDIA GPUs: TensorRT INT8 + FP16; built at build time when TensorRT is on the host."""

from edgepipe_targets.tensorrt_family import TensorRTTarget


class DesktopGpuTarget(TensorRTTarget):
    name = "desktop-gpu"
    description = "Desktop/server NVIDIA GPU (TensorRT 10/11)"
    precision = "INT8 (explicit Q/DQ) + FP16"
    default_options = {"threads": 1, "workspace_mb": 4096}
    build_engine_on_host = True
    runtime_requirements = ["tensorrt>=10", "pycuda"]
    device_readme = "Install TensorRT and pycuda: `pip install tensorrt pycuda` (CUDA driver required)."
