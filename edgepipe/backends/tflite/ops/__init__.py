"""Op registry: one module per ONNX op family, found by (domain, op type, opset).

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
        quant = Quantization.per_tensor(*fixed_output("SOFTMAX")) if dtype == "int8" else None  # builtins.py
        out = ctx.new_value(node.output[0], dtype, perm, quant)   # quant None -> from calibration
        ctx.emit("SOFTMAX", [x], [out], node, "SoftmaxOptions", Beta=1.0)

Registration keys follow ONNX (edgepipe/backends/support.py): `register("Gelu", since=20)`
covers Gelu of the ONNX domain from opset 20 on; `until=12` ends a range, so a family can
register a second function where an opset changed the operator's meaning; `domain=` names a
non-ONNX domain. Nodes of domains nothing registers, control flow and opsets outside every range
are refused by name before any lowering runs. A pattern that one TFLite kernel computes (x *
0.5 * (1 + Erf(x / sqrt 2)) is GELU) is found by a `@register_rewrite` function in its family
module, which replaces the pattern by one node of FUSED_DOMAIN registered in the same module.
A rewrite that folds nodes into another node names them with `record_absorbed(model, members,
owner)`, so `float_nodes` / `int16_nodes` naming a member (the planner names the original graph's
nodes) apply to the owner, and the planner counts the members with it; a rewrite that replaces one
node by several (an unrolled LSTM) names them with `record_expanded(model, owner, members)`.

Contract of a lowering:
- Read ONNX facts from the context: `ctx.shape(name)`, `ctx.constant(name)`, `node_attrs(node)`.
- Ask for inputs with `ctx.get(name, dtype, perm)`; `perm=NHWC` for image ops, `None` to keep
  the input's layout (elementwise ops), `identity(rank)` for layout-sensitive ops (Reshape...).
  Map ONNX axes to TFLite axes with `perm.index(axis)`.
- Register every ONNX output with `ctx.new_value(name, dtype, perm, quant)`; pass `quant` only
  when the kernel fixes it (`builtins.fixed_output(opcode)`) or passes it through (RESHAPE,
  MAX_POOL_2D, CONCATENATION: use the input's `ctx.tensor(x).quantization`).
- A TFLite builtin the project has never emitted needs its row in builtins.py (version, options,
  int8 rules); the validator refuses any opcode without one.
- `ctx.fuse_activation(node)` folds a following Relu/Relu6/Clip(-1,1) into ops with a
  `FusedActivationFunction` field.
- `int8=False` (or a predicate `(ctx, node) -> bool`) lowers the node in float32 inside the int8
  model: DEQUANTIZE -> float op -> QUANTIZE appear automatically and the node is listed in
  `float_nodes`.
- `table=True` (or a predicate) marks such a float island as one XNNPACK evaluates as an int8
  lookup table when it reads and writes int8 (DEQUANTIZE, elementwise ops on one tensor and
  constants, QUANTIZE): the planner's report counts it as an int8 op then (accuracy/plan_report.py).
- `int16=True` (or a predicate) says the lowering also emits the 16x8 kernels (int16
  activations, int8 weights) when `ctx.node_dtype(node)` is "int16": every builtin it emits then
  needs its `int16` version in builtins.py, fixed outputs come from `fixed_output(opcode, dtype)`,
  and `ctx.new_value` / `ctx.filter_and_bias` choose the symmetric int16 grid and int64 bias.
  Families without it stay int8 when int16 activations are asked for.
- The validator (validator.py) checks every kernel rule afterwards; a lowering that breaks one
  fails the build, never writes a file.
- Test with tests/tflite_harness.py: `harness.check_conformance(model, tmp_path)` converts fp32
  and int8, runs both in LiteRT (XNNPACK and without delegates) and compares with ONNX Runtime.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass
from typing import Callable

import onnx

from edgepipe.backends.support import LATEST, ONNX_DOMAIN, OpKey, OpTable

FUSED_DOMAIN = "edgepipe.fused"  # nodes our own graph rewrites create (e.g. Erf-based GELU -> one Gelu)

_TABLE: OpTable["OpLowering"] = OpTable("TFLite lowering")
_REWRITES: list[tuple[bool, Callable]] = []  # (late, rewrite)
_LOADED = False


@dataclass
class OpLowering:
    key: OpKey
    lower: Callable
    check: Callable | None = None  # (ctx, node) -> reason it cannot be lowered, or None
    int8: bool | Callable = True  # False / predicate(ctx, node) -> False: lowered as a float island
    int16: bool | Callable = False  # True / predicate(ctx, node) -> True: has a 16x8 lowering
    table: bool | Callable = False  # True / predicate: a float island XNNPACK runs as an int8 lookup table

    @property
    def op_type(self) -> str:
        return self.key.op_type

    def unsupported_reason(self, ctx, node: onnx.NodeProto) -> str | None:
        return self.check(ctx, node) if self.check is not None else None

    def supports_int8(self, ctx, node: onnx.NodeProto) -> bool:
        return bool(self.int8(ctx, node)) if callable(self.int8) else bool(self.int8)

    def supports_int16(self, ctx, node: onnx.NodeProto) -> bool:
        return bool(self.int16(ctx, node)) if callable(self.int16) else bool(self.int16)

    def tabulated(self, ctx, node: onnx.NodeProto) -> bool:
        return bool(self.table(ctx, node)) if callable(self.table) else bool(self.table)


def register(*op_types: str, check: Callable | None = None, int8: bool | Callable = True,
             int16: bool | Callable = False, domain: str = ONNX_DOMAIN, since: int = 1, until: int = LATEST,
             table: bool | Callable = False):
    """Decorator: register a lowering function for ONNX op types of `domain`, opsets [since, until]."""

    def decorate(function: Callable) -> Callable:
        for op_type in op_types:
            key = OpKey(domain, op_type, since, until)
            _TABLE.add(key, OpLowering(key, function, check, int8, int16, table))
        return function

    return decorate


ABSORBED_KEY = "edgepipe.absorbed"  # prepared model metadata: {node a rewrite removed: node now computing it}


def record_absorbed(model: onnx.ModelProto, members, owner: str) -> None:
    """Note that a rewrite folded `members` into node `owner`: a float / int16 request naming a
    member then applies to its owner, and the planner counts the member with it."""
    mapping = absorbed_nodes(model)
    mapping.update({member: mapping.get(owner, owner) for member in members if member != owner})
    entries = [p for p in model.metadata_props if p.key != ABSORBED_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    model.metadata_props.add(key=ABSORBED_KEY, value=json.dumps(mapping, sort_keys=True))


def absorbed_nodes(model: onnx.ModelProto) -> dict[str, str]:
    value = next((p.value for p in model.metadata_props if p.key == ABSORBED_KEY), None)
    return json.loads(value) if value else {}


EXPANDED_KEY = "edgepipe.expanded"  # prepared model metadata: {node a rewrite replaced: [nodes now computing it]}


def record_expanded(model: onnx.ModelProto, owner: str, members) -> None:
    """Note that a rewrite replaced node `owner` by `members` (an unrolled LSTM): a float / int16
    request naming the owner applies to every member."""
    mapping = expanded_nodes(model)
    mapping[owner] = list(members)
    entries = [p for p in model.metadata_props if p.key != EXPANDED_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    model.metadata_props.add(key=EXPANDED_KEY, value=json.dumps(mapping, sort_keys=True))


def expanded_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    value = next((p.value for p in model.metadata_props if p.key == EXPANDED_KEY), None)
    return json.loads(value) if value else {}


def register_rewrite(function: Callable | None = None, *, late: bool = False):
    """Decorator: a graph rewrite `(model) -> None` run on the prepared model before lowering,
    for patterns that map to one TFLite kernel (their nodes become one FUSED_DOMAIN node).
    `@register_rewrite(late=True)` runs after every other rewrite: for generic rewrites (a chain
    of constant arithmetic) that would otherwise take nodes a specific pattern (GELU) needs."""

    def decorate(rewrite: Callable) -> Callable:
        _REWRITES.append((late, rewrite))
        return rewrite

    return decorate(function) if function is not None else decorate


def rewrites() -> list[Callable]:
    registry()
    return [rewrite for _, rewrite in sorted(_REWRITES, key=lambda entry: entry[0])]


def registry() -> OpTable[OpLowering]:
    """All registered lowerings (imports every family module once)."""
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True
    return _TABLE
