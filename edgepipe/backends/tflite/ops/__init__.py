"""Op registry: one module per ONNX op family, found by ONNX op type.

Adding an op family means adding ONE file here (e.g. `ops/softmax.py`) and its conformance test
(`tests/test_tflite_ops_softmax.py`); nothing else changes. Every module in this package is
imported by `registry()`, and its decorated functions register themselves:

    from edgepipe.backends.tflite.lower import NHWC, Lowering
    from edgepipe.backends.tflite.ops import register

    def check_softmax(ctx: Lowering, node) -> str | None:
        '''Why this node cannot be lowered (becomes UnsupportedOpError), or None.'''

    @register("Softmax", check=check_softmax, int8=True)
    def lower_softmax(ctx: Lowering, node) -> None:
        dtype = ctx.node_dtype(node)                  # "int8", or "float32" (fp32 model, float island)
        x = ctx.get(node.input[0], dtype)             # input in its current layout; QUANTIZE/DEQUANTIZE/
        perm = ctx.layout(node.input[0])              #   TRANSPOSE inserted by the registry if needed
        quant = Quantization.per_tensor(1 / 256, -128) if dtype == "int8" else None   # kernel rule
        out = ctx.new_value(node.output[0], dtype, perm, quant)   # quant None -> from calibration
        ctx.emit("SOFTMAX", [x], [out], node, "SoftmaxOptions", Beta=1.0)

Contract of a lowering:
- Read ONNX facts from the context: `ctx.shape(name)`, `ctx.constant(name)`, `node_attrs(node)`.
- Ask for inputs with `ctx.get(name, dtype, perm)`; `perm=NHWC` for image ops, `None` to keep
  the input's layout (elementwise ops), `identity(rank)` for layout-sensitive ops (Reshape...).
  Map ONNX axes to TFLite axes with `perm.index(axis)`.
- Register every ONNX output with `ctx.new_value(name, dtype, perm, quant)`; pass `quant` only
  when the kernel fixes it (LOGISTIC 1/256, TANH 1/128) or passes it through (RESHAPE,
  MAX_POOL_2D, CONCATENATION: use the input's `ctx.tensor(x).quantization`).
- `ctx.fuse_activation(node)` folds a following Relu/Relu6/Clip(-1,1) into ops with a
  `FusedActivationFunction` field.
- `int8=False` (or a predicate `(ctx, node) -> bool`) lowers the node in float32 inside the int8
  model: DEQUANTIZE -> float op -> QUANTIZE appear automatically and the node is listed in
  `float_nodes`.
- The validator (validator.py) checks every kernel rule afterwards; a lowering that breaks one
  fails the build, never writes a file.
- Test with tests/tflite_harness.py: `harness.check_conformance(model, tmp_path)` converts fp32
  and int8, runs both in LiteRT (XNNPACK and without delegates) and compares with ONNX Runtime.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import onnx

_REGISTRY: dict[str, "OpLowering"] = {}
_LOADED = False


@dataclass
class OpLowering:
    op_type: str
    lower: Callable
    check: Callable | None = None  # (ctx, node) -> reason it cannot be lowered, or None
    int8: bool | Callable = True  # False / predicate(ctx, node) -> False: lowered as a float island

    def unsupported_reason(self, ctx, node: onnx.NodeProto) -> str | None:
        return self.check(ctx, node) if self.check is not None else None

    def supports_int8(self, ctx, node: onnx.NodeProto) -> bool:
        return bool(self.int8(ctx, node)) if callable(self.int8) else bool(self.int8)


def register(*op_types: str, check: Callable | None = None, int8: bool | Callable = True):
    """Decorator: register a lowering function for one or more ONNX op types."""

    def decorate(function: Callable) -> Callable:
        for op_type in op_types:
            if op_type in _REGISTRY:
                raise ValueError(f"ONNX op {op_type} registered twice ({_REGISTRY[op_type].lower.__module__})")
            _REGISTRY[op_type] = OpLowering(op_type, function, check, int8)
        return function

    return decorate


def registry() -> dict[str, OpLowering]:
    """All registered lowerings by ONNX op type (imports every family module once)."""
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True
    return _REGISTRY
