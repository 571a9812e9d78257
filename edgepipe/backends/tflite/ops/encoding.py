"""Cast (float, int32 / int64, bool) and OneHot -> CAST and ONE_HOT (or a table GATHER when a constant
MatMul reads the one-hot tensor): models whose input is a sequence of
integer tokens carried as floats (Magika's byte classifier, from tf2onnx: Cast, OneHot, then a
dense layer).

The Cast runs in float32 (a float island in int8 models: a token id is an integer, never a
point on an activation grid), writing an int32 tensor that only integer readers take; an
attention mask's int64 -> float or bool -> float Cast reads int32 / bool and writes float32. ONE_HOT
writes int8 directly in int8 models: its on / off values are quantized constants on the output's
calibrated grid (0 and 1 are exact on [0, 1]). Neither kernel is delegated by XNNPACK.
TFLite's ONE_HOT leaves an index outside [0, depth) all off; ONNX counts a negative index from the
end, so negative indices are refused at conversion only when they are constants (a computed
index is assumed non-negative, as token ids are).

A OneHot whose only reader is a MatMul by a constant matrix (through a Reshape that keeps the
one-hot axis last) is an embedding lookup: onehot(i) @ W is row i of W (scaled by the on / off
values). `fuse_one_hot_matmul` rewrites the pair into one OneHotMatMul node that GATHERs rows of
a precomputed table, in int8 already on the product's output grid (no weight rounding, no
requantization): the one-hot tensor (depth x larger than the tokens) and the matmul over it,
most of the model's time in both dtypes, disappear. GATHER is not delegated by XNNPACK on any
CPU; neither were ONE_HOT and the CAST before it, so the partitions are unchanged, and a gather of
rows costs less than writing and multiplying one-hot rows on ARM as on x86 (it reads depth x
fewer bytes and does no arithmetic).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.tflite.lower import Lowering, identity, node_attrs
from edgepipe.backends.tflite.ops import FUSED_DOMAIN, record_absorbed, register, register_rewrite

INTEGER_TYPES = {onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int32"}


def _cast_target(node) -> int:
    return int(node_attrs(node).get("to", 0))


# float64: computed in float32 (TFLite has no float64 kernels; the build retypes the model first,
# edgepipe/stages/float64.py, and says so in one warning line)
CAST_TARGETS = {**INTEGER_TYPES, onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float32",
                onnx.TensorProto.BOOL: "bool"}


def check_cast(ctx: Lowering, node) -> str | None:
    if _cast_target(node) not in CAST_TARGETS:
        code = _cast_target(node)
        known = code in onnx.TensorProto.DataType.values()  # `to: 99` passes the checker; Name() raised
        target = onnx.TensorProto.DataType.Name(code) if known else f"type {code} (not an ONNX data type)"
        return f"cast to {target}: only float32 / float64, int32 / int64 and bool are supported"
    return None


@register("Cast", check=check_cast, int8=False)
def lower_cast(ctx: Lowering, node) -> None:
    perm = ctx.layout(node.input[0])
    source_dtype, target_dtype = ctx.onnx_kind(node.input[0]), CAST_TARGETS[_cast_target(node)]
    x = ctx.get(node.input[0], source_dtype, perm)
    if source_dtype == target_dtype:  # int64 -> int32 and the like: one TFLite dtype already
        ctx.alias(node.output[0], x, perm)
        return
    out = ctx.new_value(node.output[0], target_dtype, perm)
    ctx.emit("CAST", [x], [out], node)


def check_one_hot(ctx: Lowering, node) -> str | None:
    depth, values = ctx.constant(node.input[1]), ctx.constant(node.input[2])
    if depth is None or values is None or values.size != 2:
        return "depth and values must be constants"
    indices = ctx.constant(node.input[0])
    if indices is not None and np.any(indices < 0):
        return "negative indices (ONNX counts them from the end; TFLite leaves them all off)"
    return None


@register("OneHot", check=check_one_hot)
def lower_one_hot(ctx: Lowering, node) -> None:
    dtype = ctx.node_dtype(node)
    rank = ctx.rank(node.output[0])
    axis = int(node_attrs(node).get("axis", -1)) % rank
    indices = ctx.get(node.input[0], "int32", identity(rank - 1))
    out = ctx.new_value(node.output[0], dtype, identity(rank))
    quant = ctx.tensor(out).quantization
    off, on = (np.float32(v) for v in np.asarray(ctx.constant(node.input[2])).reshape(-1))
    depth_value = int(np.asarray(ctx.constant(node.input[1])).reshape(-1)[0])
    depth = ctx.int32_constant(f"{node.name};depth", np.int32(depth_value))
    on_index, off_index = (ctx.quantized_constant(f"{node.name};{tag}", value, quant, dtype)
                           for tag, value in (("on", on), ("off", off)))
    ctx.emit("ONE_HOT", [indices, depth, on_index, off_index], [out], node, "OneHotOptions", Axis=axis)


def _one_hot_matmul(model: onnx.ModelProto, one_hot, consumers, outputs) -> tuple[list, np.ndarray] | None:
    """(member nodes, W) when `one_hot` (last axis, constant depth and values) feeds only a MatMul
    by a constant [depth, N] W, directly or through a Reshape whose last dim is depth."""
    def only_user(name: str):
        users = consumers.get(name, [])
        if name in outputs or len(users) != 1 or users[0].domain not in ("", "ai.onnx"):
            return None
        return users[0]

    depth, values = (graph.constant_value(model, name) for name in one_hot.input[1:3])
    if depth is None or values is None or values.size != 2 or int(node_attrs(one_hot).get("axis", -1)) != -1:
        return None
    depth = int(np.asarray(depth).reshape(-1)[0])
    members, user = [one_hot], only_user(one_hot.output[0])
    if user is not None and user.op_type == "Reshape":
        shape = graph.constant_value(model, user.input[1])
        if shape is None or shape.size < 2 or int(shape.reshape(-1)[-1]) not in (depth, -1) or \
                int(node_attrs(user).get("allowzero", 0)):
            return None
        if int(shape.reshape(-1)[-1]) == -1 and np.any(shape.reshape(-1)[:-1] < 1):
            return None  # the -1 must be the depth: every other dim given
        members, user = members + [user], only_user(user.output[0])
    if user is None or user.op_type != "MatMul" or user.input[0] != members[-1].output[0]:
        return None
    weights = graph.constant_value(model, user.input[1])
    if weights is None or weights.ndim != 2 or weights.shape[0] != depth or \
            not np.issubdtype(weights.dtype, np.floating):
        return None
    return members + [user], weights


def lookup_table(weights: np.ndarray, off: float, on: float) -> np.ndarray:
    """Rows of onehot(i) @ W for every index: [off row, i = -depth..-1 (ONNX counts negative
    indices from the end), i = 0..depth-1, off row]; an index shifted by depth + 1 and clamped to
    the table picks its row, out-of-range indices the all-off row as in ONNX."""
    weights = np.asarray(weights, np.float64)
    off_row = off * weights.sum(axis=0, keepdims=True)
    rows = off_row + (on - off) * weights
    return np.concatenate([off_row, rows, rows, off_row]).astype(np.float32)


def table_lookup_matmuls(model: onnx.ModelProto) -> set[str]:
    """Names of the MatMuls `fuse_one_hot_matmul` turns into table lookups. Their int8 products are
    exact up to the output rounding (no weight rounding), so the bias correction measured for an
    int8 matmul must not shift their bias (it would add the error it was measured to remove)."""
    outputs, consumers = {o.name for o in model.graph.output}, graph.consumers(model)
    found = (_one_hot_matmul(model, node, consumers, outputs) for node in model.graph.node
             if node.op_type == "OneHot" and node.domain in ("", "ai.onnx"))
    return {match[0][-1].name for match in found if match is not None}


@register_rewrite
def fuse_one_hot_matmul(model: onnx.ModelProto) -> None:
    """Replace OneHot -> [Reshape] -> MatMul(constant W) by one FUSED_DOMAIN OneHotMatMul(indices,
    table) node named after the MatMul, writing the MatMul's output."""
    outputs = {o.name for o in model.graph.output}
    fused = False
    for one_hot in [n for n in model.graph.node if n.op_type == "OneHot" and n.domain in ("", "ai.onnx")]:
        found = _one_hot_matmul(model, one_hot, graph.consumers(model), outputs)
        if found is None:
            continue
        members, weights = found
        off, on = (float(v) for v in np.asarray(graph.constant_value(model, one_hot.input[2])).reshape(-1))
        matmul = members[-1]
        table = f"{matmul.name};lookup_table"
        model.graph.initializer.append(numpy_helper.from_array(lookup_table(weights, off, on), table))
        fused_node = helper.make_node("OneHotMatMul", [one_hot.input[0], table], [matmul.output[0]],
                                      name=matmul.name, domain=FUSED_DOMAIN, depth=int(weights.shape[0]))
        nodes = list(model.graph.node)
        kept = [fused_node if n is matmul else n for n in nodes if n is matmul or all(n is not m for m in members)]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        record_absorbed(model, [m.name for m in members], matmul.name)
        fused = True
    if fused and all(entry.domain != FUSED_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))


@register("OneHotMatMul", domain=FUSED_DOMAIN)
def lower_one_hot_matmul(ctx: Lowering, node) -> None:
    """GATHER of the table's rows at index + depth + 1, clamped to the table (int32 ADD, MAXIMUM,
    MINIMUM on the tokens, builtin kernels), then a RESHAPE to the MatMul's shape if it differs."""
    dtype = ctx.node_dtype(node)
    depth = int(node_attrs(node)["depth"])
    rank = ctx.rank(node.output[0])
    indices = ctx.get(node.input[0], "int32", identity(ctx.rank(node.input[0])))
    index_shape = ctx.tensor(indices).shape
    step = indices
    bounds = (("shifted", "ADD", depth + 1), ("low", "MAXIMUM", 0), ("high", "MINIMUM", 2 * depth + 1))
    for tag, opcode, bound in bounds:
        target = ctx.temp(f"{node.name};{tag}", index_shape, "int32")
        options = ("AddOptions", {"FusedActivationFunction": 0}) if opcode == "ADD" else (None, {})
        ctx.emit(opcode, [step, ctx.int32_constant(f"{node.name};{tag}_bound", np.int32(bound))], [target], node,
                 options[0], **options[1])
        step = target
    out = ctx.new_value(node.output[0], dtype, identity(rank))
    quant = ctx.tensor(out).quantization
    table = ctx.quantized_constant(f"{node.name};table", ctx.constant(node.input[1]), quant, dtype)
    gathered_shape = [*index_shape, int(ctx.constant(node.input[1]).shape[1])]
    target = out if list(gathered_shape) == list(ctx.tensor(out).shape) else \
        ctx.temp(f"{node.name};rows", gathered_shape, dtype, quant)
    ctx.emit("GATHER", [table, step], [target], node, "GatherOptions", Axis=0, BatchDims=0)
    if target != out:
        ctx.emit("RESHAPE", [target, ctx.int32_constant(f"{node.name};shape", ctx.tensor(out).shape)], [out], node)
