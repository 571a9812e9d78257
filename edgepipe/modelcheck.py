"""Models no stage can work with, refused in one line right after export.

Why here and not in each stage: these models crash deep inside onnxruntime (no inputs to
calibrate, a constant that would allocate terabytes), far from anything that names the user's
mistake.
"""

from __future__ import annotations

import math

import onnx

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
