"""Reading and writing ONNX files: a missing, truncated or corrupt file, external data outside the
model folder or missing, or a node order ONNX Runtime accepts but the checker does not, becomes
one clear `UserError` (or is put right) instead of a protobuf traceback."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx

from edgepipe import topology
from edgepipe.errors import UserError
from edgepipe.safeio import ensure_regular_file
from edgepipe.scopes import subgraphs

PROTOBUF_MAX_BYTES = (1 << 31) - 1


def load_model(path: str | os.PathLike, load_external: bool = True) -> onnx.ModelProto:
    """Load and check an ONNX file; every failure is a one-line UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; pass an existing .onnx file with --model")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; pass an .onnx file with --model")
    # a FIFO would block the reader forever; protobuf holds at most 2 GB, so a bigger file is read whole for nothing
    ensure_regular_file(path, PROTOBUF_MAX_BYTES, what="ONNX model (weights over 2 GB belong in external data)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise UserError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}); the file may be truncated "
            "or not ONNX - re-export it"
        ) from exc
    _check_strings(model, path)
    _check_tensor_data(model, path)
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path}: not a readable ONNX model (empty graph); re-export it")
    for tensor in _external_tensors(model):
        location = dict((e.key, e.value) for e in tensor.external_data).get("location", "")
        if "\x00" in location:  # no file has such a name; Path.resolve would raise ValueError
            raise UserError(f"{path}: initializer '{tensor.name}' names an external data file with a NUL "
                            f"character ({location!r}); re-save the model")
        data_file = (path.parent / location).resolve()
        if not data_file.is_relative_to(path.parent.resolve()):
            raise UserError(
                f"{path}: initializer '{tensor.name}' points outside the model folder "
                f"({location}); refusing to read it"
            )
        if not data_file.is_file():
            raise UserError(
                f"{path}: external data file '{location}' for initializer '{tensor.name}' is "
                "missing; copy it next to the model"
            )
        _check_external_size(path, tensor, data_file, location)
    if not load_external:
        return model
    if any(True for _ in _external_tensors(model)):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise UserError(f"{path}: cannot read external data ({type(exc).__name__}); re-save the model") from exc
    topology.sort_nodes(model.graph)
    _read_ir3_initializers_as_constants(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: invalid ONNX model: {first}") from exc
    except ValueError:
        pass  # > 2 GB protos cannot be checked in memory; the runtime checks them later
    _check_opsets(model, path)
    _check_window_attributes(model.graph, path)
    _check_io_types(model.graph, path)
    return _inline_local_functions(model, path) if len(model.functions) else model


def _check_opsets(model: onnx.ModelProto, path: Path) -> None:
    """ONNX's checker passes a model stamped with an opset no ONNX release defines (99), which
    failed later inside ONNX Runtime with a C++ signature for a message (and `inspect` called it
    supported); a domain imported twice at two versions leaves which one applies to chance."""
    seen: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in seen and seen[domain] != entry.version:
            raise UserError(f"{path}: opset_import gives the {domain or 'ONNX'} domain twice (versions {seen[domain]} "
                            f"and {entry.version}); re-export the model (one opset per domain)")
        seen[domain] = entry.version
    latest = onnx.defs.onnx_opset_version()
    if seen.get("", 0) > latest:
        raise UserError(f"{path}: the model is stamped with ONNX opset {seen['']}, newer than any this onnx "
                        f"{onnx.__version__} defines (up to {latest}); re-export it with an opset up to {latest} "
                        "(e.g. torch.onnx.export(..., opset_version=17))")


def _inline_local_functions(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A node calling one of the model's own functions (FunctionProto, as torch.onnx and onnxscript
    write them) was refused as 'custom domain ... has no implementation': its body is in the file.
    The calls are replaced by their bodies, as ONNX Runtime runs them."""
    from onnx import inliner

    from edgepipe.npyfile import first_line

    try:
        inlined = inliner.inline_local_functions(model)
    except Exception as exc:  # noqa: BLE001 - a malformed or recursive function body
        raise UserError(f"{path}: cannot expand the model's local functions ({first_line(exc)}); "
                        "re-export the model without functions") from exc
    used = set()
    graphs = [inlined.graph]
    while graphs:  # the domains still called, subgraphs included
        for node in graphs.pop().node:
            used.add(node.domain)
            graphs.extend(subgraphs(node))
    kept = [o for o in inlined.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    return inlined


def _check_strings(model: onnx.ModelProto, path: Path) -> None:
    """ONNX's proto2 strings are read without a UTF-8 check: protobuf hands an invalid one back as
    bytes (or raises when it is read), and a node name 0xff 0xfe was an internal error
    (UnicodeDecodeError) in export and inspect. Every string field is read once here (repeated
    numbers are not walked)."""
    from google.protobuf.descriptor import FieldDescriptor

    def check(message, field_name: str, values) -> None:
        bad = next((value for value in values if isinstance(value, bytes)), None)
        if bad is not None:
            raise UserError(f"{path}: a {message.DESCRIPTOR.name} {field_name} is not UTF-8 ({bad[:40]!r}); "
                            "ONNX strings are UTF-8: re-export the model")

    def walk(message) -> None:
        if message.DESCRIPTOR.name == "TensorProto":  # its names only: listing fields copies raw_data
            check(message, "name", [message.name, message.doc_string])
            for entry in message.external_data:
                check(entry, "key or value", [entry.key, entry.value])
            return
        for field, value in message.ListFields():
            items = [value] if isinstance(value, (str, bytes)) or hasattr(value, "ListFields") else value
            if field.type == FieldDescriptor.TYPE_STRING:
                check(message, field.name, items)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in items:
                    walk(item)

    try:
        walk(model)
    except UnicodeDecodeError as exc:  # a protobuf build that raises instead of returning bytes
        raise UserError(f"{path}: a name or string in the model is not UTF-8 ({exc.reason}); "
                        "ONNX strings are UTF-8: re-export the model") from None


IR_INITIALIZERS_NEED_NOT_BE_INPUTS = 4


def _read_ir3_initializers_as_constants(model: onnx.ModelProto) -> None:
    """IR version 3 wants every initializer listed as a graph input; old converters (OnnxMLTools,
    opset 8) wrote IR 3 files whose weights are not inputs. ONNX Runtime runs them, reading the
    weights as constants - exactly IR 4's meaning - so the in-memory copy is read as IR 4 (the
    checker refused it: 'in initializer but not in graph input')."""
    if model.ir_version >= IR_INITIALIZERS_NEED_NOT_BE_INPUTS:
        return
    inputs = {value.name for value in model.graph.input}
    if any(tensor.name not in inputs for tensor in model.graph.initializer):
        model.ir_version = IR_INITIALIZERS_NEED_NOT_BE_INPUTS


# element types no numpy array that ONNX Runtime accepts can hold (8-bit floats, 4-bit ints): an input
# of one could not be fed calibration data; fold's first run failed inside onnxruntime
_UNFEEDABLE_PREFIXES = ("FLOAT8", "FLOAT4", "INT4", "UINT4", "INT2", "UINT2")
MAX_IO_NAME_BYTES = 4096


def _check_io_types(graph_proto: onnx.GraphProto, path: Path) -> None:
    """Every graph input and output must be a tensor of a known element type (a sequence, map or
    optional, or elem_type 0, failed as a KeyError deep in shape handling), and an input one that
    can be fed."""
    _check_output_names(graph_proto, path)
    for role, values in (("input", graph_proto.input), ("output", graph_proto.output)):
        for value in values:
            size = len(value.name.encode("utf-8", "surrogatepass"))
            if size > MAX_IO_NAME_BYTES:  # eval.npz keys ('input:<name>') are zip member names: 65535 bytes at most
                raise UserError(f"{path}: {role} '{value.name[:40]}...' has a name of {size} bytes; rename it "
                                f"(at most {MAX_IO_NAME_BYTES} bytes) and re-export the model")
            kind = value.type.WhichOneof("value")
            if kind != "tensor_type":
                shown = f"of type {kind.removesuffix('_type')}" if kind else "untyped"
                raise UserError(f"{path}: {role} '{value.name}' is {shown}, not a tensor; edgepipe deploys "
                                "models whose inputs and outputs are tensors - export it with tensor inputs and "
                                "outputs")
            elem_type = value.type.tensor_type.elem_type
            try:
                type_name = onnx.TensorProto.DataType.Name(elem_type)
            except ValueError:
                type_name = "UNDEFINED"
            if type_name == "UNDEFINED":
                raise UserError(f"{path}: {role} '{value.name}' has no known element type ({elem_type}); "
                                "re-export the model with its tensor types")
            if role == "output" and type_name == "STRING":  # jetson built it, then failed writing eval.npz
                raise UserError(f"{path}: output '{value.name}'{_made_by(graph_proto, value.name)} is STRING; "
                                "edgepipe quantizes and compares numeric outputs - end the model at the numeric "
                                "tensor before it and map it to strings in the application")
            if role == "input" and type_name.startswith(_UNFEEDABLE_PREFIXES):
                raise UserError(f"{path}: input '{value.name}' is {type_name}, which calibration data cannot be "
                                "fed as; export the model with float32 inputs (quantize inside it)")


def _check_output_names(graph_proto: onnx.GraphProto, path: Path) -> None:
    """An output listed twice (arm-cpu's error named an internal 'y;internal' tensor) or one that is
    a weight (an initializer: jetson's Q/DQ model has no such output, the report's accuracy failed
    with KeyError, exit 3): neither is something the model computes from its inputs."""
    seen, weights = set(), {tensor.name for tensor in graph_proto.initializer}
    for value in graph_proto.output:
        if value.name in seen:
            raise UserError(f"{path}: output '{value.name}' is listed twice among the graph outputs; keep one "
                            "and re-export the model")
        seen.add(value.name)
        if value.name in weights:
            raise UserError(f"{path}: output '{value.name}' is a weight of the model (an initializer), not computed "
                            "from its inputs; drop it from the outputs (read it from the model file) and re-export")


def _made_by(graph_proto: onnx.GraphProto, name: str) -> str:
    node = next((n for n in graph_proto.node if name in n.output), None)
    return f" (made by node '{node.name or node.op_type}', {node.op_type})" if node is not None else ""


WINDOW_ATTRIBUTES = ("kernel_shape", "strides", "dilations")


def _check_window_attributes(graph_proto: onnx.GraphProto, path: Path) -> None:
    """Non-positive kernel sizes, strides or dilations: ONNX's own C++ shape inference divides by
    them and kills the process (SIGFPE) before any Python error can name the node."""
    for node in graph_proto.node:
        for attribute in node.attribute:
            if attribute.name in WINDOW_ATTRIBUTES and any(v <= 0 for v in attribute.ints):
                raise UserError(f"{path}: node '{node.name or node.op_type}' ({node.op_type}) has "
                                f"{attribute.name}={list(attribute.ints)}; every value must be positive - "
                                "fix the model's attributes and re-export it")
        for subgraph in subgraphs(node):
            _check_window_attributes(subgraph, path)


def _graph_tensors(graph_proto: onnx.GraphProto):
    """Every TensorProto a graph holds: initializers, sparse initializers and node attribute tensors
    (a Constant's value), in subgraphs too; onnx's loader reads external data for all of them."""
    yield from graph_proto.initializer
    for sparse in graph_proto.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph_proto.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
        for subgraph in subgraphs(node):
            yield from _graph_tensors(subgraph)


_T = onnx.TensorProto
_FOUR_BIT = {getattr(_T, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(_T, name)}
# where a tensor without raw_data keeps its values, and how many per element
_TYPED_FIELDS = {_T.FLOAT: ("float_data", 1), _T.COMPLEX64: ("float_data", 2), _T.DOUBLE: ("double_data", 1),
                 _T.COMPLEX128: ("double_data", 2), _T.INT64: ("int64_data", 1), _T.UINT32: ("uint64_data", 1),
                 _T.UINT64: ("uint64_data", 1)}


def _check_tensor_data(model: onnx.ModelProto, path: Path) -> None:
    """Every tensor stored in the file holds the values its shape and type need. ONNX's checker does
    not compare them: a weight whose type byte changed (float to bool) passed it and was an internal
    error (numpy's reshape) where a stage first read it."""
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == _T.EXTERNAL or tensor.data_type in (_T.UNDEFINED, _T.STRING):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, ValueError, TypeError):
            raise UserError(f"{path}: tensor '{tensor.name}' has element type {tensor.data_type}, which ONNX does not "
                            "define; the file is damaged or not ONNX - re-export it") from None
        count = math.prod(tensor.dims)
        if tensor.HasField("raw_data"):
            unit, expected = "bytes", (count + 1) // 2 if tensor.data_type in _FOUR_BIT else count * itemsize
            held = len(tensor.raw_data)
        else:
            field, per = _TYPED_FIELDS.get(tensor.data_type, ("int32_data", 1))
            unit, expected = "values", (count + 1) // 2 if tensor.data_type in _FOUR_BIT else count * per
            held = len(getattr(tensor, field))
        if held != expected or any(d < 0 for d in tensor.dims):
            kind = onnx.TensorProto.DataType.Name(tensor.data_type)
            raise UserError(f"{path}: tensor '{tensor.name}' ({kind} {list(tensor.dims)}) needs {expected} {unit} but "
                            f"the file holds {held}; the file is damaged - re-export the model")


def _external_tensors(model: onnx.ModelProto):
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _check_external_size(path: Path, tensor: onnx.TensorProto, data_file: Path, location: str) -> None:
    """The bytes onnx will read for `tensor` (its `length`, else up to the end of the file) must be
    what its shape holds: a huge or sparse weights file would otherwise be read whole."""
    info = {e.key: e.value for e in tensor.external_data}
    try:
        offset, length = int(info.get("offset") or 0), int(info["length"]) if info.get("length") else None
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: initializer '{tensor.name}' has unreadable external data fields "
                        f"({type(exc).__name__}); re-save the model") from None
    size = data_file.stat().st_size
    expected = itemsize * math.prod(tensor.dims)
    reads = length if length is not None else size - offset
    if offset < 0 or reads < 0 or offset + reads > size or reads > expected:
        raise UserError(f"{path}: initializer '{tensor.name}' {list(tensor.dims)} holds {expected} bytes, but its "
                        f"external data asks for {reads} bytes at offset {offset} of {location} ({size} bytes); "
                        "re-save the model")


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Save a model deterministically (no producer timestamps exist in ONNX protos)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 1_900_000_000:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))
    return path
