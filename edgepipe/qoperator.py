"""QOperator models as Q/DQ models: each integer op becomes DequantizeLinear -> its float op -> QuantizeLinear.

Why: the ONNX Model Zoo's int8 models and ONNX Runtime's `quantize_static(quant_format=QOperator)`
ship integer kernels (QLinearConv, QLinearMatMul, com.microsoft QLinearAdd / QGemm / ...) that
no edge runtime here runs, on grids that a deployment calibrates again anyway. A QLinear op is by
definition its float op on the dequantized inputs, rounded to its output grid; the integer ops
between them (MaxPool, Reshape, Concat of one grid, Resize, Pad, ...) move values or average them
with weights that sum to 1,
and dequantization is monotonic and affine, so they commute with it exactly. Written in that form
the model is a Q/DQ model, and dequantize.py's Q/DQ pass takes the pairs out, leaving the float model.

Weights become float constants ((q - zero) * scale, per channel where the scale is a vector) and
an int32 bias becomes bias * x_scale * w_scale (QGemm: times alpha, as its kernel computes). Every
scale and zero point must be a constant; a node with anything else, or an op not listed here,
stays as it is and the target names it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph

MS = "com.microsoft"
STANDARD = ("", "ai.onnx")
# integer-domain ops that only move values, pick among them or clamp them: they commute with dequantization
MOVES = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "Resize",
         "Pad", "Identity", "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Clip")
# read a grid, write int64 that needs none: indices (a positive scale keeps the order) or the shape
INDEX_OUTPUTS = ("ArgMax", "ArgMin", "Shape", "Size")
QLINEAR_OPS = {("", "QLinearConv"), ("", "QLinearMatMul"), (MS, "QGemm"), (MS, "QLinearAdd"), (MS, "QLinearMul"),
               (MS, "QLinearSigmoid"), (MS, "QLinearLeakyRelu"), (MS, "QLinearGlobalAveragePool"),
               (MS, "QLinearAveragePool"), (MS, "QLinearConcat"), (MS, "QLinearSoftmax"), (MS, "QLinearWhere")}
QOPERATOR_OP_TYPES = tuple(sorted({op for _, op in QLINEAR_OPS}))


def _domain(node) -> str:
    return "" if node.domain in STANDARD else node.domain


class _NotMapped(Exception):
    """This node does not have the form its rewrite needs; it stays as it is."""


class _Rewriter:
    """Walks the graph once, in order, writing each QLinear op and each integer-domain op on a known
    grid in its DQ -> float -> Q form; `grids` maps every integer tensor on a grid to (scale, zero, axis)."""

    def __init__(self, model: onnx.ModelProto):
        from edgepipe.dequantize import QuantizedGraph

        self.g = QuantizedGraph(model)
        self.opset = graph.opset_version(model)
        self.taken = {name for node in model.graph.node for name in [*node.input, *node.output]} | {
            t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
        self.grids: dict[str, tuple[str, str, int | None]] = {}
        self.dequantized: dict[tuple, str] = {}
        self.nodes: list = []
        self.added: list = []

    def unique(self, base: str) -> str:
        name = graph.fresh_name(self.g.model, base, self.taken)
        self.taken.add(name)
        return name

    def constant(self, name: str, kinds: str) -> np.ndarray:
        value = self.g.constant(name) if name else None
        if value is None or value.dtype.kind not in kinds:
            raise _NotMapped
        return value

    def constant_name(self, name: str) -> str:
        if self.g.constant(name) is None:
            raise _NotMapped  # a weight computed at run time: not what a shipped QOperator model has
        return name

    def grid(self, scale: str, zero: str) -> tuple[np.ndarray, np.ndarray]:
        """(scale, zero point) values; a scale that is not a positive finite constant is no grid."""
        s = self.constant(scale, "f")
        if s.dtype != np.float32 or not np.all(np.isfinite(s)) or not np.all(s > 0):  # float16 models: not seen shipped
            raise _NotMapped
        z = self.constant(zero, "iu") if zero else np.zeros(s.shape, np.uint8)
        if z.size not in (1, s.size):
            raise _NotMapped
        return s, z

    def float_input(self, tensor: str, scale: str, zero: str, axis: int | None = None) -> str:
        """The float value of an integer input: a constant dequantized here, else a DequantizeLinear
        (one per tensor and grid, so the Q/DQ pass sees every reader of a QuantizeLinear)."""
        s, z = self.grid(scale, zero)
        if not tensor or (s.size > 1 and axis is None):
            raise _NotMapped  # a vector scale where the op takes one
        value = self.g.constant(tensor)
        if value is not None:
            if value.dtype.kind not in "iu":
                raise _NotMapped
            channel = axis % max(value.ndim, 1) if s.size > 1 else 0
            if s.size > 1 and (value.ndim == 0 or value.shape[channel] != s.size):
                raise _NotMapped
            from edgepipe.dequantize import dequantized

            name = self.unique(f"{tensor}/float")
            self.added.append(numpy_helper.from_array(dequantized(value, z, s, channel), name))
            return name
        key = (tensor, scale, zero, axis if s.size > 1 else None)
        if key not in self.dequantized:
            name = self.unique(_float_name(tensor))
            attrs = {"axis": axis} if s.size > 1 else {}
            self.nodes.append(helper.make_node("DequantizeLinear", [tensor, scale, zero], [name],
                                               name=f"{name}/dequantize", **attrs))
            self.dequantized[key] = name
        return self.dequantized[key]

    def float_op(self, op_type: str, inputs: list[str], node, scale: str, zero: str, **attrs) -> None:
        """`op_type` on float inputs, its result quantized to (scale, zero) under the node's output name."""
        if not scale:  # QGemm without an output scale writes float
            self.nodes.append(helper.make_node(op_type, inputs, [node.output[0]], name=node.name or None, **attrs))
            return
        if self.grid(scale, zero)[0].size != 1:
            raise _NotMapped  # a per-channel output grid: ONNX Runtime's kernels take one scale
        result = self.unique(_float_name(node.output[0]))
        self.nodes.append(helper.make_node(op_type, inputs, [result], name=node.name or None, **attrs))
        self.quantize(result, node.output[0], (scale, zero, None))

    def quantize(self, value: str, output: str, grid: tuple) -> None:
        scale, zero, axis = grid
        attrs = {"axis": axis} if axis is not None else {}
        self.nodes.append(helper.make_node("QuantizeLinear", [value, scale, zero], [output],
                                           name=f"{output}/quantize", **attrs))
        self.grids[output] = grid

    def rewrite(self, node) -> bool:
        """Whether `node` was written in its float form (else it is kept as it is)."""
        key = (_domain(node), node.op_type)
        mark = (len(self.nodes), len(self.added), dict(self.dequantized), set(self.taken))
        try:
            if key in QLINEAR_OPS:
                QLINEAR_REWRITES[node.op_type](self, node)
            elif key[0] == "" and node.op_type in MOVES + INDEX_OUTPUTS and node.input and node.input[0] in self.grids:
                _move(self, node)
            else:
                return False
        except _NotMapped:
            del self.nodes[mark[0]:], self.added[mark[1]:]
            self.dequantized, self.taken = mark[2], mark[3]
            return False
        return True


def _float_name(quantized: str) -> str:
    """ONNX Runtime names a quantized tensor `<float name>_quantized`: the float one gets its name back."""
    return quantized[: -len("_quantized")] if quantized.endswith("_quantized") else f"{quantized}/float"


def _attrs(node, *dropped: str) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in dropped}


def _inputs(node, count: int) -> list[str]:
    return list(node.input) + [""] * (count - len(node.input))


def _conv(r: _Rewriter, node) -> None:
    x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, bias = _inputs(node, 9)
    inputs = [r.float_input(x, x_scale, x_zero), r.float_input(r.constant_name(w), w_scale, w_zero, axis=0)]
    if bias:
        inputs.append(_bias(r, bias, r.grid(x_scale, x_zero)[0] * r.grid(w_scale, w_zero)[0], f"{node.output[0]}/bias"))
    r.float_op("Conv", inputs, node, y_scale, y_zero, **_attrs(node))


def _bias(r: _Rewriter, bias: str, scale: np.ndarray, base: str) -> str:
    """An int32 bias quantized with zero point 0 on `scale` (per output channel or one value), as float."""
    value = r.constant(bias, "i")
    if scale.size not in (1, value.shape[-1] if value.ndim else 1):
        raise _NotMapped
    name = r.unique(base)
    r.added.append(numpy_helper.from_array((value.astype(np.float64) * scale.astype(np.float64)).astype(np.float32), name))
    return name


def _matmul(r: _Rewriter, node) -> None:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = _inputs(node, 8)
    r.float_op("MatMul", [r.float_input(a, a_scale, a_zero), r.float_input(b, b_scale, b_zero, axis=-1)],
               node, y_scale, y_zero)


def _gemm(r: _Rewriter, node) -> None:
    """QGemm: Y = alpha * A'B' (+ C_int * alpha * a_scale * b_scale), as ONNX Runtime's kernel computes it."""
    a, a_scale, a_zero, b, b_scale, b_zero, c, y_scale, y_zero = _inputs(node, 9)
    attrs = _attrs(node)
    alpha = float(attrs.get("alpha", 1.0))
    inputs = [r.float_input(a, a_scale, a_zero), r.float_input(b, b_scale, b_zero, axis=0 if attrs.get("transB") else 1)]
    if c:
        scale = np.float32(alpha) * r.grid(a_scale, a_zero)[0] * r.grid(b_scale, b_zero)[0]
        inputs.append(_bias(r, c, scale, f"{node.output[0]}/bias"))
    r.float_op("Gemm", inputs, node, y_scale, y_zero, **attrs)


def _binary(r: _Rewriter, node) -> None:
    a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = _inputs(node, 8)
    r.float_op(node.op_type[len("QLinear"):], [r.float_input(a, a_scale, a_zero), r.float_input(b, b_scale, b_zero)],
               node, y_scale, y_zero)


def _unary(r: _Rewriter, node) -> None:
    x, x_scale, x_zero, y_scale, y_zero = _inputs(node, 5)
    attrs = _attrs(node, "channels_last", "opset")
    if _attrs(node).get("channels_last", 0):
        raise _NotMapped  # NHWC pooling: no float op of that layout
    if node.op_type == "QLinearSoftmax":
        written_for = int(_attrs(node).get("opset", r.opset))
        if (written_for < 13) != (r.opset < 13) and int(attrs.get("axis", -1 if written_for >= 13 else 1)) != -1:
            raise _NotMapped  # Softmax's meaning of axis changed at opset 13
        attrs.setdefault("axis", -1 if written_for >= 13 else 1)
    r.float_op(node.op_type[len("QLinear"):], [r.float_input(x, x_scale, x_zero)], node, y_scale, y_zero, **attrs)


def _concat(r: _Rewriter, node) -> None:
    y_scale, y_zero, *rest = node.input
    if not rest or len(rest) % 3:
        raise _NotMapped
    inputs = [r.float_input(*rest[k:k + 3]) for k in range(0, len(rest), 3)]
    r.float_op("Concat", inputs, node, y_scale, y_zero, **_attrs(node))


def _where(r: _Rewriter, node) -> None:
    condition, x, x_scale, x_zero, y, y_scale, y_zero, z_scale, z_zero = _inputs(node, 9)
    r.float_op("Where", [condition, r.float_input(x, x_scale, x_zero), r.float_input(y, y_scale, y_zero)],
               node, z_scale, z_zero)


def _same_grid(r: _Rewriter, first: tuple, other: tuple) -> bool:
    (s1, z1), (s2, z2) = r.grid(*first[:2]), r.grid(*other[:2])
    return first[2] == other[2] and np.array_equal(s1, s2) and np.array_equal(z1, z2) and z1.dtype == z2.dtype


def _move(r: _Rewriter, node) -> None:
    """An integer-domain op on a grid as the same op on the dequantized values, quantized back to that grid."""
    data = [k for k, name in enumerate(node.input) if name in r.grids] if node.op_type == "Concat" else [0]
    grid = r.grids[node.input[0]]
    if grid[2] is not None or len(data) != (len(node.input) if node.op_type == "Concat" else 1) or not all(
            _same_grid(r, grid, r.grids[node.input[k]]) for k in data):
        raise _NotMapped  # a per-axis grid moved by a shape op, or a Concat across grids
    attrs = _attrs(node)
    if node.op_type == "Resize" and attrs.get("coordinate_transformation_mode") in (b"tf_crop_and_resize",):
        raise _NotMapped  # its extrapolation value is an integer there; linear / cubic weights sum to 1: affine
    inputs = list(node.input)
    for k in data:
        inputs[k] = r.float_input(node.input[k], grid[0], grid[1])
    if node.op_type == "Pad":
        if "pads" in attrs:
            raise _NotMapped  # Pad before opset 11 has no integer types
        if attrs.get("mode", b"constant") in (b"constant", "constant"):  # reflect / edge fill from the data
            inputs = (inputs + ["", ""])[:3]
            inputs[2] = _value_on_grid(r, inputs[2], grid, f"{node.output[0]}/pad_value")  # absent: integer 0
    if node.op_type == "Clip":  # integer bounds (opset >= 12): the float bounds they stand for
        if "min" in attrs or "max" in attrs:
            raise _NotMapped  # Clip before opset 11 has no integer types
        inputs[1:] = [_value_on_grid(r, name, grid, f"{node.output[0]}/bound") if name else "" for name in inputs[1:]]
    if node.op_type in INDEX_OUTPUTS:
        r.nodes.append(helper.make_node(node.op_type, inputs, list(node.output), name=node.name or None, **attrs))
        return
    results = [r.unique(_float_name(out)) if out else "" for out in node.output]
    r.nodes.append(helper.make_node(node.op_type, inputs, results, name=node.name or None, **attrs))
    for result, out in zip(results, node.output):
        if out:
            r.quantize(result, out, grid)


def _value_on_grid(r: _Rewriter, integer: str, grid: tuple, base: str) -> str:
    """A constant integer scalar (0 when `integer` is empty) on the grid, as a float constant."""
    scale, zero = r.grid(*grid[:2])
    value = r.constant(integer, "iu") if integer else np.zeros((), zero.dtype)
    if value.size != 1:
        raise _NotMapped
    name = r.unique(base)
    r.added.append(numpy_helper.from_array(
        np.asarray((np.int64(value.reshape(())) - np.int64(zero.reshape(()))) * scale.reshape(()), np.float32), name))
    return name


QLINEAR_REWRITES = {"QLinearConv": _conv, "QLinearMatMul": _matmul, "QGemm": _gemm, "QLinearAdd": _binary,
                    "QLinearMul": _binary, "QLinearSigmoid": _unary, "QLinearLeakyRelu": _unary,
                    "QLinearGlobalAveragePool": _unary, "QLinearAveragePool": _unary, "QLinearSoftmax": _unary,
                    "QLinearConcat": _concat, "QLinearWhere": _where}


def qdq_from_qoperator(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(model with every recognised QOperator op in DQ -> float op -> Q form, how many were rewritten);
    unchanged when it has none."""
    if not any((_domain(n), n.op_type) in QLINEAR_OPS for n in model.graph.node):
        return model, 0
    r = _Rewriter(model)
    count = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and _domain(node) == "":
            r.nodes.append(node)
            axis = _attrs(node).get("axis")
            scale = r.g.constant(node.input[1])
            r.grids[node.output[0]] = (node.input[1], node.input[2] if len(node.input) > 2 else "",
                                       axis if scale is not None and scale.size > 1 else None)
        elif r.rewrite(node):
            count += 1
        else:
            r.nodes.append(node)
    if not count:
        return model, 0
    from edgepipe.dequantize import replace_graph

    result = onnx.ModelProto()
    result.CopyFrom(model)
    replace_graph(result, model, r.nodes, r.added)
    return result, count
