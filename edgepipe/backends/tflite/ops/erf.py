"""Erf, and exact GELU written with Erf (x * 0.5 * (1 + Erf(x / sqrt 2)), ConvNeXt / ViT / BERT).

Exporters before opset 20 write exact GELU as five nodes around an Erf. `fuse_erf_gelu` finds
them (every operand order torch and Hugging Face exports produce) and replaces them by one
`edgepipe.fused::Gelu` node, lowered to TFLite's GELU kernel with approximate=False, computed in
float in int8 models too (inside the XNNPACK partition). An Erf outside that pattern has no
TFLite kernel: it is lowered as a float island, Eigen's rational approximation on [-4, 4] (x * P(x^2) / Q(x^2), within 5e-7
of erf in float32; erf is +-1 in float32 beyond 4).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe import graph
from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import FUSED_DOMAIN, register, register_rewrite
from edgepipe.backends.tflite.ops.activations import lower_gelu

NUMERATOR = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
             -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)  # x^1, x^3, ..., x^13
DENOMINATOR = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
               -1.45660718464996e-05)  # x^0, x^2, ..., x^8
CLAMP = 4.0

register("Gelu", domain=FUSED_DOMAIN, int8=False)(lower_gelu)


@register("Erf", int8=False)
def lower_erf(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    x = ctx.get(node.input[0], "float32", perm)
    shape = ctx.tensor(x).shape
    count = iter(range(64))

    def step(opcode, inputs, options_type=None, **options) -> int:
        target = ctx.temp(f"{node.name};erf{next(count)}", shape, "float32")
        ctx.emit(opcode, inputs, [target], node, options_type, **options)
        return target

    def constant(value) -> int:
        return ctx.spec.add_constant(f"{node.name};c{next(count)}", np.float32(value))

    def mul(a, b):
        return step("MUL", [a, b], "MulOptions", FusedActivationFunction=0)

    def add(a, b):
        return step("ADD", [a, b], "AddOptions", FusedActivationFunction=0)

    clamped = step("MAXIMUM", [step("MINIMUM", [x, constant(CLAMP)]), constant(-CLAMP)])
    square = mul(clamped, clamped)

    def horner(coefficients) -> int:
        value = add(mul(square, constant(coefficients[-1])), constant(coefficients[-2]))
        for coefficient in reversed(coefficients[:-2]):
            value = add(mul(square, value), constant(coefficient))
        return value

    numerator = mul(clamped, horner(NUMERATOR))
    out = ctx.new_value(node.output[0], "float32", perm)
    ctx.emit("DIV", [numerator, horner(DENOMINATOR)], [out], node, "DivOptions", FusedActivationFunction=0)


# ----- the exact-GELU pattern ----------------------------------------------------------------------
def _scalar(model, name: str) -> float | None:
    value = graph.constant_value(model, name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _near(value: float | None, target: float, rtol: float = 1e-4) -> bool:
    return value is not None and abs(value - target) <= rtol * abs(target)


def _other_input(node, name: str) -> str | None:
    """The input of a two-input node that is not `name` (None if `name` is not an input)."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _match(model, erf, producers, consumers, outputs) -> tuple[str, str, list] | None:
    """(x, y, member nodes) when `erf` is the core of y = GELU(x), else None."""

    def only_user(name: str, op_type: str):
        users = consumers.get(name, [])
        if name in outputs or len(users) != 1 or users[0].op_type != op_type or users[0].domain not in ("", "ai.onnx"):
            return None
        return users[0]

    scale = producers.get(erf.input[0])
    if scale is None or scale.op_type not in ("Div", "Mul") or only_user(scale.output[0], "Erf") is None:
        return None
    x = scale.input[0]
    if scale.op_type == "Div" and not _near(_scalar(model, scale.input[1]), np.sqrt(2.0)):
        return None
    if scale.op_type == "Mul":
        x = next((name for name in scale.input
                  if _near(_scalar(model, _other_input(scale, name) or ""), 1 / np.sqrt(2.0))), None)
        if x is None:
            return None
    plus_one = only_user(erf.output[0], "Add")
    if plus_one is None or not _near(_scalar(model, _other_input(plus_one, erf.output[0])), 1.0):
        return None
    first = only_user(plus_one.output[0], "Mul")
    if first is None:
        return None
    other = _other_input(first, plus_one.output[0])
    members = [scale, erf, plus_one, first]
    if other == x or _near(_scalar(model, other), 0.5):  # (x * a) * 0.5  or  (a * 0.5) * x
        second = only_user(first.output[0], "Mul")
        needed = 0.5 if other == x else None
        if second is None:
            return None
        last = _other_input(second, first.output[0])
        if not (_near(_scalar(model, last), 0.5) if needed else last == x):
            return None
        return x, second.output[0], members + [second]
    half = producers.get(other)  # (x * 0.5) * a
    if (half is not None and half.op_type == "Mul" and only_user(other, "Mul") is first
            and _other_input(half, x) is not None and _near(_scalar(model, _other_input(half, x)), 0.5)):
        return x, first.output[0], [half] + members
    return None


@register_rewrite
def fuse_erf_gelu(model: onnx.ModelProto) -> None:
    """Replace every exact-GELU pattern by one FUSED_DOMAIN Gelu node (named after its last node)."""
    outputs = {o.name for o in model.graph.output}
    fused = False
    while True:
        producers, consumers = graph.producers(model), graph.consumers(model)
        nodes = list(model.graph.node)
        found = next((m for n in nodes if n.op_type == "Erf" and n.domain in ("", "ai.onnx")
                      for m in [_match(model, n, producers, consumers, outputs)] if m), None)
        if found is None:
            break
        x, y, members = found
        last = max(nodes.index(m) for m in members)
        gelu = helper.make_node("Gelu", [x], [y], name=nodes[last].name, domain=FUSED_DOMAIN)
        kept = [gelu if i == last else n for i, n in enumerate(nodes) if i == last or n not in members]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        fused = True
    if fused and all(entry.domain != FUSED_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
