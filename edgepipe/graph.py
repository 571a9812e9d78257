"""Small ONNX graph helpers shared by every stage and backend: index helpers (who produces /
consumes a tensor, constant lookup) that graph rewrites need. Files are read and written by
edgepipe/onnx_files.py (`load_model` / `save_model`, also reachable from here)."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgepipe.errors import UserError
from edgepipe.onnx_files import load_model, save_model  # noqa: F401  (the graph API's file half)
from edgepipe.scopes import outer_scope_reads, subgraphs

DEFAULT_OPSET = 17


def opset_version(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return DEFAULT_OPSET


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """Value of an initializer or Constant-node output, else None."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Main-graph readers of each tensor; a control-flow node counts as a reader of every main-graph
    tensor its subgraphs read by name (outer scope), so a pass that rewrites or fuses a tensor
    "read by one node only" leaves alone the tensors a loop body or branch still needs."""
    result: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in dict.fromkeys(list(node.input) + sorted(outer_scope_reads(node))):
            if name:
                result[name].append(node)
    return result


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights too)."""
    init_names = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init_names]


def tensor_shape(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def declared_shape(value_info: onnx.ValueInfoProto) -> tuple | None:
    """The declared shape; None when even the rank is unknown (no shape field)."""
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    return tuple(tensor_shape(value_info))


def is_static_dim(dim) -> bool:
    """Symbolic ('?', 'p2o.DynamicDimension.0'), unknown (None), -1 and 0 dims are all dynamic."""
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


def is_static(shape) -> bool:
    return shape is not None and all(is_static_dim(d) for d in shape)


def tensor_dtype(value_info: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: errors and per-node precision decisions refer to them."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return model


def refresh_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-derive every tensor shape from the (now static) graph inputs.

    Shapes recorded for the old dynamic dims are stale once the inputs are fixed: they are dropped
    and inferred again. Whatever ONNX shape inference cannot resolve statically (ops it does not
    know, data-dependent shape arithmetic) is measured with one ONNX Runtime run on zero inputs, so
    later stages and target checks see a fully static graph and every graph output keeps the
    `shape` field the ONNX checker requires.
    """
    original_outputs = {o.name: onnx.TypeProto() for o in model.graph.output}
    for out in model.graph.output:
        original_outputs[out.name].CopyFrom(out.type)
        out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    model = infer_shapes(model)
    inferred = {v.name: v for v in model.graph.value_info}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in inferred:
            out.type.CopyFrom(inferred[out.name].type)
    known = value_infos(model)
    data_dependent = _downstream_of_data_dependent_shapes(model)
    unresolved = [name for node in model.graph.node for name in node.output
                  if name and name not in data_dependent
                  and not is_static(declared_shape(known[name]) if name in known else None)]
    if unresolved:
        _measure_shapes(model, unresolved)
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(original_outputs[out.name])  # the checker needs a shape field
    return model


# ops whose output shape depends on input VALUES: a zero-input run would record a wrong shape
DATA_DEPENDENT_SHAPE_OPS = {"NonZero", "NonMaxSuppression", "Unique", "Compress", "If", "Loop", "Scan"}
# inputs (by position) whose values set an op's output shape: fed from a graph input's values
# (an int64 `shape` input of an expanded CenterCropPad), the zero-input run measures a wrong shape
SHAPE_OPERANDS = {
    "Pad": (1, 3), "Slice": (1, 2, 3, 4), "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Resize": (2, 3),
    "Upsample": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,), "OneHot": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "CenterCropPad": (1,), "Col2Im": (1, 2),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}
# ops whose output depends on the input's shape only, never on its values
SHAPE_ONLY_OPS = {"Shape", "Size"}


def _downstream_of_data_dependent_shapes(model: onnx.ModelProto) -> set[str]:
    tainted: set[str] = set()  # tensors whose shape depends on input values
    from_inputs = {value.name for value in graph_inputs(model)}  # tensors whose values depend on inputs
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        value_set_shape = any(index < len(node.input) and node.input[index] in from_inputs
                              for index in SHAPE_OPERANDS.get(node.op_type, ()))
        if node.op_type in DATA_DEPENDENT_SHAPE_OPS or value_set_shape or any(name in tainted for name in node.input):
            tainted.update(name for name in node.output if name)
        if node.op_type not in SHAPE_ONLY_OPS and any(name in from_inputs for name in node.input):
            from_inputs.update(name for name in node.output if name)
    return tainted


def _measure_shapes(model: onnx.ModelProto, names: list[str]) -> None:
    """Record the shapes of `names` as one ONNX Runtime run on zero inputs gives them (best effort)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = [o.name for o in probe.graph.output]
    for name in names:
        if name not in outputs:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    feeds = {}
    for value in graph_inputs(model):
        shape = declared_shape(value)
        if not is_static(shape):
            return
        feeds[value.name] = np.zeros(shape, tensor_dtype(value))
    try:
        options = no_spinning(ort.SessionOptions())
        options.log_severity_level = 4
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        fetched = [o.name for o in session.get_outputs()]
        results = dict(zip(fetched, session.run(None, feeds)))
    except Exception:
        return  # not runnable here: later stages report runtime problems with context
    by_output = {o.name: o for o in model.graph.output}
    for name in names:
        value = results.get(name)
        if value is None or not isinstance(value, np.ndarray):
            continue
        info = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
        if name in by_output:
            by_output[name].type.CopyFrom(info.type)
        else:
            model.graph.value_info.append(info)


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Shape/type info of every tensor that shape inference could resolve."""
    graph = model.graph
    result = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    return result


def make_session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0):
    """An ONNX Runtime CPU session with graph optimizations off, so results mirror the graph.

    Intra-op threads do not spin-wait between ops (`no_spinning`): the build's sessions run many
    small ops back to back on hosts that are often busy, where the spinning pool doubles CPU time
    and slows the run; the kernels and thread count, hence every value, are the same.
    """
    import onnxruntime as ort

    options = no_spinning(ort.SessionOptions())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # ORT's own error lines carry node names raw to fd 2; its exception says the same
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"ONNX Runtime cannot load the model: {first}") from exc


def no_spinning(options):
    """`options` (onnxruntime.SessionOptions) with intra-op threads that sleep instead of spin-wait."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def expose_tensors(model: onnx.ModelProto, names: list[str], infos: dict | None = None) -> onnx.ModelProto:
    """Copy of `model` whose graph outputs also include the given intermediate tensors.
    `infos`: `value_infos(infer_shapes(model))` when the caller has them (not inferred again)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    infos = value_infos(infer_shapes(exposed)) if infos is None else infos
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name in present:
            continue
        info = infos.get(name)
        if info is not None and info.type.tensor_type.elem_type:
            exposed.graph.output.append(info)
        else:
            exposed.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        present.add(name)
    return exposed


def describe_io(model: onnx.ModelProto) -> dict:
    """Inputs/outputs as the manifest records them (name, shape, dtype, layout)."""

    def entry(info: onnx.ValueInfoProto) -> dict:
        shape = tensor_shape(info)
        layout = "NCHW" if len(shape) == 4 else None
        return {
            "name": info.name,
            "shape": shape,
            "dtype": tensor_dtype(info).name,
            "layout": layout,
            "onnx_layout": layout,
            "quantization": None,
        }

    return {"inputs": [entry(i) for i in graph_inputs(model)], "outputs": [entry(o) for o in model.graph.output]}


# --- rewrite helpers (graph surgery shared by the fold passes and backends) -------------------


def taken_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor, initializer and node name in the model, subgraphs included (new names must
    avoid them: ONNX forbids a subgraph name that shadows one of the enclosing graph)."""
    names: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        names.update(t.name for t in graph.initializer)
        names.update(v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info))
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
            for sub in subgraphs(node):
                visit(sub)

    visit(model.graph)
    return names


def fresh_name(model: onnx.ModelProto, base: str, taken: set[str] | None = None) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is not yet used anywhere in the graph
    (`taken`: the caller's `taken_names(model)`, kept current, for many names in a row)."""
    taken = taken_names(model) if taken is None else taken
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    return name


def add_initializer(model: onnx.ModelProto, base: str, array: np.ndarray, taken: set[str] | None = None) -> str:
    """Append a new initializer under a fresh name derived from `base`; returns the name (and
    adds it to `taken` when given: see `fresh_name`)."""
    name = fresh_name(model, base, taken)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    if taken is not None:
        taken.add(name)
    return name


def node_attributes(node: onnx.NodeProto) -> dict:
    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    """Set (replace or add) one attribute of `node`."""
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _names_used_by(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for sub in subgraphs(node):
            used |= _names_used_by(sub)
    return used


def remove_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop initializers and Constant nodes nothing reads any more (left behind by rewrites)."""
    graph = model.graph
    while True:
        used = _names_used_by(graph)
        dead_nodes = [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]
        for node in dead_nodes:
            graph.node.remove(node)
        if not dead_nodes:
            break
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        kept_names = {t.name for t in keep}
        dropped = {t.name for t in graph.initializer} - kept_names
        del graph.initializer[:]
        graph.initializer.extend(keep)
        stale_inputs = [i for i in graph.input if i.name in dropped]
        for value in stale_inputs:
            graph.input.remove(value)
    return model


def fold_constant_quantize(model: onnx.ModelProto, cache: dict | None = None) -> onnx.ModelProto:
    """Copy of `model` whose QuantizeLinear nodes on constants (weights stored float on their int8
    grid, then Q -> DQ) are replaced by their int8 results, computed by ONNX Runtime itself.

    Why: a session with graph optimizations off (`make_session`) re-quantizes every such weight on
    every run, per channel, which costs more than the int8-simulated model's own arithmetic.
    The folded values come from the same kernel on the same inputs, so every output is the same.
    `cache` (a dict the caller keeps): results of earlier calls, reused for a node whose inputs
    are equal (models that differ only in activation ranges share their weights). Where ONNX
    Runtime cannot run the nodes on their own, `model` is returned as it is (same outputs).
    """
    def output_type(node, constants) -> int:  # the zero point's, else `output_dtype` (opset 21), else uint8
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return zero_point.data_type if zero_point is not None else (
            node_attributes(node).get("output_dtype") or onnx.TensorProto.UINT8)

    return _fold_constant_nodes(model, "QuantizeLinear", output_type, cache)


def fold_constant_weights(model: onnx.ModelProto, cache: dict | None = None) -> onnx.ModelProto:
    """`fold_constant_quantize`, then every DequantizeLinear on those int8 constants computed once,
    by ONNX Runtime's own kernel: the float weights a simulated int8 model's runs read, instead of
    dequantizing them per channel on every run.

    The float result is stored as an initializer read through an Identity node (which ONNX
    Runtime runs as an alias of its input), not handed to the weight's consumer directly: a
    kernel packs a weight it sees as a constant initializer ahead of the first run (Gemm and
    MatMul do), and a packed weight can round differently from the same weight computed by a
    node. Through the Identity every consumer reads it as it read the DequantizeLinear's output,
    so every output is the same (tests/test_calibrate_engine.py compares them)."""
    cache = {} if cache is None else cache
    quantized = fold_constant_quantize(model, cache)
    folded = _fold_constant_nodes(quantized, "DequantizeLinear", lambda node, constants: onnx.TensorProto.FLOAT, cache)
    if folded is quantized:
        return quantized
    produced = {o for n in folded.graph.node for o in n.output}
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"} - produced
    taken = taken_names(folded)
    readers = []
    for tensor in folded.graph.initializer:
        if tensor.name in dequantized:  # the folded result: renamed, read through an Identity
            stored = fresh_name(folded, tensor.name + "_float", taken)
            taken.add(stored)
            node_name = fresh_name(folded, stored + "_read", taken)
            taken.add(node_name)
            readers.append(helper.make_node("Identity", [stored], [tensor.name], name=node_name))
            tensor.name = stored
    nodes = readers + list(folded.graph.node)  # read only initializers: first is topological order
    del folded.graph.node[:]
    folded.graph.node.extend(nodes)
    return folded


def _fold_constant_nodes(model: onnx.ModelProto, op_type: str, output_type, cache: dict | None) -> onnx.ModelProto:
    """Copy of `model` whose `op_type` nodes with constant inputs only are replaced by their
    results (run by ONNX Runtime on their own; `output_type(node, constants)`: the result's
    element type), or `model` itself when there are none or ONNX Runtime cannot run them."""
    constants = {t.name: t for t in model.graph.initializer}
    folded = [n for n in model.graph.node if n.op_type == op_type and n.domain in ("", "ai.onnx")
              and all(not name or name in constants for name in n.input)]
    if not folded:
        return model
    cache = {} if cache is None else cache
    values: dict[str, np.ndarray] = {}
    missing = []
    for node in folded:
        inputs = [constants[name] if name else None for name in node.input]
        known = cache.get((op_type, *node.input))
        if known is not None and known[0] == inputs:
            values[node.output[0]] = known[1]
        else:
            missing.append((node, inputs))
    if missing:
        outputs = [helper.make_tensor_value_info(node.output[0], output_type(node, constants), None)
                   for node, _ in missing]
        needed = {name for node, _ in missing for name in node.input if name}
        piece = helper.make_model(
            helper.make_graph([node for node, _ in missing], "constant_" + op_type, [], outputs,
                              initializer=[constants[name] for name in sorted(needed)]),
            opset_imports=model.opset_import, ir_version=model.ir_version)
        try:
            results = make_session(piece).run([o.name for o in outputs], {})
        except Exception:  # nodes ONNX Runtime cannot run on their own: left in the graph
            return model
        for (node, inputs), value in zip(missing, results):
            values[node.output[0]] = value
            cache[(op_type, *node.input)] = (inputs, value)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    kept = [n for n in result.graph.node if not (n.op_type == op_type and n.output[0] in values)]
    del result.graph.node[:]
    result.graph.node.extend(kept)
    result.graph.initializer.extend(numpy_helper.from_array(values[n.output[0]], n.output[0]) for n in folded)
    return remove_unused_initializers(result)
