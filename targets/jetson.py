"""NVIDIA Jetson (Orin / Xavier): TensorRT INT8 with FP16 fallback, engine built on the board."""

from edgepipe_targets.tensorrt_family import TensorRTTarget


class JetsonTarget(TensorRTTarget):
    name = "jetson"
    description = "NVIDIA Jetson Orin/Xavier (JetPack TensorRT); optional DLA core"
    precision = "INT8 (explicit Q/DQ) with FP16 fallback"
    default_options = {"threads": 1, "workspace_mb": 1024, "dla_core": None}
    device_readme = (
        "JetPack ships TensorRT and its Python bindings; install pycuda with `pip3 install pycuda`.\n"
        "DLA: build with `python3 build_engine.py --dla-core 0` (layers the DLA cannot run fall back to the GPU).\n"
        "Old JetPack (TensorRT 8.x without Q/DQ support for some layers): `python3 build_engine.py --implicit-calib` "
        "uses reference.onnx with calibration.cache."
    )
