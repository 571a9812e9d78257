"""Transformer-block cases for benchmarks/xnnpack_op_speed.py: what the two attention MatMuls
(Q K^T and P V with two activations, BATCH_MATMUL) cost in int8 against fp32, in the forms a
lowering could write, at the corpus transformers' shapes (heads, tokens, head dim); and the int8
elementwise ops of a block the per-op profile flagged (residual ADD, layer-scale MUL, the MEAN
that opens a LayerNorm's float island).

Why its own module: issue 15 asks why the ViT's int8 BATCH_MATMULs are slower than fp32 on a host
with VNNI. XNNPACK packs a BATCH_MATMUL's second operand on every call when it is an activation;
its int8 kernels want that operand symmetric (zero point 0) and its AVX512-VNNI packer for B
stored [N, K] (AdjY) is vectorised while the one for B stored [K, N] is XNNPACK's generic C
loop (src/configs/gemm-config.c), so the cases separate the packing layout, the requantization
to zero point 0 the lowering adds, and the float island around the whole softmax(Q K^T) V.
The elementwise cases time the op next to the form that removes it (the layer-scale MUL folded
into the FULLY_CONNECTED before it; the DEQUANTIZE the float island adds before its MEAN).
Each builder takes the dtype ("int8" or "float32") and returns the .tflite bytes.
"""

from __future__ import annotations

import numpy as np

from benchmarks.tiny_tflite import RNG, Graph, Quantization, finish
from edgepipe import quantmath

SYMMETRIC = Quantization.per_tensor(3.0 / 127, 0)  # XNNPACK's condition on an int8 BATCH_MATMUL's B
PROBABILITIES = Quantization.per_tensor(1.0 / 255, -128)  # softmax output on [0, 1]
SCORES = Quantization.per_tensor(*quantmath.asymmetric_params(-8.0, 8.0))


def batch_matmul(heads: int, m: int, k: int, n: int, adj_y: bool, requantize: bool = False):
    """One BATCH_MATMUL [1, heads, m, k] x B: B stored [1, heads, n, k] (`adj_y`) or [1, heads, k, n];
    `requantize`: B arrives asymmetric and a QUANTIZE makes it zero point 0 (the lowering's form)."""
    def build(dtype):
        g = Graph(dtype)
        a = g.input([1, heads, m, k])
        b_shape = [1, heads, n, k] if adj_y else [1, heads, k, n]
        if dtype == "int8" and not requantize:
            b = g.spec.add_tensor("b", b_shape, dtype, SYMMETRIC)
            g.spec.inputs.append(b)
        else:
            b = g.input(b_shape)
            if dtype == "int8":
                b = g.op("QUANTIZE", [b], b_shape, quant=SYMMETRIC)
        return finish(g, g.op("BATCH_MATMUL", [a, b], [1, heads, m, n], "BatchMatMulOptions", AdjX=False,
                              AdjY=adj_y))
    return build


def attention(heads: int, tokens: int, dim: int, form: str):
    """softmax(Q K^T) V on int8 Q, K, V [1, heads, tokens, dim] (asymmetric, as the projections
    write them), output int8. Forms: `int8` (the lowering: K and V requantized to zero point 0,
    int8 BATCH_MATMULs, SOFTMAX a float island); `int8, V stored transposed` (V arrives [dim,
    tokens], so P V reads B with AdjY; a layout the lowering would have to produce); `float
    island` (DEQUANTIZE Q, K, V, the three ops in float, QUANTIZE the output). The fp32 model
    is the same ops in float32 whatever the form."""
    def build(dtype):
        g = Graph(dtype)
        shape, scores = [1, heads, tokens, dim], [1, heads, tokens, tokens]
        v_transposed = form == "int8, V stored transposed" and dtype == "int8"
        q, k = g.input(shape), g.input(shape)
        v = g.input([1, heads, dim, tokens] if v_transposed else shape)
        options = dict(AdjX=False)
        if dtype == "float32" or form == "float island":
            if dtype == "int8":
                g.dtype = "float32"
                q, k, v = (g.op("DEQUANTIZE", [x], shape, quant=None) for x in (q, k, v))
            s = g.op("BATCH_MATMUL", [q, k], scores, "BatchMatMulOptions", AdjY=True, **options)
            p = g.op("SOFTMAX", [s], scores, "SoftmaxOptions", Beta=1.0)
            out = g.op("BATCH_MATMUL", [p, v], shape, "BatchMatMulOptions", AdjY=False, **options)
            if dtype == "int8":
                g.dtype = "int8"
                out = g.op("QUANTIZE", [out], shape)
            return finish(g, out)
        k = g.op("QUANTIZE", [k], shape, quant=SYMMETRIC)
        v = g.op("QUANTIZE", [v], g.spec.tensors[v].shape, quant=SYMMETRIC)
        s = g.op("BATCH_MATMUL", [q, k], scores, "BatchMatMulOptions", quant=SCORES, AdjY=True, **options)
        g.dtype = "float32"
        p = g.op("SOFTMAX", [g.op("DEQUANTIZE", [s], scores, quant=None)], scores, "SoftmaxOptions", quant=None,
                 Beta=1.0)
        g.dtype = "int8"
        p = g.op("QUANTIZE", [p], scores, quant=PROBABILITIES)
        return finish(g, g.op("BATCH_MATMUL", [p, v], shape, "BatchMatMulOptions", AdjY=v_transposed, **options))
    return build


def residual_add(shape):
    """ADD of two activations (a residual connection)."""
    def build(dtype):
        g = Graph(dtype)
        return finish(g, g.op("ADD", [g.input(shape), g.input(shape)], shape, "AddOptions", FusedActivationFunction=0))
    return build


def dense_then_scale(shape, width: int, folded: bool):
    """FULLY_CONNECTED [..., C] -> [..., width], then MUL by a constant per-channel vector (layer
    scale); `folded`: the FULLY_CONNECTED alone (the vector multiplied into its weights)."""
    def build(dtype):
        g = Graph(dtype)
        out_shape = [*shape[:-1], width]
        filter_index, bias_index = g.weights((width, shape[-1]), 0)
        y = g.op("FULLY_CONNECTED", [g.input(shape), filter_index, bias_index], out_shape, "FullyConnectedOptions",
                 FusedActivationFunction=0, KeepNumDims=True)
        if folded:
            return finish(g, y)
        gamma = RNG.uniform(0.5, 1.5, [width]).astype(np.float32).reshape([1] * (len(shape) - 1) + [width])
        if dtype == "int8":
            scale, zero_point = quantmath.asymmetric_params(0.0, float(gamma.max()))
            gamma_index = g.spec.add_constant("gamma", quantmath.quantize(gamma, scale, zero_point),
                                              Quantization.per_tensor(scale, zero_point))
        else:
            gamma_index = g.spec.add_constant("gamma", gamma)
        return finish(g, g.op("MUL", [y, gamma_index], out_shape, "MulOptions", FusedActivationFunction=0))
    return build


def channel_mean(shape, island: bool):
    """MEAN over the last axis (a LayerNorm's first statistic): int8 in, int8 out; `island`: the
    float island's DEQUANTIZE then a float MEAN (the fp32 model: the float MEAN either way)."""
    def build(dtype):
        g = Graph(dtype)
        x = g.input(shape)
        axes = g.spec.add_constant("axes", np.array([len(shape) - 1], np.int32))
        rows = [*shape[:-1], 1]
        if island and dtype == "int8":
            g.dtype = "float32"
            x = g.op("DEQUANTIZE", [x], shape, quant=None)
        return finish(g, g.op("MEAN", [x, axes], rows, "ReducerOptions", KeepDims=True))
    return build


SHAPES = {"ViT": (4, 17, 12), "SVTR": (8, 40, 15), "Whisper-tiny": (6, 400, 64)}
CASES = {
    **{f"attention Q K^T [1,{h},{t},{d}] ({where})": {
        "AdjY (B stored [N, K])": batch_matmul(h, t, d, t, True),
        "AdjY, B requantized to zero point 0": batch_matmul(h, t, d, t, True, requantize=True)}
       for where, (h, t, d) in SHAPES.items()},
    **{f"attention P V [1,{h},{t},{t}] x [{t},{d}] ({where})": {
        "B stored [K, N] (V in ONNX order)": batch_matmul(h, t, t, d, False),
        "AdjY (B stored [N, K])": batch_matmul(h, t, t, d, True),
        "B requantized to zero point 0": batch_matmul(h, t, t, d, False, requantize=True)}
       for where, (h, t, d) in SHAPES.items()},
    **{f"attention softmax(Q K^T) V [1,{h},{t},{d}] ({where})": {
        form: attention(h, t, d, form) for form in ("int8", "int8, V stored transposed", "float island")}
       for where, (h, t, d) in SHAPES.items()},
    **{f"residual ADD {shape} ({where})": {"ADD": residual_add(shape)}
       for shape, where in (([1, 17, 48], "ViT"), ([1, 16, 16, 24], "ConvNeXt"), ([1, 400, 384], "Whisper-tiny"))},
    **{f"layer scale after a dense layer {shape} -> {width} ({where})": {
        "FULLY_CONNECTED, MUL": dense_then_scale(shape, width, False),
        "FULLY_CONNECTED (scale folded)": dense_then_scale(shape, width, True)}
       for shape, width, where in (([1, 16, 16, 96], 24, "ConvNeXt"), ([1, 8, 8, 192], 48, "ConvNeXt stage 2"))},
    **{f"channel MEAN {shape} ({where})": {"int8 MEAN": channel_mean(shape, False),
                                          "DEQUANTIZE, float MEAN (the LayerNorm island)": channel_mean(shape, True)}
       for shape, where in (([1, 17, 48], "ViT"), ([1, 16, 16, 24], "ConvNeXt"))},
}
