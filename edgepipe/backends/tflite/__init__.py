"""TFLite backend for the arm-cpu target: ONNX -> full-integer int8 .tflite (and an fp32 twin).

lower.py walks the graph (layouts, quantization, float islands), ops/ holds one lowering module
per op family, validator.py checks every kernel rule, writer.py serializes; build.py ties them.
"""

from edgepipe.backends.tflite.build import build_tflite, check_supported, unsupported_nodes

__all__ = ["build_tflite", "check_supported", "unsupported_nodes"]
