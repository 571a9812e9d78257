"""Checks a `ModelSpec` against the rules LiteRT relies on but does not check itself.

The runtime verifies little: a wrong zero-point type, a missing bias scale, an output scale a
kernel ignores or a buffer-0 constant give silently wrong numbers, a node XNNPACK quietly skips,
or a segfault. Every such rule we know of (measured with LiteRT 2.3, and the kernels'
Prepare() functions) is encoded here, and `build_tflite` calls `validate` before any file is
written. Each problem carries a rule id so tests can show each rule rejects its violation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepipe.backends.tflite.builtins import BUILTINS
from edgepipe.backends.tflite.writer import TENSOR_TYPES, ModelSpec, Tensor

INT8_RANGE = (-128, 127)
# every kernel rule below comes from the one table of builtins (builtins.py)
WEIGHT_OPS = {name: b.weights.channel_axis for name, b in BUILTINS.items() if b.weights}
# (op, filter input index, bias input index, data input index)
WEIGHT_SLOTS = {name: (b.weights.filter, b.weights.bias, b.weights.data) for name, b in BUILTINS.items() if b.weights}
BIAS_REQUIRED = {name for name, b in BUILTINS.items() if b.weights and b.weights.bias_required}
FIXED_OUTPUT = {name: b.fixed_output for name, b in BUILTINS.items() if b.fixed_output}
FIXED_OUTPUT_INT16 = {name: b.int16_fixed_output for name, b in BUILTINS.items() if b.int16_fixed_output}
# int8 kernels that move values without requantizing: output quantization must equal the input's
SAME_QUANT = {name for name, b in BUILTINS.items() if b.same_quant}
# inputs of these ops that are moved data (others are shapes, axes, indices)
DATA_INPUTS = {name: b.data_inputs for name, b in BUILTINS.items() if b.same_quant}
OPTIONS_REQUIRED = {name for name, b in BUILTINS.items() if b.options_required}
CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE", "CAST"}
QUANTIZED_TYPES = {"int8", "int16"}


@dataclass
class Problem:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


class ValidationError(Exception):
    """The lowering produced a model LiteRT would mis-run: a backend bug, not a user error."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"invalid TFLite model: {shown}{more}")

    @property
    def rules(self) -> set[str]:
        return {p.rule for p in self.problems}


def validate(spec: ModelSpec) -> None:
    """Raise `ValidationError` listing every broken rule; return None if the model is sound."""
    problems = find_problems(spec)
    if problems:
        raise ValidationError(problems)


def find_problems(spec: ModelSpec) -> list[Problem]:
    problems: list[Problem] = []
    problems += _check_buffers(spec)
    problems += _check_tensors(spec)
    problems += _check_graph(spec)
    if problems:  # later checks index tensors; stop at structural damage
        return problems
    for position, op in enumerate(spec.operators):
        where = f"op {position} {op.opcode} ({op.onnx_node or 'no node'})"
        for check in (_check_opcode, _check_dtypes, _check_weights, _check_fixed_output, _check_same_quant,
                      _check_options, _check_int16):
            problems += [Problem(rule, f"{where}: {msg}") for rule, msg in check(spec, op)]
    return problems


def _check_buffers(spec: ModelSpec) -> list[Problem]:
    problems = []
    if not spec.buffers or spec.buffers[0]:
        problems.append(Problem("buffer0", "buffer 0 must exist and be empty (the 'no data' sentinel)"))
    for i, t in enumerate(spec.tensors):
        if not 0 <= t.buffer < len(spec.buffers):
            problems.append(Problem("buffer0", f"tensor {i} '{t.name}' points at missing buffer {t.buffer}"))
            continue
        if t.buffer > 0:
            expected = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
            if len(spec.buffers[t.buffer]) != expected:
                problems.append(Problem("buffer-size", f"tensor '{t.name}' has {len(spec.buffers[t.buffer])} "
                                                       f"bytes of data, shape {t.shape} needs {expected}"))
    return problems


def _check_tensors(spec: ModelSpec) -> list[Problem]:
    problems = []
    for t in spec.tensors:
        if t.dtype not in TENSOR_TYPES:
            problems.append(Problem("dtype", f"tensor '{t.name}' has unsupported dtype {t.dtype}"))
        if any((not isinstance(d, int)) or d < 0 for d in t.shape):
            problems.append(Problem("shape", f"tensor '{t.name}' has a non-static shape {t.shape}"))
        problems += _check_quantization(t)
    return problems


def _check_quantization(t: Tensor) -> list[Problem]:
    q = t.quantization
    if q is None:
        if t.dtype in QUANTIZED_TYPES:
            return [Problem("quant-missing", f"{t.dtype} tensor '{t.name}' has no quantization parameters")]
        if t.dtype == "int32" and t.buffer == 0:
            return []
        return []
    problems = []
    scale, zero_point = np.asarray(q.scale), np.asarray(q.zero_point)
    if scale.dtype != np.float32 or zero_point.dtype != np.int64:
        problems.append(Problem("quant-types", f"tensor '{t.name}': scale must be float32 and zero_point int64, "
                                               f"got {scale.dtype}/{zero_point.dtype}"))
    if scale.ndim != 1 or zero_point.shape != scale.shape or scale.size == 0:
        problems.append(Problem("quant-length", f"tensor '{t.name}': {scale.size} scales vs {zero_point.size} "
                                                f"zero points"))
        return problems
    if scale.size > 1:
        if not 0 <= q.axis < len(t.shape) or t.shape[q.axis] != scale.size:
            problems.append(Problem("quant-length", f"tensor '{t.name}': {scale.size} per-channel scales do not "
                                                    f"match dimension {q.axis} of shape {t.shape}"))
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        problems.append(Problem("quant-scale", f"tensor '{t.name}': scales must be finite and > 0"))
    if t.dtype == "int8" and (zero_point.min() < INT8_RANGE[0] or zero_point.max() > INT8_RANGE[1]):
        problems.append(Problem("quant-zero-point", f"tensor '{t.name}': int8 zero point outside [-128, 127]"))
    if t.dtype in ("int16", "int32") and np.any(zero_point != 0):
        problems.append(Problem("quant-zero-point", f"{t.dtype} tensor '{t.name}' must have zero point 0"))
    return problems


def _check_graph(spec: ModelSpec) -> list[Problem]:
    problems = []
    count = len(spec.tensors)
    if not spec.inputs or not spec.outputs:
        problems.append(Problem("io", "the model needs at least one input and one output"))
    for index in spec.inputs + spec.outputs:
        if not 0 <= index < count:
            problems.append(Problem("io", f"graph input/output {index} is not a tensor"))
            return problems
    for index in set(spec.inputs) & set(spec.outputs):  # a pass-through output needs its own tensor (a copy)
        problems.append(Problem("io", f"tensor '{spec.tensors[index].name}' is both a graph input and output"))
    for kind, indices in (("input", spec.inputs), ("output", spec.outputs)):
        # the signature maps inputs and outputs separately: a pass-through has one name in each
        io_names = [spec.tensors[i].name for i in indices]
        if len(set(io_names)) != len(io_names):
            problems.append(Problem("io", f"{kind} tensor names are not unique: {io_names}"))
    available = set(spec.inputs) | {i for i, t in enumerate(spec.tensors) if t.buffer > 0}
    produced: set[int] = set()
    for position, op in enumerate(spec.operators):
        for index in op.inputs:
            if index == -1:
                continue
            if not 0 <= index < count:
                problems.append(Problem("dataflow", f"op {position} {op.opcode} reads missing tensor {index}"))
            elif index not in available:
                problems.append(Problem("dataflow", f"op {position} {op.opcode} reads tensor "
                                                    f"'{spec.tensors[index].name}' before it is produced"))
        for index in op.outputs:
            if not 0 <= index < count or index in available or index in produced:
                problems.append(Problem("dataflow", f"op {position} {op.opcode} writes tensor {index} that is "
                                                    "missing, constant, an input or written twice"))
            produced.add(index)
            available.add(index)
    for index in spec.outputs:
        if index not in available:
            problems.append(Problem("dataflow", f"output '{spec.tensors[index].name}' is never produced"))
    return problems


def _check_opcode(spec: ModelSpec, op):
    if op.opcode not in BUILTINS or BUILTINS[op.opcode].version < 1:
        yield "opcode", "operator has no row in builtins.BUILTINS (version 0 fails to register)"


def _check_dtypes(spec: ModelSpec, op):
    if op.opcode in CONVERSION_OPS:
        return
    weight_slots = set(WEIGHT_SLOTS[op.opcode][:2]) if op.opcode in WEIGHT_SLOTS else set()
    kinds = {spec.tensors[i].dtype for slot, i in enumerate(op.inputs) if i >= 0 and slot not in weight_slots}
    kinds |= {spec.tensors[i].dtype for i in op.outputs}
    kinds &= {"float32", "int8", "int16"}
    if len(kinds) > 1:
        yield "dtype-mix", f"mixes {sorted(kinds)} tensors; insert QUANTIZE/DEQUANTIZE"


def _check_weights(spec: ModelSpec, op):
    if op.opcode not in WEIGHT_SLOTS:
        return
    filter_slot, bias_slot, data_slot = WEIGHT_SLOTS[op.opcode]
    data, weights = spec.tensors[op.inputs[data_slot]], spec.tensors[op.inputs[filter_slot]]
    if data.dtype not in QUANTIZED_TYPES:
        return
    wq = weights.quantization
    if wq is None or weights.dtype != "int8":
        yield "weights", f"filter '{weights.name}' must be int8 with quantization parameters"
        return
    if np.any(np.asarray(wq.zero_point) != 0):
        yield "weights", f"filter '{weights.name}' must be symmetric (zero point 0)"
    if wq.scale.size > 1 and wq.axis != WEIGHT_OPS[op.opcode]:
        yield "weights", (f"filter '{weights.name}' quantized_dimension is {wq.axis}, {op.opcode} needs "
                          f"{WEIGHT_OPS[op.opcode]}")
    has_bias = len(op.inputs) > bias_slot and op.inputs[bias_slot] >= 0
    if not has_bias:
        if op.opcode in BIAS_REQUIRED:
            yield "bias", f"int8 {op.opcode} must have a bias tensor"
        return
    bias = spec.tensors[op.inputs[bias_slot]]
    bq = bias.quantization
    expected_type = "int32" if data.dtype == "int8" else "int64"
    if bias.dtype != expected_type or bq is None:
        yield "bias", f"bias '{bias.name}' must be {expected_type} with quantization parameters"
        return
    if bq.scale.size != wq.scale.size:
        yield "bias", f"bias '{bias.name}' has {bq.scale.size} scales, the filter {wq.scale.size}"
        return
    if np.any(np.asarray(bq.zero_point) != 0):
        yield "bias", f"bias '{bias.name}' must have zero point 0"
    if data.quantization is not None:
        expected = data.quantization.scale[0] * np.asarray(wq.scale, np.float64)
        if not np.allclose(bq.scale, expected, rtol=1e-4, atol=0):
            yield "bias", f"bias '{bias.name}' scale must equal input_scale x weight_scale"


def _check_fixed_output(spec: ModelSpec, op):
    if op.opcode not in FIXED_OUTPUT and op.opcode not in FIXED_OUTPUT_INT16:
        return
    out = spec.tensors[op.outputs[0]]
    table = FIXED_OUTPUT_INT16 if out.dtype == "int16" else FIXED_OUTPUT
    if out.dtype not in QUANTIZED_TYPES or out.quantization is None or op.opcode not in table:
        return
    scale, zero_point = table[op.opcode]
    got_scale, got_zp = out.quantization.as_pair()
    if abs(got_scale - scale) > 1e-9 or got_zp != zero_point:
        yield "fixed-output", f"{out.dtype} {op.opcode} output must have scale {scale:g} zero point {zero_point}, " \
                              f"got {got_scale:g}/{got_zp}"


def _check_same_quant(spec: ModelSpec, op):
    if op.opcode not in SAME_QUANT:
        return
    out = spec.tensors[op.outputs[0]]
    if out.dtype not in QUANTIZED_TYPES:
        return
    slots = DATA_INPUTS.get(op.opcode, (0,))
    inputs = op.inputs if slots is None else [op.inputs[s] for s in slots if s < len(op.inputs)]
    # outputs that hold integers (TOPK_V2's indices) carry no quantization to share
    tensors = [spec.tensors[i] for i in inputs if i >= 0] + [
        spec.tensors[i] for i in op.outputs if spec.tensors[i].dtype in QUANTIZED_TYPES]
    for t in tensors:
        if t.quantization is None or not out.quantization.same_as(t.quantization):
            yield "same-quant", f"{op.opcode} needs identical quantization on '{t.name}' and '{out.name}'"
            return


def _check_options(spec: ModelSpec, op):
    if op.opcode in OPTIONS_REQUIRED and not op.options_type:
        yield "options", f"{op.opcode} needs its options table"
    if op.opcode == "SOFTMAX" and not op.options.get("Beta"):
        yield "options", "SOFTMAX needs Beta set (unset = 0 gives a uniform output)"


def _check_int16(spec: ModelSpec, op):
    """A 16x8 operator needs a builtin whose int16 kernel the project measured (builtins.py), and
    the options that kernel needs (ADD / SUB: the general-scale path; the schema's default assumes
    power-of-two scales and silently mis-scales others)."""
    row = BUILTINS.get(op.opcode)
    if row is None or spec.op_dtype(op) != "int16":
        return
    if row.int16 is None:
        yield "int16-kernel", f"{op.opcode} has no int16 kernel in builtins.BUILTINS; keep the node int8"
    elif row.int16_options is not None:
        options_type, fields = row.int16_options
        if op.options_type != options_type or any(op.options.get(k) != v for k, v in fields.items()):
            yield "options", f"int16 {op.opcode} needs {options_type} {fields}"
