"""An in-memory TFLite model (`ModelSpec`) and its serialization to a .tflite flatbuffer.

The lowering fills a `ModelSpec` with plain Python objects (tensors, operators, constant
buffers); `validator.validate` checks it; only then `serialize` writes the flatbuffer through
the `tflite` package's generated builders. Keeping the model as plain data until the very end
is what makes "validate before writing" possible, and keeps flatbuffer details (children built
before parents, buffer 0 sentinel, both opcode fields, float32/int64 quantization vectors)
in this one module.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

from edgepipe.backends.tflite.builtins import BUILTINS

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

# numpy dtype name -> tflite.TensorType value
TENSOR_TYPES = {
    "float32": tflite.TensorType.FLOAT32,
    "int8": tflite.TensorType.INT8,
    "int16": tflite.TensorType.INT16,
    "int32": tflite.TensorType.INT32,
    "int64": tflite.TensorType.INT64,
    "uint8": tflite.TensorType.UINT8,
    "bool": tflite.TensorType.BOOL,
}

# Ops whose options table is required by the kernel (Prepare dereferences it).
OPTIONS_TYPES = {name: getattr(tflite.BuiltinOptions, name) for name in dir(tflite.BuiltinOptions)
                 if not name.startswith("_")}


@dataclass
class Quantization:
    """Affine quantization: real = scale * (q - zero_point); per-channel along `axis`."""

    scale: np.ndarray  # float32 vector
    zero_point: np.ndarray  # int64 vector, same length
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> "Quantization":
        return cls(np.array([scale], np.float32), np.array([zero_point], np.int64), 0)

    @classmethod
    def per_channel(cls, scales, axis: int) -> "Quantization":
        scales = np.asarray(scales, np.float32).ravel()
        return cls(scales, np.zeros(scales.size, np.int64), axis)

    def same_as(self, other: "Quantization | None") -> bool:
        return (other is not None and self.scale.size == other.scale.size
                and np.allclose(self.scale, other.scale, rtol=1e-6, atol=0)
                and np.array_equal(self.zero_point, other.zero_point))

    def as_pair(self) -> tuple[float, int]:
        return float(self.scale[0]), int(self.zero_point[0])


@dataclass
class Tensor:
    name: str
    shape: list[int]
    dtype: str  # key of TENSOR_TYPES
    buffer: int = 0  # 0: no data (activation); > 0: index into ModelSpec.buffers
    quantization: Quantization | None = None


@dataclass
class Operator:
    opcode: str  # tflite.BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[int]  # tensor indices, -1 = optional input left out
    outputs: list[int]
    options_type: str | None = None  # tflite.BuiltinOptions name, e.g. "Conv2DOptions"
    options: dict = field(default_factory=dict)  # field name (as in the builder) -> value
    onnx_node: str = ""  # the ONNX node it lowers (diagnostics, histograms)


@dataclass
class ModelSpec:
    """One-subgraph TFLite model as plain data; `serialize` turns it into bytes."""

    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0 = "no data" sentinel
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    signature_key: str = "serving_default"
    description: str = "edgepipe"
    # constants with the same bytes share one buffer: an unrolled recurrent layer's per-step
    # FULLY_CONNECTEDs all read the same recurrent weights (one copy per step would multiply the file)
    _buffer_of: dict[bytes, int] = field(default_factory=dict, repr=False, compare=False)

    def add_tensor(self, name: str, shape, dtype: str, quantization: Quantization | None = None) -> int:
        self.tensors.append(Tensor(name, [int(d) for d in shape], dtype, 0, quantization))
        return len(self.tensors) - 1

    def add_constant(self, name: str, value: np.ndarray, quantization: Quantization | None = None) -> int:
        value = np.ascontiguousarray(value)
        data = value.tobytes()
        key = hashlib.blake2b(data, digest_size=20).digest() + len(data).to_bytes(8, "little")
        if key not in self._buffer_of or self.buffers[self._buffer_of[key]] != data:
            self.buffers.append(data)
            self._buffer_of[key] = len(self.buffers) - 1
        self.tensors.append(Tensor(name, list(value.shape), value.dtype.name, self._buffer_of[key], quantization))
        return len(self.tensors) - 1

    def add_operator(self, opcode: str, inputs, outputs, options_type: str | None = None,
                     options: dict | None = None, onnx_node: str = "") -> Operator:
        op = Operator(opcode, list(inputs), list(outputs), options_type, dict(options or {}), onnx_node)
        self.operators.append(op)
        return op

    def constant_value(self, index: int) -> np.ndarray | None:
        tensor = self.tensors[index]
        if tensor.buffer == 0:
            return None
        data = np.frombuffer(self.buffers[tensor.buffer], dtype=np.dtype(tensor.dtype))
        return data.reshape(tensor.shape)

    def op_dtype(self, op: Operator) -> str:
        """"int16" when the operator touches an int16 activation (its 16x8 kernel), else "other"."""
        return "int16" if any(i >= 0 and self.tensors[i].dtype == "int16" for i in [*op.inputs, *op.outputs]) \
            else "other"

    def op_histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operators:
            counts[op.opcode] = counts.get(op.opcode, 0) + 1
        return dict(sorted(counts.items()))


def builtin_code(opcode: str) -> int:
    return getattr(tflite.BuiltinOperator, opcode)


def serialize(spec: ModelSpec) -> bytes:
    """The .tflite bytes of a (validated) model."""
    builder = flatbuffers.Builder(1024 + sum(len(b) for b in spec.buffers))
    opcodes = sorted({op.opcode for op in spec.operators}, key=lambda name: builtin_code(name))
    versions = opcode_versions(spec)
    opcode_index = {name: i for i, name in enumerate(opcodes)}

    buffers = [_buffer(builder, data) for data in spec.buffers]
    tensors = [_tensor(builder, t) for t in spec.tensors]
    operators = [_operator(builder, op, opcode_index[op.opcode]) for op in spec.operators]
    codes = [_opcode(builder, name, versions[name]) for name in opcodes]

    name = builder.CreateString("main")
    subgraph_tensors = _table_vector(builder, tflite.SubGraphStartTensorsVector, tensors)
    subgraph_ops = _table_vector(builder, tflite.SubGraphStartOperatorsVector, operators)
    subgraph_inputs = _int_vector(builder, tflite.SubGraphStartInputsVector, spec.inputs)
    subgraph_outputs = _int_vector(builder, tflite.SubGraphStartOutputsVector, spec.outputs)
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, subgraph_tensors)
    tflite.SubGraphAddOperators(builder, subgraph_ops)
    tflite.SubGraphAddInputs(builder, subgraph_inputs)
    tflite.SubGraphAddOutputs(builder, subgraph_outputs)
    tflite.SubGraphAddName(builder, name)
    subgraph = tflite.SubGraphEnd(builder)

    signature = _signature(builder, spec)
    description = builder.CreateString(spec.description)
    codes_vec = _table_vector(builder, tflite.ModelStartOperatorCodesVector, codes)
    subgraphs_vec = _table_vector(builder, tflite.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = _table_vector(builder, tflite.ModelStartBuffersVector, buffers)
    signatures_vec = _table_vector(builder, tflite.ModelStartSignatureDefsVector, [signature])
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(builder, codes_vec)
    tflite.ModelAddSubgraphs(builder, subgraphs_vec)
    tflite.ModelAddDescription(builder, description)
    tflite.ModelAddBuffers(builder, buffers_vec)
    tflite.ModelAddSignatureDefs(builder, signatures_vec)
    builder.Finish(tflite.ModelEnd(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _table_vector(builder, start, offsets) -> int:
    start(builder, len(offsets))
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _int_vector(builder, start, values, prepend=None) -> int:
    start(builder, len(values))
    prepend = prepend or builder.PrependInt32
    for value in reversed(list(values)):
        prepend(int(value))
    return builder.EndVector()


def _buffer(builder, data: bytes) -> int:
    data_vec = None
    if data:
        builder.StartVector(1, len(data), 16)  # 16-byte alignment for SIMD kernels reading weights
        builder.head = builder.head - len(data)
        builder.Bytes[builder.head: builder.head + len(data)] = data
        data_vec = builder.EndVector()
    tflite.BufferStart(builder)
    if data_vec is not None:
        tflite.BufferAddData(builder, data_vec)
    return tflite.BufferEnd(builder)


def _quantization(builder, q: Quantization) -> int:
    scale = np.asarray(q.scale, np.float32).ravel()
    zero_point = np.asarray(q.zero_point, np.int64).ravel()
    tflite.QuantizationParametersStartScaleVector(builder, scale.size)
    for value in reversed(scale.tolist()):
        builder.PrependFloat32(value)
    scale_vec = builder.EndVector()
    zp_vec = _int_vector(builder, tflite.QuantizationParametersStartZeroPointVector, zero_point.tolist(),
                         builder.PrependInt64)
    tflite.QuantizationParametersStart(builder)
    tflite.QuantizationParametersAddScale(builder, scale_vec)
    tflite.QuantizationParametersAddZeroPoint(builder, zp_vec)
    tflite.QuantizationParametersAddQuantizedDimension(builder, int(q.axis))
    return tflite.QuantizationParametersEnd(builder)


def _tensor(builder, tensor: Tensor) -> int:
    name = builder.CreateString(tensor.name)
    shape = _int_vector(builder, tflite.TensorStartShapeVector, tensor.shape)
    quant = _quantization(builder, tensor.quantization) if tensor.quantization is not None else None
    tflite.TensorStart(builder)
    tflite.TensorAddShape(builder, shape)
    tflite.TensorAddType(builder, TENSOR_TYPES[tensor.dtype])
    tflite.TensorAddBuffer(builder, tensor.buffer)
    tflite.TensorAddName(builder, name)
    if quant is not None:
        tflite.TensorAddQuantization(builder, quant)
    return tflite.TensorEnd(builder)


def _options(builder, options_type: str, options: dict) -> int:
    """Build any `<Name>Options` table from field values, through the generated builders."""
    vectors = {}
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            start = getattr(tflite, f"{options_type}Start{key}Vector")
            vectors[key] = _int_vector(builder, start, value)
    getattr(tflite, f"{options_type}Start")(builder)
    for key, value in options.items():
        add = getattr(tflite, f"{options_type}Add{key}")
        add(builder, vectors[key] if key in vectors else value)
    return getattr(tflite, f"{options_type}End")(builder)


def _operator(builder, op: Operator, opcode_index: int) -> int:
    inputs = _int_vector(builder, tflite.OperatorStartInputsVector, op.inputs)
    outputs = _int_vector(builder, tflite.OperatorStartOutputsVector, op.outputs)
    options = _options(builder, op.options_type, op.options) if op.options_type else None
    tflite.OperatorStart(builder)
    tflite.OperatorAddOpcodeIndex(builder, opcode_index)
    tflite.OperatorAddInputs(builder, inputs)
    tflite.OperatorAddOutputs(builder, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(builder, OPTIONS_TYPES[op.options_type])
        tflite.OperatorAddBuiltinOptions(builder, options)
    return tflite.OperatorEnd(builder)


def opcode_versions(spec: ModelSpec) -> dict[str, int]:
    """One version per opcode: the highest its operators need (an int16 kernel's version also
    registers the int8 and float kernels of that builtin)."""
    versions: dict[str, int] = {}
    for op in spec.operators:
        version = BUILTINS[op.opcode].version_for(spec.op_dtype(op))
        versions[op.opcode] = max(versions.get(op.opcode, 0), version)
    return versions


def _opcode(builder, opcode: str, version: int) -> int:
    code = builtin_code(opcode)
    tflite.OperatorCodeStart(builder)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, 127))
    tflite.OperatorCodeAddBuiltinCode(builder, code)
    tflite.OperatorCodeAddVersion(builder, version)
    return tflite.OperatorCodeEnd(builder)


def _signature(builder, spec: ModelSpec) -> int:
    def tensor_maps(indices):
        maps = []
        for index in indices:
            name = builder.CreateString(spec.tensors[index].name)
            tflite.TensorMapStart(builder)
            tflite.TensorMapAddName(builder, name)
            tflite.TensorMapAddTensorIndex(builder, index)
            maps.append(tflite.TensorMapEnd(builder))
        return maps

    inputs = _table_vector(builder, tflite.SignatureDefStartInputsVector, tensor_maps(spec.inputs))
    outputs = _table_vector(builder, tflite.SignatureDefStartOutputsVector, tensor_maps(spec.outputs))
    key = builder.CreateString(spec.signature_key)
    tflite.SignatureDefStart(builder)
    tflite.SignatureDefAddInputs(builder, inputs)
    tflite.SignatureDefAddOutputs(builder, outputs)
    tflite.SignatureDefAddSignatureKey(builder, key)
    tflite.SignatureDefAddSubgraphIndex(builder, 0)
    return tflite.SignatureDefEnd(builder)
