"""LSTM, GRU and RNN: unrolled over the static sequence length (edgepipe/recurrent.py).

TFLite's own UNIDIRECTIONAL_SEQUENCE_LSTM has no int8 XNNPACK kernel and needs int16 cell
state and per-gate scales our calibration does not give, so `unroll_recurrent` rewrites each
node into per-step Gemm/MatMul, Add, Split, Sigmoid, Tanh, Mul, Concat and Reshape before
lowering, and those families lower it (FULLY_CONNECTED with per-channel int8 weights; LOGISTIC
and TANH on their fixed output grids). The calibration ran the same unrolled graph
(calibrate.calibrate), so every per-step gate, c_t and h_t has its own int8 range under the
name used here. A node the rewrite cannot unroll stays and is refused by its check. A float or
16x8 request naming the LSTM applies to every node of its unrolled form (`record_expanded`).
"""

from __future__ import annotations

import onnx

from edgepipe import recurrent
from edgepipe.backends.tflite.lower import Lowering
from edgepipe.backends.tflite.ops import record_expanded, register, register_rewrite


def check_recurrent(ctx: Lowering, node) -> str | None:
    """The reason `unroll_recurrent` left this node (every node it can unroll is gone by now)."""
    return recurrent.unroll_problem(node, ctx.constant, ctx.shape) or "could not be unrolled"


@register(*recurrent.RECURRENT, check=check_recurrent, since=7)
def lower_recurrent(ctx: Lowering, node) -> None:
    raise AssertionError(f"{node.name}: a recurrent node reached the lowering without being unrolled")


@register_rewrite
def unroll_recurrent(model: onnx.ModelProto) -> None:
    """Unroll; `precision.float_nodes` / `int16_nodes` naming the LSTM then reach its step nodes."""
    for owner, members in recurrent.unroll(model).items():
        record_expanded(model, owner, members)
