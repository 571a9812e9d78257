"""Layout facts the lowering uses to avoid TRANSPOSE ops that move no data or help no kernel."""

from __future__ import annotations

import numpy as np
import onnx

NHWC = (0, 2, 3, 1)  # ONNX NCHW dims in TFLite order


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def inverse(perm) -> tuple[int, ...]:
    result = [0] * len(perm)
    for i, p in enumerate(perm):
        result[p] = i
    return tuple(result)


def permute(shape, perm) -> list[int]:
    return [int(shape[p]) for p in perm]


# graph-input readers for only_reshaped: ops that take their input in the ONNX layout,
# and ops that follow whatever layout their input has
LAYOUT_READERS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "MatMul", "Gemm"})
LAYOUT_FREE = frozenset({"Pad", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh",
                         "Max", "Min", "Abs", "Neg", "Sqrt", "Exp", "Log", "Identity"})


def transpose_order(base_perm, perm) -> np.ndarray:
    """The TRANSPOSE order that turns a tensor laid out as `base_perm` into layout `perm`."""
    base_inverse = inverse(base_perm)
    return np.array([base_inverse[p] for p in perm], np.int32)


def moves_only_unit_dims(shape, order) -> bool:
    """True when transposing `shape` by `order` keeps every dim above 1 in its order (NCHW <->
    NHWC of a one-channel image, [N, 1, 1, C] heads): the same bytes, so a RESHAPE does it."""
    kept = [axis for axis in order if shape[axis] != 1]
    return all(isinstance(shape[axis], (int, np.integer)) and shape[axis] > 0 for axis in order) and kept == sorted(kept)


def only_reshaped(model: onnx.ModelProto, consumers: dict, name: str) -> bool:
    """True for a graph input that reaches no image op, only ops that read it in its ONNX layout
    (Reshape, Flatten, MatMul...) through elementwise ops and Pad: tf2onnx's NHWC input
    [1, 76, 32, 1] padded and reshaped to NCHW. NHWC would cost a TRANSPOSE before the Reshape."""
    if name not in {i.name for i in model.graph.input}:
        return False
    frontier, seen = [name], set()
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in LAYOUT_READERS:
                continue
            if node.op_type not in LAYOUT_FREE:
                return False
            frontier.extend(node.output)
    return bool(seen)
