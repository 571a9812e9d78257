"""1-D Conv / ConvTranspose / MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool ([N, C, L]
tensors: audio, text and time-series models; ConvTranspose1d is a vocoder's or audio decoder's
upsampler; tf2onnx writes a LayerNorm's mean over channels as a 1-D GlobalAveragePool).

TFLite's spatial kernels are 2-D only, so `lift_1d_spatial_ops` rewrites each such node into
Unsqueeze -> the same op in 2-D with height 1 (kernel [1, k], pads [0, b, 0, e], weights
[O, C/g, 1, k], a transposed conv's [C, O/g, 1, k]) -> Squeeze, and the 2-D families lower it (a Relu / Clip that alone reads the result
moves into the 2-D view too, so it fuses into CONV_2D); ceil_mode, count_include_pad, groups,
dilations and auto_pad keep their meaning because the added axis has size 1. The 2-D result
`<name>;2d` is another view of the calibrated `<name>` and shares its range (Lowering.quant).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.tflite.ops import register_rewrite

VIEW_SUFFIX = ";2d"  # a tensor a rewrite adds as a 4-D view of the calibrated tensor it names
LIFTED = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
WEIGHTED = ("Conv", "ConvTranspose")


def _rank(infos: dict, name: str) -> int | None:
    info = infos.get(name)
    dims = graph.tensor_shape(info) if info is not None else None
    return len(dims) if dims is not None else None


def _lifted_attributes(node: onnx.NodeProto, kernel: int | None) -> list[onnx.AttributeProto]:
    lifted = []
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if attribute.name == "kernel_shape":
            value = [1, *value]
        elif attribute.name in ("strides", "dilations", "output_shape"):
            value = [1, *value]
        elif attribute.name == "output_padding":
            value = [0, *value]
        elif attribute.name == "pads":
            value = [0, value[0], 0, value[1]]
        lifted.append(helper.make_attribute(attribute.name, value))
    if node.op_type in WEIGHTED and kernel is not None and all(a.name != "kernel_shape" for a in node.attribute):
        lifted.append(helper.make_attribute("kernel_shape", [1, kernel]))
    return lifted


def _axes(model: onnx.ModelProto, base: str, opset: int) -> tuple[list[str], dict]:
    """Unsqueeze/Squeeze axis [2] as an input (opset >= 13) or an attribute."""
    if opset < 13:
        return [], {"axes": [2]}
    name = f"{base};axis2"
    if all(t.name != name for t in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), name))
    return [name], {}


def _sole_activation(consumers: dict, graph_outputs: set[str], name: str) -> onnx.NodeProto | None:
    """The Relu / Clip that alone reads a lifted op's output (and the op's output is no graph output):
    lifted with it, so a Conv's activation fuses instead of the Conv writing its whole pre-activation
    range on the int8 grid (most of which the Relu then discards)."""
    readers = consumers.get(name, [])
    if name in graph_outputs or len(readers) != 1 or readers[0].op_type not in ("Relu", "Clip"):
        return None
    return readers[0] if readers[0].domain in ("", "ai.onnx") and readers[0].input[0] == name else None


@register_rewrite
def lift_1d_spatial_ops(model: onnx.ModelProto) -> None:
    infos = graph.value_infos(model)
    initializers = {t.name: t for t in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    rewritten = []
    lifted_inputs: set[str] = set()
    lifted_activations: set[str] = set()  # Relu / Clip moved into the 2-D view with their producer
    consumers = graph.consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    changed = False
    for node in model.graph.node:
        if node.name in lifted_activations:
            continue
        outputs = [name for name in node.output if name]
        if (node.op_type not in LIFTED or node.domain not in ("", "ai.onnx") or len(outputs) != 1
                or _rank(infos, node.input[0]) != 3):
            rewritten.append(node)
            continue
        inputs = list(node.input)
        kernel = None
        if node.op_type in WEIGHTED:
            # an initializer, or a Constant node: fold writes one where it scaled the weights (a
            # GELU's trailing * 0.5 moved into the next Conv1d)
            value = graph.constant_value(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
            if value is None or value.ndim != 3:
                rewritten.append(node)  # non-constant weights: the conv family refuses it by name
                continue
            kernel = value.shape[2]
            inputs[1] = f"{node.input[1]}{VIEW_SUFFIX}"
            if inputs[1] not in initializers:
                initializers[inputs[1]] = numpy_helper.from_array(value[:, :, None, :], inputs[1])
                model.graph.initializer.append(initializers[inputs[1]])
        axis_inputs, axis_attrs = _axes(model, "edgepipe", opset)
        lifted_in, lifted_out = f"{node.input[0]}{VIEW_SUFFIX}", f"{outputs[0]}{VIEW_SUFFIX}"
        inputs[0] = lifted_in
        if lifted_in not in lifted_inputs:  # one view per tensor, however many 1-D ops read it
            lifted_inputs.add(lifted_in)
            rewritten.append(helper.make_node("Unsqueeze", [node.input[0], *axis_inputs], [lifted_in],
                                              name=f"{node.name};unsqueeze", **axis_attrs))
        lifted = helper.make_node(node.op_type, inputs, [lifted_out], name=node.name)
        lifted.attribute.extend(_lifted_attributes(node, kernel))
        rewritten.append(lifted)
        squeezed = outputs[0]
        activation = _sole_activation(consumers, graph_outputs, squeezed)
        if activation is not None:  # Conv -> Relu stays adjacent in 2-D: the Relu fuses into CONV_2D
            squeezed = activation.output[0]
            lifted_activation = onnx.NodeProto()
            lifted_activation.CopyFrom(activation)
            lifted_activation.input[0] = lifted_out
            lifted_activation.output[0] = f"{squeezed}{VIEW_SUFFIX}"
            rewritten.append(lifted_activation)
            lifted_activations.add(activation.name)
            lifted_out = lifted_activation.output[0]
            lifted_inputs.add(lifted_out)  # a next 1-D op reads this view directly (no Squeeze / Unsqueeze)
        rewritten.append(helper.make_node("Squeeze", [lifted_out, *axis_inputs], [squeezed],
                                          name=f"{node.name};squeeze", **axis_attrs))
        changed = True
    if changed:
        read = {name for n in rewritten for name in n.input} | graph_outputs
        rewritten = [n for n in rewritten if not n.name.endswith(";squeeze") or n.output[0] in read]
        del model.graph.node[:]
        model.graph.node.extend(rewritten)
        inferred = graph.infer_shapes(model)
        del model.graph.value_info[:]
        model.graph.value_info.extend(inferred.graph.value_info)
