"""Float graphs from models shipped quantized: ONNX Runtime `quantize_dynamic`, Q/DQ and QOperator models.

Why: some packages ship the output of ONNX Runtime's quantizer instead of the float model
(ddddocr's default captcha recognizer is dynamically quantized, pipecat's Smart Turn is a static
Q/DQ model). In a dynamic one, DynamicQuantizeLinear measures each activation's
range at run time, ConvInteger / MatMulInteger run on uint8, a data-dependent Floor(Div(bias,
x_scale * w_scale)) quantizes the bias, and DynamicQuantizeLSTM (com.microsoft) holds int8
weights. No edge runtime has these kernels, and a static int8 deployment needs ranges fixed at
calibration anyway. Each such layer is exactly a float layer whose weights are the dequantized
integers, up to the run-time rounding of its input, so it is rewritten into that float layer:

- DynamicQuantizeLinear(x) -> ConvInteger(xq, Wq, x_zp, w_zp) [-> Add(bias_int)] -> Cast(float)
  -> Mul(x_scale * w_scale)   becomes   Conv(x, (Wq - w_zp) * w_scale, bias)
- the same with MatMulInteger   becomes   MatMul(x, (Bq - b_zp) * b_scale)
- DynamicQuantizeLSTM(X, Wq, Rq, B, ..., W_scale, W_zp, R_scale, R_zp)   becomes   LSTM with
  W = ((Wq - W_zp) * W_scale)^T per direction (ONNX's [D, 4H, I] layout), same for R.

A QOperator model (QLinearConv, com.microsoft QLinearAdd, ...; the ONNX Model Zoo's int8 files) is
first written as a Q/DQ model, each integer op as DequantizeLinear -> its float op -> QuantizeLinear
(edgepipe/qoperator.py), and then taken apart like one.

A static Q/DQ model is its float model with fake quantization: DequantizeLinear of constants
becomes the dequantized constant, and each QuantizeLinear -> DequantizeLinear pair on an
activation is removed, or becomes a Relu where its grid starts at exactly 0 (ONNX Runtime's
quantizer drops a Relu that such a grid makes redundant, so the clamp is the model's). The build then calibrates the float graph like any other, so the deployed
int8 grids are the build's own, not the shipped ones.

The nodes left without readers (the range measurements, bias quantization) are removed. A
pattern that differs from what the quantizer writes is left alone; the target then names it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph

DYNAMIC_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class QuantizedGraph:
    """Producers, readers and constants of a model's main graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.producer = {out: node for node in model.graph.node for out in node.output if out}
        self.readers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.initializers = graph.initializers(model)

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return graph.constant_value(self.model, name)
        return None

    def only_reader(self, name: str, op_type: str):
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def scale_product(self, name: str, scale: str) -> np.ndarray | None:
        """The constant c of `name` = Mul(`scale`, c) (either order), or None."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Mul" or scale not in node.input:
            return None
        other = node.input[1] if node.input[0] == scale else node.input[0]
        return self.constant(other)


def dequantized(quantized: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, channel_axis: int) -> np.ndarray:
    """(q - zp) * scale, per tensor or per channel along `channel_axis`."""
    shape = [1] * quantized.ndim
    shape[channel_axis] = -1
    zero_point, scale = np.asarray(zero_point), np.asarray(scale, np.float32)
    zero_point = zero_point.reshape(shape) if zero_point.size > 1 else zero_point.reshape(())
    scale = scale.reshape(shape) if scale.size > 1 else scale.reshape(())
    return ((quantized.astype(np.int32) - zero_point.astype(np.int32)) * scale).astype(np.float32)


def _integer_layer(g: QuantizedGraph, node) -> tuple[list, list, str] | None:
    """(new nodes, new initializers, output name) for a ConvInteger / MatMulInteger written by
    ONNX Runtime's dynamic quantizer, or None when the pattern differs."""
    quantize = g.producer.get(node.input[0])
    if quantize is None or quantize.op_type != "DynamicQuantizeLinear" or len(node.input) < 4:
        return None
    x, x_scale, x_zero = quantize.input[0], quantize.output[1], quantize.output[2]
    weights, w_zero = g.constant(node.input[1]), g.constant(node.input[3])
    if node.input[2] != x_zero or weights is None or w_zero is None:
        return None
    is_conv = node.op_type == "ConvInteger"
    current, bias_int = node.output[0], None
    add = g.only_reader(current, "Add")
    if add is not None:  # the bias quantized at run time: Reshape(Cast(Floor(Div(B, x_scale * w_scale))))
        bias_int = add.input[1] if add.input[0] == current else add.input[0]
        current = add.output[0]
    cast = g.only_reader(current, "Cast")
    if cast is None or helper.get_attribute_value(cast.attribute[0]) != onnx.TensorProto.FLOAT:
        return None
    mul = g.only_reader(cast.output[0], "Mul")
    if mul is None:
        return None
    product = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    w_scale = g.scale_product(product, x_scale)
    if w_scale is None:
        return None
    bias = _bias(g, bias_int, x_scale) if bias_int else None
    if bias_int and bias is None:
        return None
    axis = 0 if is_conv else weights.ndim - 1  # output channels: Conv [M, C, kh, kw], MatMul [K, N]
    w_float = dequantized(weights, w_zero, w_scale, axis)
    base = f"{mul.output[0]}/float"
    inits = [numpy_helper.from_array(w_float, f"{base}/weight")]
    inputs = [x, f"{base}/weight"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32).reshape(-1), f"{base}/bias"))
        inputs.append(f"{base}/bias")
    if is_conv:
        attrs = graph.node_attributes(node)
        new = [helper.make_node("Conv", inputs, [mul.output[0]], name=node.name or base, **attrs)]
    elif bias is None:
        new = [helper.make_node("MatMul", inputs, [mul.output[0]], name=node.name or base)]
    else:
        matmul = f"{base}/matmul"
        new = [helper.make_node("MatMul", inputs[:2], [matmul], name=node.name or base),
               helper.make_node("Add", [matmul, inputs[2]], [mul.output[0]], name=f"{base}/bias_add")]
    return new, inits, mul.output[0]


def _bias(g: QuantizedGraph, name: str, x_scale: str) -> np.ndarray | None:
    """B of bias_int = [Reshape](Cast(Floor(Div(B, Mul(x_scale, w_scale)))))."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Reshape":
        node = g.producer.get(node.input[0])
    for op_type in ("Cast", "Floor"):
        if node is None or node.op_type != op_type:
            return None
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Div" or g.scale_product(node.input[1], x_scale) is None:
        return None
    return g.constant(node.input[0])


def _lstm(g: QuantizedGraph, node) -> tuple[list, list, str] | None:
    """DynamicQuantizeLSTM -> LSTM with dequantized weights in ONNX's layout."""
    names = list(node.input) + [""] * (12 - len(node.input))
    values = [g.constant(names[k]) for k in (1, 2, 8, 9, 10, 11)]
    if any(v is None for v in values):
        return None
    w_q, r_q, w_scale, w_zero, r_scale, r_zero = values
    weights = []
    for quantized, zero, scale in ((w_q, w_zero, w_scale), (r_q, r_zero, r_scale)):
        per_direction = [dequantized(quantized[d], np.asarray(zero).reshape(len(quantized), -1)[d],
                                      np.asarray(scale).reshape(len(quantized), -1)[d], 1).T
                         for d in range(len(quantized))]  # [in, 4H] -> [4H, in]
        weights.append(np.ascontiguousarray(np.stack(per_direction)))
    base = f"{node.output[0]}/float"
    inits = [numpy_helper.from_array(weights[0], f"{base}/W"), numpy_helper.from_array(weights[1], f"{base}/R")]
    inputs = [names[0], f"{base}/W", f"{base}/R", *names[3:8]]
    while inputs and not inputs[-1]:
        inputs.pop()
    attrs = graph.node_attributes(node)
    return [helper.make_node("LSTM", inputs, list(node.output), name=node.name or base, **attrs)], inits, ""


def float_from_quantized(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(model with every recognised quantized layer or Q/DQ pair as float, how many were
    rewritten). The model is returned unchanged when it has none."""
    from edgepipe.qoperator import qdq_from_qoperator

    model, dynamic = _float_from_dynamic(model)
    model, qoperator = qdq_from_qoperator(model)  # QLinear ops -> DQ -> float op -> Q, for the pass below
    model, static = _float_from_qdq(model)
    return model, dynamic + qoperator + static


def _dequantized_constant(g: QuantizedGraph, node) -> np.ndarray | None:
    """The float value of a DequantizeLinear of constants (per tensor or per axis), else None."""
    attrs = graph.node_attributes(node)
    values = [g.constant(name) if name else None for name in list(node.input) + [""] * (3 - len(node.input))]
    if values[0] is None or values[1] is None or (node.input[2:3] and node.input[2] and values[2] is None) \
            or attrs.get("block_size"):
        return None
    quantized, scale = values[0], np.asarray(values[1], np.float32)
    zero = np.zeros_like(scale, np.int64) if values[2] is None else np.asarray(values[2]).astype(np.int64)
    axis = int(attrs.get("axis", 1)) % max(quantized.ndim, 1) if scale.size > 1 else 0
    return dequantized(quantized.astype(np.int64), zero, scale, axis)


NON_NEGATIVE = ("Relu", "Sigmoid", "Softmax", "Exp", "Abs", "Sqrt")
MOVES_VALUES = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity", "Split", "Slice",
                "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "AveragePool", "GlobalAveragePool",
                "ReduceMax", "ReduceMean")  # a value >= 0 in, values >= 0 out


def _clamps_at_zero(g: QuantizedGraph, quantize) -> bool:
    """A QuantizeLinear whose grid starts at exactly 0 (zero point at the type's minimum) on a
    value that can be negative: the quantizer folded a Relu into it (ONNX Runtime drops a Relu
    the grid makes redundant), or it clamps there anyway; either way the shipped model is 0 below."""
    return _zero_at_minimum(g, quantize) and not _non_negative(g, quantize.input[0])


def _non_negative(g: QuantizedGraph, name: str, depth: int = 0) -> bool:
    """Whether `name` is known to be >= 0: made by a non-negative op, moved by shape ops or max
    pooling from such a value, or the output of a Q/DQ pair whose grid starts at 0."""
    node = g.producer.get(name)
    if node is None or depth > 32:
        return False
    if node.op_type in NON_NEGATIVE:
        return True
    if node.op_type in MOVES_VALUES or (node.op_type == "Resize" and _attribute(node, "mode", b"nearest") != b"cubic"):
        return _non_negative(g, node.input[0], depth + 1)
    if node.op_type == "Concat":
        return all(_non_negative(g, name, depth + 1) for name in node.input)
    if node.op_type == "Pad":
        value = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
        fills_non_negative = _attribute(node, "mode", b"constant") != b"constant" or (
            value is not None and bool(np.all(value >= 0)))
        return fills_non_negative and _non_negative(g, node.input[0], depth + 1)
    if node.op_type == "DequantizeLinear":
        quantize = g.producer.get(node.input[0])
        return quantize is not None and quantize.op_type == "QuantizeLinear" and (
            _zero_at_minimum(g, quantize) or _non_negative(g, quantize.input[0], depth + 1))
    return False


def _only_dequantized(g: QuantizedGraph, quantize, outputs: set[str]) -> bool:
    """Whether every reader of a QuantizeLinear is a DequantizeLinear on the same grid (scale, zero
    point and axis equal by value), so that the pairs are the identity up to rounding."""
    readers = g.readers.get(quantize.output[0], [])
    return bool(readers) and quantize.output[0] not in outputs and all(
        reader.op_type == "DequantizeLinear" and reader.domain in ("", "ai.onnx") and reader.input[0] == quantize.output[0]
        and (list(reader.input[1:3]) == list(quantize.input[1:3]) and reader.attribute == quantize.attribute
             or _grid(g, reader) is not None and _same_values(_grid(g, reader), _grid(g, quantize)))
        for reader in readers)


def _grid(g: QuantizedGraph, node) -> tuple | None:
    """(scale, zero point, axis) values of a QuantizeLinear / DequantizeLinear, None unless constant."""
    scale = g.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    zero = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale is None or zero is None:
        return None
    axis = _attribute(node, "axis", 1)
    return np.asarray(scale), np.asarray(zero), axis if np.asarray(scale).size > 1 else None


def _same_values(first: tuple, second: tuple) -> bool:
    return first[2] == second[2] and np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1]) \
        and first[1].dtype == second[1].dtype


RELU6_TOP = 6.0


def _grid_top(g: QuantizedGraph, quantize) -> float | None:
    """The largest value a per-tensor QuantizeLinear can write, in float32 as its kernel computes it."""
    grid = _grid(g, quantize)
    if grid is None or grid[0].size != 1 or grid[1].dtype.kind not in "iu":
        return None
    top = np.iinfo(grid[1].dtype).max - int(grid[1].reshape(()))
    return float(np.float32(top) * grid[0].astype(np.float32).reshape(()))


def _relu6(value: str, output: str, constants: list, opset: int):
    """Clip(0, 6) for a grid that spans exactly [0, 6]: ONNX Runtime folds a Relu6 (MobileNet's Clip)
    into such a grid, and the shipped model clamps at both ends of it."""
    name = f"{output}/relu6"
    if opset < 11:
        return helper.make_node("Clip", [value], [output], name=name, min=0.0, max=RELU6_TOP)
    constants.extend([numpy_helper.from_array(np.float32(0.0), f"{name}/min"),
                      numpy_helper.from_array(np.float32(RELU6_TOP), f"{name}/max")])
    return helper.make_node("Clip", [value, f"{name}/min", f"{name}/max"], [output], name=name)


def _attribute(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _zero_at_minimum(g: QuantizedGraph, quantize) -> bool:
    zero = g.constant(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else None
    if zero is None or np.asarray(zero).size != 1 or np.asarray(zero).dtype.kind not in "iu":
        return False
    return int(np.asarray(zero)) == np.iinfo(np.asarray(zero).dtype).min


def _float_from_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Constant DequantizeLinear -> its value; activation QuantizeLinear -> DequantizeLinear -> the input."""
    if not any(node.op_type in QDQ_OPS for node in model.graph.node):
        return model, 0
    g = QuantizedGraph(model)
    outputs = {o.name for o in model.graph.output}
    constants, renamed, dropped, relus = [], {}, set(), []
    replaced: dict[int, list] = {}  # DequantizeLinear index -> the float copy of its movement chain
    for index, node in enumerate(model.graph.node):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        value = _dequantized_constant(g, node)
        if value is not None and node.output[0] not in outputs:
            constants.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
            dropped.add(index)
            continue
        moved = _moved_constant(g, node)
        if moved is not None:
            replaced[index], constant = moved
            if all(c.name != constant.name for c in constants):  # one float table for every chain reading it
                constants.append(constant)
            continue
        quantize = g.producer.get(node.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear" and _only_dequantized(g, quantize, outputs):
            dropped.add(index)
            clamped = next((r.output[0] for r in relus if r.input[0] == quantize.input[0] and r.op_type != "Identity"), "")
            if clamped and node.output[0] not in outputs:  # another reader of the same pair: one Relu serves both
                renamed[node.output[0]] = clamped
            elif _clamps_at_zero(g, quantize) and _grid_top(g, quantize) == RELU6_TOP:
                relus.append(_relu6(quantize.input[0], node.output[0], constants, graph.opset_version(model)))
            elif _clamps_at_zero(g, quantize) or node.output[0] in outputs:  # a graph output keeps its name
                kind = "Relu" if _clamps_at_zero(g, quantize) else "Identity"
                relus.append(helper.make_node(kind, [quantize.input[0]], [node.output[0]],
                                              name=f"{node.output[0]}/{kind.lower()}"))
            else:
                renamed[node.output[0]] = quantize.input[0]
    if not dropped and not replaced:
        return model, 0
    result = onnx.ModelProto()
    result.CopyFrom(model)
    nodes = []
    relus_of: dict[str, list] = {}
    for relu in relus:
        relus_of.setdefault(relu.input[0], []).append(relu)
    for index, node in enumerate(model.graph.node):
        if index in replaced:
            nodes.extend(replaced[index])
            continue
        if index in dropped:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for k, name in enumerate(copy.input):
            copy.input[k] = renamed.get(name, name)
        nodes.append(copy)
        nodes.extend(relu for out in node.output for relu in relus_of.get(out, []))
    nodes = [relu for relu in relus if relu.input[0] not in g.producer] + nodes  # pairs on a graph input
    replace_graph(result, model, nodes, constants)
    return result, len(dropped) + len(replaced)


MOVES_INTEGERS = ("Gather", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Identity")


def _moved_constant(g: QuantizedGraph, node) -> tuple[list, onnx.TensorProto] | None:
    """A per-tensor DequantizeLinear of a quantized constant that data movement reached first:
    ONNX Runtime's `quantize_dynamic` quantizes an embedding table, so the graph gathers int8 rows,
    transposes them and only then dequantizes (text2tashkeel's char LSTMs). Dequantizing commutes
    with moving values, so the table is dequantized once and the chain copied onto the float table:
    (float copies of the chain's nodes, the float table), else None."""
    attrs = graph.node_attributes(node)
    scale = g.constant(node.input[1])
    zero = g.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int64)
    if scale is None or zero is None or np.size(scale) != 1 or np.size(zero) != 1 or attrs.get("block_size"):
        return None
    chain, name = [], node.input[0]
    while name not in g.initializers:
        producer = g.producer.get(name)
        if producer is None or producer.op_type not in MOVES_INTEGERS or producer.input[0] == "" or \
                producer.domain not in ("", "ai.onnx"):
            return None
        chain.append(producer)
        name = producer.input[0]
    if not chain:
        return None
    table = g.constant(name)
    value = dequantized(table.astype(np.int64), np.asarray(zero, np.int64).reshape(1),
                        np.asarray(scale, np.float32).reshape(1), 0)
    source = f"{name}/dequantized"
    copies = []
    for k, producer in enumerate(reversed(chain)):
        copy = onnx.NodeProto()
        copy.CopyFrom(producer)
        copy.name = f"{producer.name or producer.output[0]}/float"
        copy.input[0] = source
        source = node.output[0] if k == len(chain) - 1 else f"{producer.output[0]}/float"
        del copy.output[1:]
        copy.output[0] = source
        copies.append(copy)
    return copies, numpy_helper.from_array(value.astype(np.float32), f"{name}/dequantized")


def replace_graph(result: onnx.ModelProto, model: onnx.ModelProto, nodes: list, added: list) -> None:
    """`result`'s graph := `nodes` (dead ones dropped), initializers that are still read plus `added`."""
    del result.graph.node[:]
    result.graph.node.extend(_without_dead_nodes(nodes, {o.name for o in model.graph.output}))
    result.graph.initializer.extend(added)
    used = {name for node in result.graph.node for name in node.input}
    kept = [t for t in result.graph.initializer if t.name in used or t.name in {o.name for o in model.graph.output}]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept)
    del result.graph.value_info[:]
    if not any(n.domain == "com.microsoft" for n in result.graph.node):
        kept_opsets = [o for o in result.opset_import if o.domain in ("", "ai.onnx") or any(
            n.domain == o.domain for n in result.graph.node)]
        del result.opset_import[:]
        result.opset_import.extend(kept_opsets)


def _float_from_dynamic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Every recognised dynamically quantized layer as its float layer."""
    if not any(node.op_type in DYNAMIC_OPS for node in model.graph.node):
        return model, 0
    g = QuantizedGraph(model)
    replaced: dict[int, tuple[list, str]] = {}  # node index -> new nodes, and the output they now write
    added: list[onnx.TensorProto] = []
    for index, node in enumerate(model.graph.node):
        found = None
        if node.op_type in ("ConvInteger", "MatMulInteger") and node.domain in ("", "ai.onnx"):
            found = _integer_layer(g, node)
        elif node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft":
            found = _lstm(g, node)
        if found is not None:
            replaced[index] = (found[0], found[2])
            added.extend(found[1])
    if not replaced:
        return model, 0
    taken = {output for _, output in replaced.values() if output}
    nodes = []
    for index, node in enumerate(model.graph.node):
        if index in replaced:
            nodes.extend(replaced[index][0])
        elif not any(out in taken for out in node.output):  # the old writer of a rewritten output
            nodes.append(node)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    replace_graph(result, model, nodes, added)
    return result, len(replaced)


def _without_dead_nodes(nodes: list, outputs: set[str]) -> list:
    """`nodes` without those whose outputs nothing reads (repeated until none is left)."""
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        alive = [node for node in nodes if any(out in read for out in node.output if out)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive
