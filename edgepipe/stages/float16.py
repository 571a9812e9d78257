"""float16 / bfloat16 ONNX models (exported for GPU inference) -> float32 before calibration.

Why: a `model_fp16.onnx` is what many users have. Quantization works on float32 graphs: the
Q/DQ placement skips float16 tensors (scales are float32), so a float16 model would leave the
jetson build without a single int8 layer, and arm-cpu needs float32 inputs. Every float16 value
is exactly representable in float32, so the weights are upcast exactly; only the arithmetic
becomes float32 (as accurate or more). Casts to float16 become casts to float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
DTYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
                    "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Multinomial": "dtype",
                    "Bernoulli": "dtype"}


def _float32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    value = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(value, tensor.name)


def retype_graph(graph: onnx.GraphProto, types=HALF_TYPES, apply: bool = True) -> int:
    """How many tensors, types and dtype attributes of `types` the graph has; made float32 if `apply`.

    `apply=False` is a read-only look first: most models have none and need no copy. The float64
    stage (stages/float64.py) shares it."""
    count = 0
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type in types:
            if apply:
                graph.initializer[i].CopyFrom(_float32(tensor))
            count += 1
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.tensor_type.elem_type in types:
            if apply:
                info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            count += 1
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == DTYPE_ATTRIBUTES.get(node.op_type) and attribute.i in types:
                if apply:
                    attribute.i = onnx.TensorProto.FLOAT
                count += 1
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in types:
                if apply:
                    attribute.t.CopyFrom(_float32(attribute.t))
                count += 1
            elif attribute.type == onnx.AttributeProto.GRAPH:
                count += retype_graph(attribute.g, types, apply)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                count += sum(retype_graph(g, types, apply) for g in attribute.graphs)
    return count


def all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in (attribute.g,) if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from all_nodes(sub)


def _keep_io_types(graph: onnx.GraphProto, inputs: dict[str, int], outputs: dict[str, int]) -> None:
    """Cast float16 graph inputs up and outputs back down at the boundary (the app's I/O stays)."""
    inner = {name: f"{name}__float32" for name in (*inputs, *outputs)}
    for node in all_nodes(graph):
        node.input[:] = [inner.get(i, i) for i in node.input]
    for node in graph.node:
        node.output[:] = [inner.get(o, o) if o in outputs else o for o in node.output]
    for info in graph.value_info:
        info.name = inner.get(info.name, info.name) if info.name in outputs else info.name
    for name, dtype in outputs.items():
        graph.node.append(onnx.helper.make_node("Cast", [inner[name]], [name], name=f"{name}__to_output_type", to=dtype))
        next(o for o in graph.output if o.name == name).type.tensor_type.elem_type = dtype
    for name, dtype in reversed(inputs.items()):
        graph.node.insert(0, onnx.helper.make_node("Cast", [name], [inner[name]], name=f"{name}__to_float32",
                                                   to=onnx.TensorProto.FLOAT))
        next(i for i in graph.input if i.name == name).type.tensor_type.elem_type = dtype


def to_float32(model: onnx.ModelProto, keep_io: bool = False) -> tuple[onnx.ModelProto, int]:
    """The model with every float16/bfloat16 tensor, type and cast made float32, and how many changed.

    `keep_io`: graph inputs and outputs keep their float16 type, with a Cast next to each."""
    half_inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input
                   if i.type.tensor_type.elem_type in HALF_TYPES}
    half_outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output
                    if o.type.tensor_type.elem_type in HALF_TYPES and o.name not in half_inputs}
    if not retype_graph(model.graph, apply=False):
        return model, 0
    upcast = onnx.ModelProto()
    upcast.CopyFrom(model)
    count = retype_graph(upcast.graph)
    if not count:
        return model, 0
    if keep_io:
        _keep_io_types(upcast.graph, half_inputs, half_outputs)
    return upcast, count
