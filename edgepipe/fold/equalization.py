"""Cross-layer equalization: rescale the channels between two convolutions so that neither
carries outlier channels, exactly in float.

Why: between Conv1 and Conv2 (directly, or through a Relu) a per-channel factor s > 0 commutes:
Conv2(relu(Conv1(x))) == Conv2'(relu(Conv1'(x))) with Conv1's output channel c (weights and
bias) divided by s_c and Conv2's input channel c multiplied by s_c (Relu is positively
homogeneous; zero padding is scaled to zero). int8 then sees different numbers: one channel with
a range far above the others forces a coarse per-tensor activation grid on the tensor between the
two convs and a coarse per-channel grid on Conv2's weights, where every other channel loses
resolution. Nagel et al. ("Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019) choose s_c = sqrt(r1_c / r2_c) from the weight ranges (r1_c: Conv1's output
channel c, r2_c: Conv2's input channel c), after which both equal sqrt(r1_c * r2_c).

Only pairs where the scaling is exact are touched: Conv1's output read by nothing but (a Relu
read by nothing but) a group-1 or depthwise Conv2 with a constant weight. Depthwise Conv2 is the
case the method was made for (MobileNet-style stems: a Conv whose output channels span ranges of
1 to 15 feeding a depthwise conv whose filters are largest where those ranges are smallest; the
per-tensor int8 grid of the tensor between them leaves the small channels a few steps). Relu6,
Clip, HardSwish, Sigmoid and friends do not commute with scaling and end a pair. Run by the fold
stage (`fold.cross_layer_equalization`), whose ONNX Runtime check compares the outputs with the
unequalized model.

A depthwise Conv2 given the tensor's per-channel ranges measured on calibration data
(`activation_ranges`) takes s_c proportional to channel c's range instead: both weights are on
per-channel int8 grids (Conv1's per output channel, the depthwise's per channel), so scaling
channel c costs neither any resolution, and the only grid left to fix is the per-tensor one of
the activation between them, which equal channel ranges fill best. The weight-range rule only
guesses those ranges from the weights, and a channel lifted by its bias or its input looks like
the others there.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgepipe import graph

HOMOGENEOUS = ("Relu",)  # f(s * x) == s * f(x) for s > 0
MAX_SCALE = 1e6  # dead channels (r ~ 0) are left alone rather than scaled by an enormous factor


def equalization_pairs(model: onnx.ModelProto, depthwise_only: bool = False
                       ) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(Conv1, Conv2) pairs whose shared channels can be rescaled exactly (only those whose Conv2
    is depthwise with `depthwise_only`)."""
    consumers = graph.consumers(model)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for first in model.graph.node:
        if first.op_type != "Conv" or graph.constant_value(model, first.input[1]) is None:
            continue
        tensor = first.output[0]
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type in HOMOGENEOUS and tensor not in outputs:
            tensor = users[0].output[0]
            users = consumers.get(tensor, [])
        if len(users) != 1 or tensor in outputs or users[0].op_type != "Conv":
            continue
        second = users[0]
        if second.input[0] != tensor or graph.constant_value(model, second.input[1]) is None:
            continue
        groups = int(graph.node_attributes(second).get("group", 1))
        if groups != 1 and groups != graph.constant_value(model, first.input[1]).shape[0]:
            continue  # grouped convs mix channels in blocks; depthwise (one group per channel) scales per channel
        if depthwise_only and groups == 1:
            continue
        pairs.append((first, second))
    return pairs


def input_channel_weights(w2: np.ndarray, channels: int, depthwise: bool) -> np.ndarray:
    """Conv2's weights as [input channel, every weight that channel multiplies]: axis 1 of a
    group-1 weight; for a depthwise weight [channels * m, 1, k, k] its m filters reading channel c."""
    if depthwise:
        return w2.reshape(channels, -1)
    return np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)


def channel_scales(w1: np.ndarray, w2: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """s_c = sqrt(r1_c / r2_c): after scaling, Conv1's output channel c and Conv2's input channel c
    have the same range; channels where either range is zero keep s = 1."""
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1).astype(np.float64)
    r2 = np.abs(input_channel_weights(w2, w1.shape[0], depthwise)).max(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.sqrt(r1 / r2)
    ok = np.isfinite(scales) & (scales > 1.0 / MAX_SCALE) & (scales < MAX_SCALE) & (r1 > 0) & (r2 > 0)
    return np.where(ok, scales, 1.0)


def activation_scales(ranges: np.ndarray) -> np.ndarray:
    """s_c = r_c / geometric mean of r: after scaling every channel spans the same range; dead
    channels (r ~ 0) keep s = 1."""
    ranges = np.asarray(ranges, np.float64)
    live = ranges > ranges.max(initial=0.0) / MAX_SCALE
    if live.sum() < 2:
        return np.ones_like(ranges)
    scales = ranges / np.exp(np.log(ranges[live]).mean())
    return np.where(live, scales, 1.0)


def equalize_cross_layer(model: onnx.ModelProto, activation_ranges: dict[str, np.ndarray] | None = None,
                         depthwise_only: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Equalize every exact Conv(->Relu)->Conv pair; returns (new model, report).
    `activation_ranges` ({tensor: per-channel max |x|}, the tensor Conv2 reads) switches depthwise
    pairs to equal activation ranges (module docstring)."""
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    graph.ensure_node_names(equalized)
    report = {"pairs": []}
    for first, second in equalization_pairs(equalized, depthwise_only):
        w1 = graph.constant_value(equalized, first.input[1]).astype(np.float64)
        w2 = graph.constant_value(equalized, second.input[1]).astype(np.float64)
        has_bias = len(first.input) > 2 and bool(first.input[2])
        bias = graph.constant_value(equalized, first.input[2]) if has_bias else None
        depthwise = int(graph.node_attributes(second).get("group", 1)) != 1
        fits = (w2.shape[1] == 1 and w2.shape[0] % w1.shape[0] == 0) if depthwise else w2.shape[1] == w1.shape[0]
        if not fits or (has_bias and bias is None):
            continue
        measured = (activation_ranges or {}).get(second.input[0]) if depthwise else None
        scales = channel_scales(w1, w2, depthwise) if measured is None else activation_scales(measured)
        if np.allclose(scales, 1.0):
            continue
        shape1 = (-1,) + (1,) * (w1.ndim - 1)
        if depthwise:
            scaled = (w2.reshape(w1.shape[0], -1) * scales[:, None]).reshape(w2.shape)
        else:
            scaled = w2 * scales.reshape((1, -1) + (1,) * (w2.ndim - 2))
        first.input[1] = graph.add_initializer(equalized, f"{first.input[1]}_equalized",
                                               (w1 / scales.reshape(shape1)).astype(np.float32))
        second.input[1] = graph.add_initializer(equalized, f"{second.input[1]}_equalized", scaled.astype(np.float32))
        if bias is not None:
            first.input[2] = graph.add_initializer(equalized, f"{first.input[2]}_equalized",
                                                   (bias.astype(np.float64) / scales).astype(np.float32))
        report["pairs"].append({"first": first.name, "second": second.name, "channels": int(scales.size),
                                "depthwise": depthwise, "by": "weights" if measured is None else "activations",
                                "max_scale": float(scales.max()), "min_scale": float(scales.min())})
    graph.remove_unused_initializers(equalized)
    return equalized, report

