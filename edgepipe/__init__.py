"""edgepipe: turn a trained PyTorch/ONNX model into a calibrated, device-ready deployment bundle."""

__version__ = "0.1.0"
