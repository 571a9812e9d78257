"""Fold inference-mode BatchNormalization into the linear op in front of it.

Why: a BN left in the graph costs a pass over the activation on device and, in an int8 build,
an extra quantize/requantize step (one more rounding). Folded into the Conv / ConvTranspose /
Gemm weights it is exact in float and free at run time. A BN with nothing foldable in front of it
becomes a per-channel Mul + Add, which every backend lowers without a BatchNormalization kernel.

BN in inference form is the affine map y = a * x + c per channel with
a = scale / sqrt(var + eps) and c = bias - a * mean.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgepipe.errors import UserError
from edgepipe.graph import (
    add_initializer,
    constant_value,
    consumers,
    ensure_node_names,
    fresh_name,
    infer_shapes,
    node_attributes,
    producers,
    remove_unused_initializers,
    set_attribute,
    value_infos,
)


def batchnorm_affine(model: onnx.ModelProto, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, c) in float64 with BN(x) = a * x + c per channel, or None if a parameter is not constant."""
    params = [constant_value(model, name) for name in bn.input[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    scale, bias, mean, var = (np.asarray(p, dtype=np.float64).ravel() for p in params)
    epsilon = float(node_attributes(bn).get("epsilon", 1e-5))
    problem = variance_problem(bn, var, epsilon)
    if problem:  # folded, the NaN was blamed on edgepipe's own constant ('<bn>_scale', 'conv_folded_in1')
        raise UserError(f"{problem}; fix the model's running variance and re-export it")
    a = scale / np.sqrt(var + epsilon)
    return a, bias - a * mean


def variance_problem(bn: onnx.NodeProto, var: np.ndarray, epsilon: float) -> str | None:
    """Why BN(x) is NaN or Inf for every input: var + epsilon <= 0 in some channel (its sqrt)."""
    bad = np.flatnonzero(~(var + epsilon > 0))
    if not len(bad):
        return None
    channel = int(bad[0])
    return (f"node '{bn.name or bn.op_type}' (BatchNormalization) has variance {var[channel]:g} + epsilon {epsilon:g} "
            f"<= 0 in channel {channel} ({len(bad)} channel{'s' if len(bad) > 1 else ''}), so its output is NaN")


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Fold every inference BN; returns (new model, report). Graph input/output names are kept."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    ensure_node_names(folded)
    report = {"folded": [], "replaced_by_mul_add": [], "skipped": []}
    for bn in [n for n in folded.graph.node if n.op_type == "BatchNormalization"]:
        reason = _fold_one(folded, bn, report)
        if reason:
            report["skipped"].append({"node": bn.name, "reason": reason})
    remove_unused_initializers(folded)
    return folded, report


def _fold_one(model: onnx.ModelProto, bn: onnx.NodeProto, report: dict) -> str | None:
    """Fold one BN in place; returns None on success, else why it stayed."""
    if node_attributes(bn).get("training_mode", 0) or len([o for o in bn.output if o]) > 1:
        return "training-mode BatchNormalization (running-stat outputs are used)"
    affine = batchnorm_affine(model, bn)
    if affine is None:
        return "scale/bias/mean/var are not constants"
    a, c = affine
    producer = producers(model).get(bn.input[0])
    if _producer_is_private(model, producer, bn):
        fold_into = _FOLD_INTO.get(producer.op_type)
        if fold_into is not None and fold_into(model, producer, a, c):
            producer.output[0] = bn.output[0]
            model.graph.node.remove(bn)
            report["folded"].append({"node": bn.name, "into": producer.name, "op_type": producer.op_type})
            return None
    if _replace_with_mul_add(model, bn, a, c):
        report["replaced_by_mul_add"].append({"node": bn.name})
        return None
    return "input rank unknown (run shape inference / export with static shapes)"


def _producer_is_private(model: onnx.ModelProto, producer, bn: onnx.NodeProto) -> bool:
    """True when the BN is the only reader of the producer's (single) output."""
    if producer is None or len([o for o in producer.output if o]) != 1:
        return False
    if bn.input[0] in {o.name for o in model.graph.output}:
        return False
    return len(consumers(model).get(bn.input[0], [])) == 1


def _channel_shape(a: np.ndarray, rank: int, axis: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = -1
    return a.reshape(shape)


def _set_constant_inputs(model: onnx.ModelProto, node: onnx.NodeProto, arrays: dict[int, np.ndarray]) -> None:
    """Point input slots of `node` at new initializers (never edits a possibly shared weight)."""
    for slot, array in sorted(arrays.items()):
        name = add_initializer(model, f"{node.name}_folded_in{slot}", array)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name


def _weight_and_bias(model: onnx.ModelProto, node: onnx.NodeProto, out_channels_of):
    weight = constant_value(model, node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return None
    has_bias = len(node.input) > 2 and node.input[2]
    bias = constant_value(model, node.input[2]) if has_bias else np.zeros(out_channels_of(weight))
    if bias is None:
        return None
    return weight, np.asarray(bias, dtype=np.float64)


def _fold_into_conv(model, conv, a, c) -> bool:
    found = _weight_and_bias(model, conv, lambda w: w.shape[0])
    if found is None or found[0].shape[0] != a.size:
        return False
    weight, bias = found
    new_weight = weight.astype(np.float64) * _channel_shape(a, weight.ndim, 0)
    _set_constant_inputs(model, conv, {1: new_weight.astype(weight.dtype), 2: (a * bias + c).astype(weight.dtype)})
    return True


def _fold_into_conv_transpose(model, deconv, a, c) -> bool:
    """Weight layout is [C_in, C_out/group, k...]; output channel = group_index * C_out/g + j."""
    group = int(node_attributes(deconv).get("group", 1))
    found = _weight_and_bias(model, deconv, lambda w: w.shape[1] * group)
    if found is None:
        return False
    weight, bias = found
    c_in, c_out_per_group = weight.shape[0], weight.shape[1]
    if c_out_per_group * group != a.size or c_in % group:
        return False
    grouped = weight.astype(np.float64).reshape(group, c_in // group, c_out_per_group, *weight.shape[2:])
    factor = a.reshape(group, 1, c_out_per_group, *([1] * (weight.ndim - 2)))
    new_weight = (grouped * factor).reshape(weight.shape)
    _set_constant_inputs(model, deconv, {1: new_weight.astype(weight.dtype), 2: (a * bias + c).astype(weight.dtype)})
    return True


def _fold_into_gemm(model, gemm, a, c) -> bool:
    """Y = alpha*A*op(B) + beta*C: scale the output columns of op(B), and C to beta*a*C + c."""
    attrs = node_attributes(gemm)
    weight = constant_value(model, gemm.input[1])
    if weight is None or weight.ndim != 2:
        return False
    trans_b = int(attrs.get("transB", 0))
    if weight.shape[1 - trans_b] != a.size:
        return False
    new_weight = weight.astype(np.float64) * (a[:, None] if trans_b else a[None, :])
    has_c = len(gemm.input) > 2 and gemm.input[2]
    offset = constant_value(model, gemm.input[2]) if has_c else np.zeros(1)
    if offset is None:
        return False
    beta = float(attrs.get("beta", 1.0)) if has_c else 0.0
    new_offset = beta * a * np.asarray(offset, dtype=np.float64) + c
    _set_constant_inputs(model, gemm, {1: new_weight.astype(weight.dtype), 2: new_offset.astype(weight.dtype)})
    set_attribute(gemm, "beta", 1.0)
    return True


_FOLD_INTO = {"Conv": _fold_into_conv, "ConvTranspose": _fold_into_conv_transpose, "Gemm": _fold_into_gemm}


def _replace_with_mul_add(model: onnx.ModelProto, bn: onnx.NodeProto, a: np.ndarray, c: np.ndarray) -> bool:
    info = value_infos(infer_shapes(model)).get(bn.input[0])
    rank = len(info.type.tensor_type.shape.dim) if info is not None and info.type.tensor_type.HasField("shape") else 0
    if rank < 2:
        return False
    dtype = constant_value(model, bn.input[1]).dtype
    scale_name = add_initializer(model, f"{bn.name}_scale", _channel_shape(a, rank, 1).astype(dtype))
    shift_name = add_initializer(model, f"{bn.name}_shift", _channel_shape(c, rank, 1).astype(dtype))
    scaled = fresh_name(model, f"{bn.output[0]}_bn_scaled")
    index = list(model.graph.node).index(bn)
    mul = helper.make_node("Mul", [bn.input[0], scale_name], [scaled], name=f"{bn.name}_mul")
    add = helper.make_node("Add", [scaled, shift_name], [bn.output[0]], name=f"{bn.name}_add")
    model.graph.node.remove(bn)
    model.graph.node.insert(index, add)
    model.graph.node.insert(index, mul)
    return True
