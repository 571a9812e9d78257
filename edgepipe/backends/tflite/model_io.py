"""The .tflite's inputs and outputs: which dtype and layout each gets, and how run.py reads them.

Why one module: the writer, the build's manifest (`describe_io`) and the bundle's run.py must agree
on every input's and output's layout and dtype; a disagreement shows up on the device as a feed of
the wrong shape (an integer NHWC image input was made in ONNX's layout while the manifest said NHWC).
- float32 inputs (int8 with `--int8-io`) are NHWC where they are images (4-D, not only reshaped);
- integer inputs (token ids, attention masks, uint8 images) are int32 and boolean ones bool, in
  the ONNX layout (run.py casts int64 feeds where the values fit);
- outputs keep their ONNX names; an integer output (an argmax label) keeps its integer dtype.
"""

from __future__ import annotations

import numpy as np

from edgepipe import graph
from edgepipe.backends.tflite import layouts
from edgepipe.backends.tflite.layouts import NHWC, identity
from edgepipe.errors import UserError

INTEGER_VALUES = ("int32", "int64", "bool")  # tensors that hold integers, never quantized values


def io_perm(ctx, name: str) -> tuple[int, ...]:
    rank = ctx.rank(name)
    if rank != 4 or ctx.keep_layout or layouts.only_reshaped(ctx.model, ctx.consumers, name):
        return identity(rank)
    return NHWC


def add_inputs(ctx) -> None:
    for info in graph.graph_inputs(ctx.model):
        kind = ctx.onnx_kind(info.name)
        if graph.tensor_dtype(info) != np.float32 and kind == "float32":
            raise UserError(f"input '{info.name}' is {graph.tensor_dtype(info)}; target '{ctx.target}' "
                            "needs float32, integer or boolean model inputs")
        index = ctx.new_value(info.name, kind, identity(ctx.rank(info.name))) if kind != "float32" else \
            ctx.new_value(info.name, ctx.io_dtype(), io_perm(ctx, info.name))
        ctx.spec.inputs.append(index)


def add_outputs(ctx) -> None:
    """Every graph output under its ONNX name (run.py and the report match outputs by name).

    An output that is also a graph input (a pass-through) or already an output gets its own
    tensor, a RESHAPE copy; the input keeps its name too (inputs and outputs are looked up
    separately). Other tensors that carry the name (another layout or dtype) are renamed."""
    inputs = set(ctx.spec.inputs)
    for name in ctx.graph_outputs:
        reps = ctx.values.get(name) or []
        integer = next((v.dtype for v in reps if v.dtype in INTEGER_VALUES), None)  # labels, indices
        integer = integer or (ctx.onnx_kind(name) if ctx.onnx_kind(name) != "float32" else None)
        index = ctx.get(name, integer or ctx.io_dtype(), io_perm(ctx, name))
        if index in inputs or index in ctx.spec.outputs:
            tensor = ctx.tensor(index)
            copy = ctx.temp(f"{name};copy", tensor.shape, tensor.dtype, tensor.quantization)
            ctx.emit("RESHAPE", [index, ctx.int32_constant(f"{name}/shape", tensor.shape)], [copy])
            index = copy
        for position, other in enumerate(ctx.spec.tensors):
            if other.name == name and position not in inputs:
                other.name = f"{name};internal"
        ctx.tensor(index).name = name
        ctx.spec.outputs.append(index)


def describe_io(ctx) -> dict:
    """The manifest's `io`: each input's and output's name, shapes, dtype, layout and int8 grid."""
    def entry(index: int) -> dict:
        tensor = ctx.tensor(index)
        rank = len(tensor.shape)
        # the layout the tensor was made in (integer inputs keep ONNX's), else the I/O rule
        perm = next((v.perm for v in ctx.values.get(tensor.name, []) if v.index == index), io_perm(ctx, tensor.name))
        quant = tensor.quantization
        return {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "dtype": tensor.dtype,
            "layout": ("NHWC" if perm == NHWC else "NCHW") if rank == 4 else None,
            "onnx_layout": "NCHW" if rank == 4 else None,
            "onnx_shape": list(ctx.shape(tensor.name)),
            "quantization": {"scale": float(quant.scale[0]), "zero_point": int(quant.zero_point[0])}
            if quant is not None else None,
        }

    return {"inputs": [entry(i) for i in ctx.spec.inputs], "outputs": [entry(i) for i in ctx.spec.outputs]}
