"""Models no stage can work with, refused in one line right after export.

Why here and not in each stage: these models crash deep inside onnxruntime (no inputs to
calibrate, a constant that would allocate terabytes), far from anything that names the user's
mistake.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from edgepipe import graph
from edgepipe.errors import UserError

MAX_TENSOR_ELEMENTS = 1 << 31  # 8 GB of float32: far beyond any edge model's activation


def check_model(model: onnx.ModelProto, source: str) -> None:
    """UserError naming what makes `model` unusable: no inputs, or a tensor too large to allocate."""
    inputs = graph.graph_inputs(model)
    if not inputs:
        raise UserError(f"{source}: the model has no inputs; there is nothing to calibrate or run, "
                        f"export it with its input tensors")
    _check_tensor_sizes(model, source)


def _check_tensor_sizes(model: onnx.ModelProto, source: str) -> None:
    try:
        inferred = graph.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort; later stages report real errors
        return
    producers = graph.producers(inferred)
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    for value in values:
        dims = graph.tensor_shape(value)
        if not dims or not all(isinstance(d, int) and d >= 0 for d in dims):
            continue
        count = math.prod(dims)
        if count > MAX_TENSOR_ELEMENTS:
            node = producers.get(value.name)
            made_by = f" (made by node '{node.name}', {node.op_type})" if node is not None else ""
            raise UserError(f"{source}: tensor '{value.name}'{made_by} would hold {_count_text(count, dims)} "
                            f"elements {_dims_text(dims)}; no edge device can allocate that, check the shapes "
                            "the model computes")


def _count_text(count: int, dims: list[int]) -> str:
    """The element count, or its power of ten where printing the digits fails (Python refuses
    over 4300 digits: an Einsum output of rank 10,000 made this message an internal error)."""
    return str(count) if count < 10**30 else f"about 10^{int(sum(math.log10(d) for d in dims))}"


def _dims_text(dims: list[int]) -> str:
    return str(dims) if len(dims) <= 8 else f"[{', '.join(map(str, dims[:8]))}, ...] (rank {len(dims)})"


WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"}  # an Inf there is never a mask


def nonfinite_cause(model: onnx.ModelProto, tensor: str) -> str | None:
    """Why `tensor` is NaN or Inf for finite inputs, when the model's own numbers say so: the first
    node (graph order) upstream of it reading a constant that holds NaN (or Inf as weights), or with
    a NaN float attribute. Calibration blamed 'that sample's preprocessing' for NaN weights. An Inf
    constant elsewhere is a legitimate attention mask, not a cause."""
    producers = graph.producers(model)
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    upstream, stack = set(), [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in upstream:
            upstream.add(id(node))
            stack.extend(name for name in node.input if name)
    for node in model.graph.node:
        if id(node) not in upstream:
            continue
        for name in node.input:
            if name not in constants:
                continue
            value = numpy_helper.to_array(constants[name])
            if value.dtype.kind != "f" or np.all(np.isfinite(value)):
                continue
            if np.isnan(value).any() or node.op_type in WEIGHT_OPS:
                held = "NaN" if np.isnan(value).any() else "Inf"
                return f"node '{node.name}' ({node.op_type}) reads the model's constant '{name}', which holds {held}"
        if node.op_type == "BatchNormalization" and len(node.input) > 4 and node.input[4] in constants:
            from edgepipe.fold.batchnorm import variance_problem

            epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            problem = variance_problem(node, numpy_helper.to_array(constants[node.input[4]]).astype(np.float64).ravel(),
                                       epsilon)
            if problem:  # the batchnorm fold off: the node stays and ONNX Runtime takes the square root
                return problem
        for attr in node.attribute:
            values = [attr.f] if attr.type == onnx.AttributeProto.FLOAT else list(attr.floats)
            if any(math.isnan(v) for v in values):
                return f"node '{node.name}' ({node.op_type}) has attribute {attr.name} = nan"
    return None


def check_label_range(model: onnx.ModelProto, dataset, source: str) -> None:
    """Refuse labels past the class count of the output top-1 is measured on (the first rank-2 float
    output with a static class axis, as the accuracy report picks it): every such sample counts as
    wrong for FP32 and int8 alike, and the report showed a top-1 of 0 with no reason."""
    labels = getattr(dataset, "labels", None) if dataset is not None else None
    if labels is None or not len(labels):
        return
    for output in model.graph.output:
        dims = graph.tensor_shape(output)
        if len(dims) != 2 or graph.tensor_dtype(output).kind != "f" or (isinstance(dims[1], int) and dims[1] < 2):
            continue  # not what the report measures top-1 on
        if not isinstance(dims[1], int):
            return  # the class count is known only when the model runs
        classes, largest = dims[1], int(np.max(labels))
        if largest >= classes:
            raise UserError(f"{source}: labels go up to {largest} but the model's output '{output.name}' has "
                            f"{classes} classes; a label is a class index 0..{classes - 1} of that output: check "
                            "the label mapping (or the class folders), or save the data without labels")
        return
