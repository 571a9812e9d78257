"""Constant affine chains (Mul / Add / Sub / Div by constants on a 4-D tensor) folded into a Conv,
exactly in float.

Why: exporters write y = a[c] * x + b[c] as separate elementwise nodes (PaddleOCR's learnable
affine blocks around convs and hard-swish: `+ bias`, `/ 6`, `* scale`, `+ bias`; input scaling).
Every target quantizes them as they stand: TFLite rounds each node (or the fused per-channel affine
of edgepipe/backends/tflite/ops/affine.py) onto its own int8 grid, and a Q/DQ model quantizes the
chain's result where a Conv reads it. Folded into a Conv's weights and bias, the chain leaves no
rounding and no op behind.

Two folds, both exact in float:
- after a Conv: conv(x) then scale[c] * . + shift[c] is the conv with W[c] * scale[c] and
  bias[c] * scale[c] + shift[c]; a pure scale after a MatMul by a constant matrix whose product a
  Transpose brings to NCHW (ConvNeXt's layer scale) likewise scales the matrix's columns;
- before a Conv: conv(scale[c] * x + shift[c]) is the conv with its input channel c of W times
  scale[c] and bias[o] + sum over W[o, c, ...] * shift[c]. A shift is exact only without
  padding: zero padding pads scale * x + shift with 0, not with shift, so a chain with a shift
  in front of a padded Conv is refused (its border outputs would change), while a pure scale
  folds into any Conv (0 * scale is still 0).

Used twice: the fold stage (`fold.constant_affine`, every target, checked in ONNX Runtime) and
the TFLite lowering's late rewrite (the chains after a Conv, for builds that leave the stage off).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe import graph

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def channel_vector(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """The constant as a per-channel vector of an NCHW tensor (length 1 for a scalar), else None."""
    if value is None or value.ndim > 4 or not np.issubdtype(value.dtype, np.floating):
        return None
    if value.size == 1:
        return value.astype(np.float64).reshape(1)
    shape = (1,) * (4 - value.ndim) + tuple(value.shape)
    if shape[0] == 1 and shape[1] == channels and shape[2] == 1 and shape[3] == 1:
        return value.astype(np.float64).reshape(-1)
    return None


def affine_step(model, node, x: str, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) with node(x) = scale * x + shift, when the node's other input is a constant
    that broadcasts per channel (or is a scalar), else None."""
    if node.op_type not in AFFINE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    if list(node.input).count(x) != 1:
        return None
    first = node.input[0] == x
    value = channel_vector(graph.constant_value(model, node.input[1 if first else 0]), channels)
    if value is None:
        return None
    one, zero = np.ones(1), np.zeros(1)
    if node.op_type == "Mul":
        return value, zero
    if node.op_type == "Add":
        return one, value
    if node.op_type == "Sub":
        return (one, -value) if first else (-one, value)
    if not first or np.any(value == 0):  # c / x is not affine
        return None
    return 1.0 / value, zero


def affine_chain(model, start, consumers, outputs, shapes) -> tuple[str, list, np.ndarray, np.ndarray] | None:
    """(x, member nodes, scale, shift) of the longest affine chain starting at `start` (>= 1 node):
    every intermediate result read by the next member alone, every member keeping x's shape."""
    def static_4d(name: str) -> bool:
        shape = shapes.get(name)
        return shape is not None and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)

    if not any(static_4d(name) for name in start.input):  # before the constant look-ups: each scans the
        return None  # graph, and an unrolled GRU's thousands of 2-D nodes made that quadratic
    candidates = [name for name in start.input if name in shapes and graph.constant_value(model, name) is None]
    if len(candidates) != 1:
        return None
    x = candidates[0]
    shape = shapes[x]
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    scale, shift = np.ones(1), np.zeros(1)
    members, current, node = [], x, start
    while node is not None:
        step = affine_step(model, node, current, shape[1])
        if step is None or shapes.get(node.output[0]) != shape:
            break
        scale, shift = step[0] * scale, step[0] * shift + step[1]
        members.append(node)
        current = node.output[0]
        users = consumers.get(current, [])
        node = users[0] if len(users) == 1 and current not in outputs else None
    return (x, members, scale, shift) if members else None


def _constant_conv(model, conv) -> bool:
    """A Conv of the ONNX domain with a constant weight and a constant (or no) bias."""
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return False
    if graph.constant_value(model, conv.input[1]) is None:
        return False
    return not (len(conv.input) > 2 and conv.input[2] and graph.constant_value(model, conv.input[2]) is None)


def foldable_conv(model, producers, consumers, outputs, x: str):
    """The Conv that writes `x` when the chain may fold into its weights and bias: a constant
    weight (and bias), `x` read by the chain alone."""
    conv = producers.get(x)
    if not _constant_conv(model, conv) or x in outputs or len(consumers.get(x, [])) != 1:
        return None
    return conv


def foldable_dense(model, producers, consumers, outputs, x: str, shift: np.ndarray):
    """(Transpose, MatMul) when `x` is a Transpose of a MatMul by a constant 2-D weight that moves
    the product's last axis to channel axis 1 (ConvNeXt's blocks: Linear layers channels-last,
    permuted back to NCHW, then the layer scale), each result read by the next alone, and the
    chain has no shift (the MatMul has no bias to take it)."""
    transpose = producers.get(x)
    if transpose is None or transpose.op_type != "Transpose" or np.any(shift != 0):
        return None
    perm = list(graph.node_attributes(transpose).get("perm", []))
    product = transpose.input[0]
    matmul = producers.get(product)
    if len(perm) != 4 or perm[1] != 3 or matmul is None or matmul.op_type != "MatMul":
        return None
    weight = graph.constant_value(model, matmul.input[1])
    if weight is None or weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
        return None
    if any(name in outputs or len(consumers.get(name, [])) != 1 for name in (x, product)):
        return None
    return transpose, matmul


def fold_into_dense(model, transpose, matmul, members, scale) -> None:
    """MatMul(a, W) -> Transpose -> scale[c] * .: the same result from W's column c times
    scale[c] (exact in float); the Transpose then writes the chain's output."""
    weight = graph.constant_value(model, matmul.input[1]).astype(np.float64)
    scaled = weight * np.broadcast_to(scale, (weight.shape[1],))[None, :]
    matmul.input[1] = graph.add_initializer(model, f"{matmul.name};affine_weight", scaled.astype(np.float32))
    transpose.output[0] = members[-1].output[0]


def _conv_weight_and_bias(model, conv) -> tuple[np.ndarray, np.ndarray]:
    weight = graph.constant_value(model, conv.input[1]).astype(np.float64)
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = graph.constant_value(model, conv.input[2]).astype(np.float64) if has_bias else np.zeros(weight.shape[0])
    return weight, bias


def _set_weight_and_bias(model, conv, weight: np.ndarray, bias: np.ndarray) -> None:
    weight_name = graph.add_initializer(model, f"{conv.name};affine_weight", weight.astype(np.float32))
    bias_name = graph.add_initializer(model, f"{conv.name};affine_bias", bias.astype(np.float32))
    inputs = [conv.input[0], weight_name, bias_name]
    del conv.input[:]
    conv.input.extend(inputs)


def fold_into_conv(model, conv, members, scale, shift) -> None:
    """conv(x) then y = scale[c] * . + shift[c]: the same y from the conv with W[c] * scale[c] and
    bias * scale[c] + shift[c] (exact in float; per-channel int8 weights absorb any scale)."""
    weight, bias = _conv_weight_and_bias(model, conv)
    channels = weight.shape[0]
    scale, shift = np.broadcast_to(scale, (channels,)), np.broadcast_to(shift, (channels,))
    _set_weight_and_bias(model, conv, weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), bias * scale + shift)
    conv.output[0] = members[-1].output[0]


def _padded(conv) -> bool:
    attrs = graph.node_attributes(conv)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return auto_pad not in ("NOTSET", "VALID") or any(int(p) != 0 for p in attrs.get("pads", []))


def consuming_conv(model, consumers, outputs, y: str, shift: np.ndarray):
    """The Conv that alone reads `y` as its data input, when a chain ending in `y` may fold into
    its weights: a constant weight (and bias), and no padding unless the shift is zero."""
    users = consumers.get(y, [])
    if y in outputs or len(users) != 1 or not _constant_conv(model, users[0]):
        return None
    conv = users[0]
    if list(conv.input).count(y) != 1 or conv.input[0] != y:
        return None
    if np.any(shift != 0) and _padded(conv):
        return None  # zero padding of scale * x + shift is not zero padding of x
    return conv


def fold_into_next_conv(model, conv, x: str, scale, shift) -> None:
    """y = scale[c] * x + shift[c] then conv(y): the conv reads x, its input channel c of W times
    scale[c], and its bias[o] + sum of W[o, c, ...] * shift[c] (exact without padding; with a zero
    shift exact under any padding)."""
    weight, bias = _conv_weight_and_bias(model, conv)
    out_channels, group_channels = weight.shape[0], weight.shape[1]
    groups = int(graph.node_attributes(conv).get("group", 1))
    in_channels = group_channels * groups

    def per_weight(vector: np.ndarray) -> np.ndarray:  # [out, in/group]: the input channel each W entry reads
        full = np.broadcast_to(vector, (in_channels,)).reshape(groups, group_channels)
        return np.repeat(full, out_channels // groups, axis=0)

    flat = weight.reshape(out_channels, group_channels, -1)
    folded_bias = bias + np.einsum("oik,oi->o", flat, per_weight(shift))
    folded = (flat * per_weight(scale)[:, :, None]).reshape(weight.shape)
    _set_weight_and_bias(model, conv, folded, folded_bias)
    conv.input[0] = x


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Declared shapes of every tensor with a value_info, graph input or graph output."""
    shapes = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[info.name] = graph.tensor_shape(info)
    return shapes


def fold_constant_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Fold every constant affine chain into the Conv that writes its input (preferred) or that
    alone reads its result (where exact); (new model, report). Chains with neither stay."""
    shapes = tensor_shapes(graph.infer_shapes(model))
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph.ensure_node_names(folded)
    outputs = {o.name for o in folded.graph.output}
    producers, consumers = graph.producers(folded), graph.consumers(folded)
    nodes = list(folded.graph.node)
    absorbed: set[int] = set()
    visited: set[int] = set()
    report = {"into_previous_conv": [], "into_previous_matmul": [], "into_next_conv": [], "refused_padding": [],
              "nodes_removed": 0}
    for node in nodes:
        if id(node) in absorbed or id(node) in visited or node.op_type not in AFFINE_OPS:
            continue
        found = affine_chain(folded, node, consumers, outputs, shapes)
        if found is None:
            continue
        x, members, scale, shift = found
        names = [m.name for m in members]
        conv = foldable_conv(folded, producers, consumers, outputs, x)
        dense = foldable_dense(folded, producers, consumers, outputs, x, shift) if conv is None else None
        if conv is not None:
            fold_into_conv(folded, conv, members, scale, shift)
            report["into_previous_conv"].append({"conv": conv.name, "nodes": names})
        elif dense is not None:
            fold_into_dense(folded, *dense, members, scale)
            report["into_previous_matmul"].append({"matmul": dense[1].name, "nodes": names})
        else:
            conv = consuming_conv(folded, consumers, outputs, members[-1].output[0], shift)
            if conv is None:
                users = consumers.get(members[-1].output[0], [])
                if len(users) == 1 and users[0].op_type == "Conv" and users[0].input[0] == members[-1].output[0]:
                    report["refused_padding"].append({"conv": users[0].name, "nodes": names})
                    visited.update(id(m) for m in members)  # its tail chains shift the same padded input
                continue
            fold_into_next_conv(folded, conv, x, scale, shift)
            report["into_next_conv"].append({"conv": conv.name, "nodes": names})
        absorbed.update(id(m) for m in members)
    if absorbed:
        kept = [n for n in nodes if id(n) not in absorbed]
        del folded.graph.node[:]
        folded.graph.node.extend(kept)
        graph.remove_unused_initializers(folded)
    report["nodes_removed"] = len(absorbed)
    return folded, report
