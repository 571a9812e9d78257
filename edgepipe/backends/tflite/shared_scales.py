"""Concat inputs that take the Concat's own quantization, so no QUANTIZE requantizes them.

Why: TFLite's int8 CONCATENATION needs every input on the output's scale and zero point. An
input calibrated on its own range is written on its own grid and then re-expressed on the
Concat's with a QUANTIZE op: two roundings and one more op per input (YOLO's C2f blocks and heads
carry dozens). When the input's only consumer is that Concat, its producer (a Conv, an Add, a
Mul, ...) can write it on the Concat's grid directly: one rounding, no op (also through a reshape
that only flattens it for the Concat). The Concat's range
covers the input's (the Concat outputs it), so nothing is clipped that the QUANTIZE would not
clip too. Producers with fixed or pass-through output parameters (LOGISTIC, SOFTMAX, Reshape,
MaxPool, Split, Resize) pass their own quantization and ignore this; their QUANTIZE stays.

The other half, `float_output_concats`: a Concat that writes a graph output from inputs whose
ranges differ by more than `MAX_RANGE_RATIO` (a detector head's box coordinates in pixels next
to its class scores in [0, 1]) cannot hold both on one int8 grid: the small input rounds to a few
steps or to zero. It is lowered in float instead (each input dequantized on its own grid), which
costs one DEQUANTIZE per input at the very end of the graph.

Enabled by the `backend.share_concat_scales` and `backend.float_output_concats` options (arm-cpu).
"""

from __future__ import annotations

from edgepipe import quantmath
from edgepipe.backends.tflite.writer import Quantization


def shared_concat_ranges(ctx) -> dict[str, str]:
    """{tensor: tensor whose calibrated range it uses} for the int8 Concats of the lowering `ctx`."""
    if not ctx.quantized or ctx.calibration is None:
        return {}
    outputs = set(ctx.graph_outputs)
    producers = ctx.producers
    shared: dict[str, str] = {}
    for node in ctx.model.graph.node:
        if node.op_type != "Concat" or node.output[0] not in ctx.calibration or ctx.node_dtype(node) != "int8":
            continue
        for name in set(node.input):
            users = ctx.consumers.get(name, [])
            if (name in ctx.constants or name in outputs or name not in ctx.calibration or len(users) != 1
                    or users[0] is not node and users[0].name != node.name):
                continue
            shared[name] = node.output[0]
            _share_through_reshapes(ctx, producers, name, node.output[0], shared, outputs)
    return shared


RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")  # int8 kernels that pass their input's grid on


def _share_through_reshapes(ctx, producers: dict, name: str, concat_output: str, shared: dict[str, str],
                            outputs: set[str]) -> None:
    """A Concat input made by a reshape of a tensor read by nothing else (YOLOv8's per-level head
    outputs, flattened before the Concat): the reshape passes its input's grid on, so that input's
    producer writes the Concat's grid instead, and the reshape's requantizing QUANTIZE goes too."""
    while (producer := producers.get(name)) is not None and producer.op_type in RESHAPES:
        source = producer.input[0]
        if (source in ctx.constants or source in outputs or source not in ctx.calibration
                or len(ctx.consumers.get(source, [])) != 1):
            return
        shared[source] = concat_output
        name = source


def clamps(ctx) -> tuple[dict[str, str], dict]:
    """({clamp output: its tensor input}, {clamp output: Quantization}) for the int8 clamps by a
    scalar constant, Max(x, c < 0) / Min(x, c > 0) (a floor after each LeakyReLU of a tf2onnx
    speech embedding). Their grid ends exactly at c (quantmath.clamp_params of the calibrated
    one), so writing onto it saturates where MAXIMUM / MINIMUM would compare: XNNPACK delegates
    the QUANTIZE that does it, not int8 MAXIMUM / MINIMUM. When the clamp is the only reader of x,
    x shares that grid, so x's producer saturates and the clamp costs nothing."""
    inputs: dict[str, str] = {}
    grids: dict = {}
    if not ctx.quantized or ctx.calibration is None:
        return inputs, grids
    outputs = set(ctx.graph_outputs)
    for node in ctx.model.graph.node:
        if node.op_type not in ("Max", "Min") or len(node.input) != 2 or ctx.node_dtype(node) != "int8":
            continue
        out = node.output[0]
        names = [n for n in node.input if n not in ctx.constants]
        bounds = [ctx.constants[n] for n in node.input if n in ctx.constants]
        if (len(names) != 1 or len(bounds) != 1 or bounds[0].size != 1 or out not in ctx.calibration
                or out in ctx.shared_ranges or ctx.shape(names[0]) != ctx.shape(out)):
            continue
        params = quantmath.clamp_params(*ctx.calibration.asymmetric_params(out), float(bounds[0].reshape(-1)[0]),
                                        floor=node.op_type == "Max")
        if params is None:
            continue
        inputs[out], grids[out] = names[0], Quantization.per_tensor(*params)
        x = names[0]
        if (x in ctx.calibration and x not in outputs and x not in ctx.shared_ranges
                and len(ctx.consumers.get(x, [])) == 1):
            ctx.shared_ranges[x] = out
            if node.op_type == "Max":
                grids.update(_floor_before_leaky_relu(ctx, x, float(bounds[0].reshape(-1)[0]), outputs))
    return inputs, grids


def _floor_before_leaky_relu(ctx, x: str, bound: float, outputs: set[str]) -> dict:
    """{LeakyRelu input: Quantization} when `x` = LeakyRelu(u, alpha > 0) is floored at `bound` < 0
    by its only reader: every u <= bound / alpha ends as `bound`, so u's grid can end exactly there
    (quantmath.clamp_params) instead of at u's calibrated minimum. The same top, finer steps, and
    nothing lost: LEAKY_RELU maps u's lowest step onto the floor exactly. Only when that narrows
    the grid and u's producer writes it for this LeakyRelu alone."""
    from edgepipe.backends.tflite.lower import node_attrs

    leaky = ctx.producers.get(x)
    if leaky is None or leaky.op_type != "LeakyRelu" or ctx.node_dtype(leaky) != "int8":
        return {}
    alpha = float(node_attrs(leaky).get("alpha", 0.01))
    u = leaky.input[0]
    if (alpha <= 0 or u in ctx.constants or u in outputs or u not in ctx.calibration or u in ctx.shared_ranges
            or len(ctx.consumers.get(u, [])) != 1 or u not in ctx.producers):
        return {}
    scale, zero_point = ctx.calibration.asymmetric_params(u)
    floor = bound / alpha
    if floor <= scale * (-128 - zero_point):  # the calibrated grid already ends at or above it
        return {}
    params = quantmath.clamp_params(scale, zero_point, floor, floor=True)
    return {u: Quantization.per_tensor(*params)} if params is not None else {}


MAX_RANGE_RATIO = 16.0


def float_output_concats(ctx) -> set[str]:
    """Names of the Concats writing a graph output whose inputs' calibrated ranges differ more than
    MAX_RANGE_RATIO (constants and inputs without a range are ignored)."""
    if not ctx.quantized or ctx.calibration is None:
        return set()
    outputs = set(ctx.graph_outputs)
    chosen = set()
    for node in ctx.model.graph.node:
        if node.op_type != "Concat" or node.output[0] not in outputs:
            continue
        widths = [max(t.hi, 0.0) - min(t.lo, 0.0) for t in (ctx.calibration.tensors.get(n) for n in node.input)
                  if t is not None]
        if len(widths) > 1 and min(widths) > 0 and max(widths) / min(widths) > MAX_RANGE_RATIO:
            chosen.add(node.name)
    return chosen


def resolve(shared: dict[str, str], name: str) -> str:
    """Follow a chain of shared ranges (a Concat feeding only another Concat) to its end."""
    seen = {name}
    while name in shared and shared[name] not in seen:
        name = shared[name]
        seen.add(name)
    return name
