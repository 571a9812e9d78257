"""Fold input normalization / whitening x_n = M (x - mu) into the first Conv.

Why: the device then feeds raw pixels straight into the network (no per-pixel float
pre-processing on the host), and the int8 input quantizer sees the raw range it will really get.

The trap is padding: the source conv zero-pads in the *normalized* domain, and a normalized zero
is the raw value mu. So the conv's padding is moved out into an explicit pad of the raw input
whose border holds mu_c per channel, and the conv itself then runs unpadded. With that,
conv'(pad_mu(x)) = W M (pad_mu(x) - mu) + b  equals  conv(pad_0(M (x - mu))) exactly.

When the input is read by anything other than exactly one foldable Conv, explicit Sub and
channel-mixing nodes are inserted in front instead (still exact; the report says why).
"""

from __future__ import annotations

from collections.abc import Iterable

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
    graph_inputs,
    node_attributes,
    opset_version,
    remove_unused_initializers,
    set_attribute,
    tensor_dtype,
    tensor_shape,
)

MODES = ("mean_std", "zca", "pca")


class ChannelMoments:
    """Streaming per-channel mean and covariance over all pixels, float64, merged batch by batch
    (Chan et al.) so large raw values (0..255) do not lose the covariance to cancellation."""

    def __init__(self):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def add(self, batch: np.ndarray) -> None:
        array = np.asarray(batch, dtype=np.float64)
        if array.ndim < 2:
            raise UserError(f"whitening sample of shape {array.shape}: expected [N, C, ...]")
        pixels = np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)
        n = pixels.shape[1]
        if n == 0:
            return
        batch_mean = pixels.mean(axis=1)
        centered = pixels - batch_mean[:, None]
        batch_scatter = centered @ centered.T
        if self.mean is None:
            self.count, self.mean, self.scatter = n, batch_mean, batch_scatter
            return
        if batch_mean.shape != self.mean.shape:
            raise UserError(f"whitening sample has {batch_mean.size} channels, earlier ones had {self.mean.size}")
        total = self.count + n
        delta = batch_mean - self.mean
        self.scatter = self.scatter + batch_scatter + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def covariance(self) -> np.ndarray:
        """Population covariance (divides by the pixel count)."""
        return self.scatter / self.count


def estimate_whitening(samples: Iterable[np.ndarray], mode: str, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, dict]:
    """(M, mu, info) from raw-domain samples [1, C, H, W], streamed one at a time.

    mean_std: M = diag(1/sqrt(var + eps)); zca: M = U diag(1/sqrt(lambda + eps)) U^T;
    pca: M = diag(1/sqrt(lambda + eps)) U^T with components by decreasing variance.
    """
    if mode not in MODES:
        raise UserError(f"input_normalization '{mode}' is not one of {', '.join(MODES)}")
    moments = ChannelMoments()
    count_samples = 0
    for sample in samples:
        moments.add(sample)
        count_samples += 1
    if moments.mean is None:
        raise UserError(f"input_normalization '{mode}' needs calibration samples to estimate mean/covariance; none were given")
    covariance = moments.covariance()
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    signs = np.sign(eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), np.arange(eigenvectors.shape[1])])
    eigenvectors = eigenvectors * np.where(signs == 0, 1.0, signs)  # deterministic eigenvector signs
    inverse_sqrt = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
    if mode == "mean_std":
        matrix = np.diag(1.0 / np.sqrt(np.diag(covariance) + eps))
    elif mode == "zca":
        matrix = eigenvectors @ np.diag(inverse_sqrt) @ eigenvectors.T
    else:
        matrix = np.diag(inverse_sqrt) @ eigenvectors.T
    smallest = max(float(eigenvalues[-1]), 0.0)
    info = {
        "samples": count_samples,
        "pixels": int(moments.count),
        "covariance": covariance.tolist(),
        "eigenvalues": eigenvalues.tolist(),
        # None (JSON null) for a singular covariance, e.g. a constant channel: only eps saves M
        "condition_number": float(eigenvalues[0] / smallest) if smallest > 0 else None,
    }
    return matrix, moments.mean, info


def mean_std_whitening(mean, std, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M, mu) for explicit per-channel mean/std lists (a single value is broadcast)."""
    mu = np.asarray(mean, dtype=np.float64).ravel()
    sigma = np.asarray(std, dtype=np.float64).ravel()
    size = channels or max(mu.size, sigma.size)
    if mu.size == 1:
        mu = np.full(size, mu[0])
    if sigma.size == 1:
        sigma = np.full(size, sigma[0])
    if mu.size != size or sigma.size != size:
        raise UserError(f"fold.mean has {mu.size} and fold.std {sigma.size} values but the input has {size} channels; give one per channel")
    if np.any(~np.isfinite(sigma)) or np.any(sigma <= 0):
        raise UserError(f"fold.std {sigma.tolist()}: every std must be a positive number")
    return np.diag(1.0 / sigma), mu


def fold_input_normalization(
    model: onnx.ModelProto,
    input_name: str,
    mode: str,
    mean=None,
    std=None,
    samples: Iterable[np.ndarray] | None = None,
    eps: float = 1e-5,
) -> tuple[onnx.ModelProto, dict]:
    """Make `model` (which expects M (x - mu)) take the raw input x under the same input name."""
    inputs = {i.name: i for i in graph_inputs(model)}
    if input_name not in inputs:
        raise UserError(f"input_normalization: the model has no input '{input_name}'; inputs are {sorted(inputs)}")
    shape = tensor_shape(inputs[input_name])
    if tensor_dtype(inputs[input_name]).kind != "f" or len(shape) < 2:
        raise UserError(f"input_normalization: input '{input_name}' must be a float tensor [N, C, ...]")
    channels = shape[1] if isinstance(shape[1], int) else None
    report = {"mode": mode, "input": input_name, "condition_number": None}
    if mode == "mean_std" and mean is not None and std is not None:
        matrix, mu = mean_std_whitening(mean, std, channels)
        report["source"] = "settings"
    else:
        matrix, mu, info = estimate_whitening(samples if samples is not None else [], mode, eps)
        report.update(source="samples", condition_number=info["condition_number"], pixels=info["pixels"])
    if channels is not None and matrix.shape[1] != channels:
        raise UserError(f"input_normalization: input '{input_name}' has {channels} channels but the statistics have {matrix.shape[1]}")
    report.update(M=matrix.tolist(), mu=mu.tolist())

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    ensure_node_names(folded)
    reason = _fold_into_first_conv(folded, input_name, shape, matrix, mu, report)
    if reason is not None:
        _insert_explicit_normalization(folded, input_name, len(shape), matrix, mu)
        report.update(folded_into=None, fallback=f"explicit normalization nodes inserted: {reason}")
    remove_unused_initializers(folded)
    return folded, report


def conv_explicit_pads(conv: onnx.NodeProto, spatial: list, kernel: list[int]) -> list[int] | None:
    """The conv's padding as [begin..., end...]; resolves auto_pad (None if shapes are unknown)."""
    attrs = node_attributes(conv)
    rank = len(kernel)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * rank)))
    if any(not isinstance(s, int) for s in spatial):
        return None
    strides = attrs.get("strides", [1] * rank)
    dilations = attrs.get("dilations", [1] * rank)
    begins, ends = [], []
    for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
        out = -(-size // stride)
        total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def fold_conv_weights(weight: np.ndarray, bias: np.ndarray, matrix: np.ndarray, mu: np.ndarray, group: int = 1):
    """W'[o,c,..] = sum_j W[o,j,..] M[j,c];  b' = b - sum_{c,k} W'[o,c,k] mu_c (float64).

    A grouped conv is only folded with a diagonal M (channels do not mix across groups).
    """
    w = np.asarray(weight, dtype=np.float64)
    out_channels, per_group = w.shape[0], w.shape[1]
    if group == 1:
        new_weight = np.einsum("oj...,jc->oc...", w, matrix)
        channel_of = np.broadcast_to(np.arange(per_group), (out_channels, per_group))
    else:
        channel_of = (np.arange(out_channels) // (out_channels // group))[:, None] * per_group + np.arange(per_group)
        new_weight = w * np.diag(matrix)[channel_of].reshape(out_channels, per_group, *([1] * (w.ndim - 2)))
    spatial_sum = new_weight.reshape(out_channels, per_group, -1).sum(axis=2)
    new_bias = np.asarray(bias, dtype=np.float64) - (spatial_sum * mu[channel_of]).sum(axis=1)
    return new_weight, new_bias


def _fold_into_first_conv(model, input_name, shape, matrix, mu, report) -> str | None:
    """Fold in place; returns None on success, else the reason it could not (nothing changed)."""
    readers = consumers(model).get(input_name, [])
    if len(readers) != 1 or readers[0].op_type != "Conv" or list(readers[0].input).count(input_name) != 1:
        kinds = ", ".join(sorted({n.op_type for n in readers})) or "nothing"
        return f"input '{input_name}' is read by {len(readers)} node(s) ({kinds}), not by exactly one Conv"
    conv = readers[0]
    if conv.input[0] != input_name:
        return f"input '{input_name}' is a weight of Conv '{conv.name}', not its data input"
    weight = constant_value(model, conv.input[1])
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = constant_value(model, conv.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None):
        return f"Conv '{conv.name}' has non-constant weights"
    group = int(node_attributes(conv).get("group", 1))
    if group != 1 and not np.allclose(matrix, np.diag(np.diag(matrix)), rtol=0, atol=0):
        return f"Conv '{conv.name}' is grouped (group={group}) and a {report['mode']} matrix mixes channels"
    spatial = shape[2:]
    pads = conv_explicit_pads(conv, spatial, list(weight.shape[2:]))
    if pads is None:
        return f"Conv '{conv.name}' uses auto_pad with unknown spatial input size"
    if any(pads) and opset_version(model) < 11:
        return "the model's opset is below 11 (Pad with an input constant)"
    equal_mu = bool(np.all(mu == mu[0]))
    if any(pads) and not equal_mu and any(not isinstance(s, int) for s in spatial):
        return "per-channel mean with padding needs a static input size"

    bias = bias if bias is not None else np.zeros(weight.shape[0])
    new_weight, new_bias = fold_conv_weights(weight, bias, matrix, mu, group)
    dtype = weight.dtype
    conv.input[1] = add_initializer(model, f"{conv.name}_weight_raw_input", new_weight.astype(dtype))
    bias_name = add_initializer(model, f"{conv.name}_bias_raw_input", new_bias.astype(dtype))
    if has_bias:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    report["padding"] = "none"
    if any(pads):
        conv.input[0] = _pad_raw_input(model, input_name, pads, mu, spatial, dtype)
        report["padding"] = f"moved {pads} out of the conv into an explicit pad with the raw mean as border value"
    if "auto_pad" in node_attributes(conv):
        set_attribute(conv, "auto_pad", "NOTSET")
    set_attribute(conv, "pads", [0] * len(pads))
    report.update(folded_into=conv.name, fallback=None)
    return None


def _pad_raw_input(model, input_name, pads, mu, spatial, dtype) -> str:
    """Pad x so its border holds mu_c: one Pad(mu) if all mu_c are equal, else Pad(0) + border."""
    rank = len(spatial) + 2
    full_pads = [0, 0] + pads[: rank - 2] + [0, 0] + pads[rank - 2 :]
    pads_name = add_initializer(model, f"{input_name}_raw_pads", np.asarray(full_pads, dtype=np.int64))
    padded = fresh_name(model, f"{input_name}_raw_padded")
    new_nodes = []
    if np.all(mu == mu[0]):
        value_name = add_initializer(model, f"{input_name}_raw_pad_value", np.asarray(mu[0], dtype=dtype))
        new_nodes.append(helper.make_node("Pad", [input_name, pads_name, value_name], [padded], name=fresh_name(model, "raw_input_pad")))
    else:
        padded_zero = fresh_name(model, f"{input_name}_raw_zero_padded")
        padded_shape = [s + b + e for s, b, e in zip(spatial, pads[: rank - 2], pads[rank - 2 :])]
        border = np.zeros([1, mu.size, *padded_shape], dtype=np.float64)
        border += mu.reshape(1, -1, *([1] * (rank - 2)))
        interior = (slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(pads, spatial))
        border[interior] = 0.0
        border_name = add_initializer(model, f"{input_name}_raw_border", border.astype(dtype))
        new_nodes.append(helper.make_node("Pad", [input_name, pads_name], [padded_zero], name=fresh_name(model, "raw_input_pad")))
        new_nodes.append(helper.make_node("Add", [padded_zero, border_name], [padded], name=fresh_name(model, "raw_input_border")))
    for node in reversed(new_nodes):
        model.graph.node.insert(0, node)
    return padded


def _insert_explicit_normalization(model, input_name, rank, matrix, mu) -> str:
    """x_n = M (x - mu) as Sub + (Mul | 1x1 Conv | MatMul) nodes; rewires every reader of x."""
    readers = [n for n in model.graph.node if input_name in n.input]
    channel_shape = [1, -1] + [1] * (rank - 2)
    mean_name = add_initializer(model, f"{input_name}_mean", mu.reshape(channel_shape).astype(np.float32))
    centered = fresh_name(model, f"{input_name}_centered")
    normalized = fresh_name(model, f"{input_name}_normalized")
    nodes = [helper.make_node("Sub", [input_name, mean_name], [centered], name=fresh_name(model, "input_center"))]
    if np.array_equal(matrix, np.diag(np.diag(matrix))):
        scale_name = add_initializer(model, f"{input_name}_scale", np.diag(matrix).reshape(channel_shape).astype(np.float32))
        nodes.append(helper.make_node("Mul", [centered, scale_name], [normalized], name=fresh_name(model, "input_scale")))
    elif rank == 2:
        mix_name = add_initializer(model, f"{input_name}_whiten", matrix.T.astype(np.float32))
        nodes.append(helper.make_node("MatMul", [centered, mix_name], [normalized], name=fresh_name(model, "input_whiten")))
    else:
        kernel = matrix.reshape(*matrix.shape, *([1] * (rank - 2))).astype(np.float32)
        mix_name = add_initializer(model, f"{input_name}_whiten", kernel)
        nodes.append(helper.make_node("Conv", [centered, mix_name], [normalized], name=fresh_name(model, "input_whiten")))
    for node in readers:
        for index, name in enumerate(node.input):
            if name == input_name:
                node.input[index] = normalized
    for node in reversed(nodes):
        model.graph.node.insert(0, node)
    return normalized
