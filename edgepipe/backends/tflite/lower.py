"""The lowering: walks the ONNX graph once and fills a `ModelSpec`, one op-family module per node.

`Lowering` is the context every op lowering (edgepipe/backends/tflite/ops/*.py) receives. It owns
the three things no single op can decide alone:

- **Tensor registry.** An ONNX tensor may exist in TFLite in several *representations* (`Value`):
  int8 or float32, NHWC or ONNX order. `get(name, dtype, perm)` returns the wanted one and inserts
  the one QUANTIZE / DEQUANTIZE / TRANSPOSE needed to make it, once, on first use. Float islands
  (`options["float_nodes"]`, or an op without an int8 kernel) therefore need no special case:
  the node simply asks for float inputs and registers float outputs.
- **Layout propagation.** `Value.perm` says how the TFLite tensor is ordered relative to ONNX:
  TFLite dim i is ONNX dim perm[i] (NHWC = (0, 2, 3, 1)). Image ops produce NHWC, elementwise ops
  keep whatever layout their input has, constants are transposed at convert time. A runtime
  TRANSPOSE appears only where a layout-sensitive op (Reshape, Flatten, ...) needs ONNX order.
- **Quantization parameters.** Activations take the asymmetric int8 range from calibration
  (`quant(name)`); ops whose kernels require fixed or pass-through parameters pass them to
  `new_value`. Relu / Relu6 / Clip(-1, 1) are fused into their producer (`fuse_activation`).
- **Integers, booleans, masks** (integers.py): token ids and masks are int32 / bool values, never
  int8; a node touching a tensor that carried a mask's infinities (`calibration.unbounded`) is float.
- **16x8 nodes.** `options["activations"] == "int16"` (the whole model) or `options["int16_nodes"]`
  (named nodes; the mixed-precision planner's third choice next to int8 and float) lower a node
  with int16 activations when its family registers an int16 kernel (`register(..., int16=True)`);
  its tensors get the symmetric grid max|x| / 32767 of the same calibration, and the registry
  converts int8 <-> int16 with QUANTIZE at the borders like any other representation.
  Nodes without an int16 kernel stay int8 (`int16_fallback` lists those that were asked for).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgepipe import graph, quantmath
from edgepipe.backends import support
from edgepipe.backends.tflite import builtins, float_islands, integers, layouts, model_io, shared_scales
from edgepipe.backends.tflite.layouts import NHWC, identity, inverse, permute  # noqa: F401 (re-exported)
from edgepipe.backends.tflite.fusion import fusable_activation
from edgepipe.backends.tflite.model_io import INTEGER_VALUES
from edgepipe.backends.tflite.writer import ModelSpec, Quantization
from edgepipe.errors import UnsupportedOpError, UserError

BACKEND = "tflite"  # names the target in errors when the caller did not say which (options["target"])
# An activation whose calibrated range is narrower than this is constantly zero in practice (a
# conv after a zero-initialised BatchNorm gamma, a Relu that never fires): it gets the neutral
# grid of [0, 1] instead of a ~1e-6 scale that breaks the requantization limits of its neighbours.
DEGENERATE_RANGE = 1e-10
NEUTRAL_RANGE = (0.0, 1.0)
QUANTIZED = ("int8", "int16")
# Smallest bias scale (input_scale x weight_scale) written: well above the 1e-12 floor of
# quantmath.quantize_bias, so the kernels' rule bias_scale = input_scale x weight_scale holds exactly.
MIN_BIAS_SCALE = 1e-10
ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
# input / output scale ratios XNNPACK's int8 -> int8 QUANTIZE delegates (LiteRT 2.3), with margin
REQUANT_RATIO = (1.0 / 256 * 1.01, 128.0 / 1.01)


class ShapeUnknownError(UserError):
    """A lowering or check needed a static shape that shape inference did not give: the graph still
    has dynamic dims (fix them with --input-shape) or a shape computed from data at run time."""

    def __init__(self, name: str, dims):
        self.tensor = name
        shown = "unknown rank" if dims is None else str(list(dims))
        if dims is not None and 0 in list(dims):  # a Slice to nothing: static, but TFLite has no empty tensors
            super().__init__(f"tensor '{name}' is empty ({shown}); the arm-cpu (TFLite) lowering takes no empty tensors: "
                             "remove the node that makes it (e.g. a Slice to nothing, or a Concat input of size 0) "
                             "and re-export the model")
            return
        super().__init__(f"tensor '{name}' has no static shape ({shown}); pass --input-shape NAME:1x... for every "
                         "dynamic input, or export the model with fixed shapes")


def int16_threshold(tensor) -> float:
    """The symmetric int16 threshold of a calibrated tensor: its observed |x| maximum (never below
    the chosen int8 threshold `amax`; the neutral 1.0 for a tensor that is constantly zero)."""
    amax = max(abs(float(tensor.min)), abs(float(tensor.max)), float(tensor.amax))
    return amax if amax >= DEGENERATE_RANGE else NEUTRAL_RANGE[1]


@dataclass(frozen=True)
class Value:
    """One TFLite tensor holding an ONNX tensor in a given dtype and layout."""

    index: int
    dtype: str  # "float32", "int8" or "int16"
    perm: tuple[int, ...]  # TFLite dim i is ONNX dim perm[i]


def prepare_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with unique node names and inferred shapes (lowerings read shapes of every tensor),
    and the op families' pattern rewrites applied (edgepipe/backends/tflite/ops: register_rewrite)."""
    from edgepipe.backends.tflite import ops

    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    graph.ensure_node_names(prepared)
    prepared = graph.infer_shapes(prepared)
    for rewrite in ops.rewrites():
        rewrite(prepared)
    return prepared


node_attrs = graph.node_attributes  # the ops' short name for it


class Lowering:
    """Context of one conversion: the ONNX model, the TFLite model being built, and the registry."""

    def __init__(self, model: onnx.ModelProto, calibration=None, options: dict | None = None,
                 quantized: bool = False):
        from edgepipe.backends.tflite import ops

        self.model = model
        self.calibration = calibration
        self.options = dict(options or {})
        self.target = str(self.options.get("target") or BACKEND)
        self.quantized = quantized
        self.keep_layout = bool(self.options.get("keep_layout", False))
        self.int8_io = bool(self.options.get("int8_io", False))
        self.requested_float = set(self.options.get("float_nodes") or ())
        self.requested_int16 = set(self.options.get("int16_nodes") or ())
        self.int16_everywhere = self.options.get("activations") == "int16"
        self.registry = ops.registry()
        self.opsets = support.opsets(model)
        self.spec = ModelSpec()
        self.values: dict[str, list[Value]] = {}
        self.consumed: set[str] = set()  # nodes already lowered as part of another (fused activations)
        self.float_lowered: list[str] = []
        self.int16_lowered: list[str] = []
        self.int16_fallback: list[str] = []  # asked for int16, lowered int8 (no int16 kernel for the node)
        self._constant_cache: dict[tuple, int] = {}
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output:
                value = graph.constant_value(model, node.output[0])
                if value is not None:
                    self.constants[node.output[0]] = value
        self.infos = graph.value_infos(model)
        self.consumers = graph.consumers(model)
        self.producers = graph.producers(model)  # the graph is fixed from here on
        self.graph_outputs = [o.name for o in model.graph.output]
        self.absorbed = ops.absorbed_nodes(model)  # a request naming a node a rewrite folded away
        self.requested_float |= {self.absorbed[n] for n in self.requested_float if n in self.absorbed}
        self.requested_int16 |= {self.absorbed[n] for n in self.requested_int16 if n in self.absorbed}
        self.expanded = ops.expanded_nodes(model)  # a request naming a node a rewrite replaced by several
        self.requested_float |= {m for n in set(self.requested_float) for m in self.expanded.get(n, ())}
        self.requested_int16 |= {m for n in set(self.requested_int16) for m in self.expanded.get(n, ())}
        # {clamp output: its tensor input} and their saturating grids (shared_scales.clamps); None
        # while they are being found, when every int8 Max / Min is a candidate (ops/elementwise.py)
        self.clamp_inputs: dict[str, str] | None = None
        self.long_recurrences: dict[str, int] = {}  # {recurrent node: steps} kept float (float_islands.py)
        self.wide_range: dict[str, float] = {}  # {tensor: zeroed share} kept float (float_islands.py)
        float_islands.choose(self)
        self.shared_ranges: dict[str, str] = {}
        if self.options.get("share_concat_scales", True):
            self.shared_ranges = shared_scales.shared_concat_ranges(self)
        self.clamp_inputs, self.clamp_grids = shared_scales.clamps(self)

    # ----- ONNX side ---------------------------------------------------------------------------
    def declared_dims(self, name: str) -> list | None:
        """The tensor's dims as inferred (symbolic ones included); None when even the rank is unknown."""
        if name in self.constants:
            return list(self.constants[name].shape)
        info = self.infos.get(name)
        dims = graph.declared_shape(info) if info is not None else None
        return list(dims) if dims is not None else None

    def shape(self, name: str) -> list[int]:
        dims = self.declared_dims(name)
        if not graph.is_static(dims):
            raise ShapeUnknownError(name, dims)
        return [int(d) for d in dims]

    def dim(self, name: str, axis: int) -> int:
        """One static dim (a channel count of a tensor whose batch is still symbolic), or ShapeUnknownError."""
        dims = self.declared_dims(name)
        if dims is None or not -len(dims) <= axis < len(dims) or not graph.is_static_dim(dims[axis]):
            raise ShapeUnknownError(name, dims)
        return int(dims[axis])

    def rank(self, name: str) -> int:
        """Known for dynamic dims too (checks that only need the rank decide on a dynamic graph)."""
        dims = self.declared_dims(name)
        if dims is None:
            raise ShapeUnknownError(name, dims)
        return len(dims)

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def onnx_kind(self, name: str) -> str:
        """"int32" for an integer ONNX tensor, "bool" for a boolean one, "float32" otherwise."""
        return integers.onnx_kind(self, name)

    def unbounded(self, node: onnx.NodeProto) -> bool:
        """The node reads or writes a tensor that carried an attention mask's infinities."""
        names = getattr(self.calibration, "unbounded", None)
        return bool(names) and any(name in names for name in [*node.input, *node.output] if name)

    def node_dtype(self, node: onnx.NodeProto) -> str:
        """int32 / bool for a node writing integers or booleans; float32 for the fp32 model,
        requested float nodes, nodes touching an unbounded (mask) tensor and ops without an int8
        kernel; int16 for nodes asked to run 16x8 whose family has an int16 kernel; int8 otherwise."""
        kind = self.onnx_kind(node.output[0]) if node.output else "float32"
        sources = [name for name in node.input if name and name not in self.constants]
        if kind != "float32" and all(self.onnx_kind(name) != "float32" for name in sources):
            return kind  # integers from integers (a mask's reshapes, selects); ArgMax reads floats
        if not self.quantized or node.name in self.requested_float or self.unbounded(node):
            return "float32"
        entry = self.lowering_for(node)
        if self.wants_int16(node) and entry is not None and entry.supports_int16(self, node):
            return "int16"  # before int8's float islands: some are only there for XNNPACK's sake
        if entry is not None and not entry.supports_int8(self, node):
            return "float32"
        return "int8"

    def wants_int16(self, node: onnx.NodeProto) -> bool:
        return self.quantized and (self.int16_everywhere or node.name in self.requested_int16)

    def quant(self, name: str, dtype: str = "int8") -> Quantization:
        """Parameters of an activation from the calibration ranges: asymmetric int8 of [lo, hi], or
        symmetric int16 (zero point 0, the kernels' rule) over the observed range, max(|min|, |max|)
        / 32767 (a `;2d` view a rewrite added shares the range of the tensor it names: ops/one_d.py).

        Why not int8's clipped threshold for int16: clipping outliers pays when 256 steps are
        scarce; with 65536 the clipping error dominates (benchmarks/results/int16_activations.json
        measures both)."""
        if self.calibration is not None and name not in self.calibration and name.endswith(";2d"):
            name = name[:-len(";2d")]
        if self.shared_ranges:
            name = shared_scales.resolve(self.shared_ranges, name)
        if dtype == "int8" and name in self.clamp_grids:
            return self.clamp_grids[name]
        if self.calibration is None or name not in self.calibration:
            raise UserError(f"tensor '{name}' has no calibration range; re-run calibration on this model")
        tensor = self.calibration.tensors[name]
        degenerate = max(tensor.hi, 0.0) - min(tensor.lo, 0.0) < DEGENERATE_RANGE
        if dtype == "int16":
            amax = int16_threshold(tensor)
            return Quantization.per_tensor(quantmath.symmetric_scale(NEUTRAL_RANGE[1] if degenerate else amax, 16), 0)
        if degenerate:
            return Quantization.per_tensor(*quantmath.asymmetric_params(*NEUTRAL_RANGE))
        scale, zero_point = self.calibration.asymmetric_params(name)
        return Quantization.per_tensor(scale, zero_point)

    def lowering_for(self, node: onnx.NodeProto):
        """The registered lowering of this node's (domain, op type, opset), or None."""
        domain = support.canonical_domain(node.domain)
        return self.registry.find(domain, node.op_type, self.opsets.get(domain, 0))

    def unsupported_reason(self, node: onnx.NodeProto) -> str | None:
        """Why `node` cannot be lowered: its operator (domain, opset, control flow) or its check."""
        entry = self.lowering_for(node)
        if entry is None:
            return support.operator_problem(node, self.opsets, self.registry, self.target)
        return entry.unsupported_reason(self, node)

    # ----- TFLite side -------------------------------------------------------------------------
    def emit(self, opcode: str, inputs, outputs, node: onnx.NodeProto | None = None,
             options_type: str | None = None, **options):
        op = self.spec.add_operator(opcode, inputs, outputs, options_type, options,
                                    node.name if node is not None else "")
        required = builtins.builtin(opcode).int16_options if builtins.builtin(opcode) else None
        if required is not None and self.spec.op_dtype(op) == "int16":  # e.g. ADD's general-scale path
            op.options_type = required[0]
            op.options.update(required[1])
        return op

    def tensor(self, index: int):
        return self.spec.tensors[index]

    def new_value(self, name: str, dtype: str, perm=None, quant: Quantization | None = None,
                  shape=None) -> int:
        """Create and register the TFLite tensor an op writes for ONNX tensor `name`."""
        perm = tuple(perm) if perm is not None else identity(len(self.shape(name)))
        if dtype in QUANTIZED and quant is None:
            quant = self.quant(name, dtype)
        shape = shape if shape is not None else permute(self.shape(name), perm)
        tensor_name = name if name not in self.values else f"{name};{dtype};{''.join(map(str, perm))}"
        index = self.spec.add_tensor(tensor_name, shape, dtype, quant if dtype in QUANTIZED else None)
        self.values.setdefault(name, []).append(Value(index, dtype, perm))
        return index

    def alias(self, name: str, index: int, perm) -> None:
        """Register an existing tensor as a representation of `name` (Identity, no-op transposes)."""
        self.values.setdefault(name, []).append(Value(index, self.tensor(index).dtype, tuple(perm)))

    def temp(self, name: str, shape, dtype: str, quant: Quantization | None = None) -> int:
        return self.spec.add_tensor(name, shape, dtype, quant if dtype in QUANTIZED else None)

    def layout(self, name: str) -> tuple[int, ...]:
        """The layout `name` already has (the first representation made), identity for constants."""
        reps = self.values.get(name)
        return reps[0].perm if reps else identity(self.rank(name))

    def get(self, name: str, dtype: str, perm=None) -> int:
        """Index of `name` as `dtype` in layout `perm` (default: its current layout)."""
        if name in self.constants:
            return self.constant_input(name, dtype, perm)
        reps = self.values.get(name)
        if not reps:
            raise KeyError(f"tensor '{name}' used before it was lowered")
        perm = tuple(perm) if perm is not None else reps[0].perm
        for value in reps:
            if value.dtype == dtype and value.perm == perm:
                return value.index
        # int16 from float when both exist (no int8 rounding on the way), else from the first made
        source = next((v for v in reps if v.perm == perm and dtype == "int16" and v.dtype == "float32"), None) \
            or next((v for v in reps if v.perm == perm), None)
        if source is None:
            base = next((v for v in reps if v.dtype == dtype), reps[0])
            source = self._transposed(name, base, perm)
            if source.dtype == dtype:
                return source.index
        return self._converted(name, source, dtype)

    def moves_data(self, base: Value, perm) -> bool:
        """Whether laying `base` out as `perm` is a TRANSPOSE (values move), not a RESHAPE."""
        order = layouts.transpose_order(base.perm, perm)
        return not layouts.moves_only_unit_dims(list(self.tensor(base.index).shape), order)

    def _transposed(self, name: str, base: Value, perm) -> Value:
        order = layouts.transpose_order(base.perm, perm)
        out = self.new_value(name, base.dtype, perm, quant=self.tensor(base.index).quantization)
        shape = list(self.tensor(base.index).shape)
        if not self.moves_data(base, perm):
            self.emit("RESHAPE", [base.index, self.int32_constant(f"{name}/shape", [shape[o] for o in order])], [out])
        else:
            self.emit("TRANSPOSE", [base.index, self.spec.add_constant(f"{name}/perm", order)], [out])
        return self.values[name][-1]

    def _converted(self, name: str, source: Value, dtype: str) -> int:
        # the source's own shape: an Expand its readers broadcast is the unexpanded tensor (ops/logical.py)
        out = self.new_value(name, dtype, source.perm, shape=self.tensor(source.index).shape)
        if dtype in INTEGER_VALUES or source.dtype in INTEGER_VALUES:  # int64 <-> int32 indices
            self.emit("CAST", [source.index], [out])
            return out
        self.emit("QUANTIZE" if dtype in QUANTIZED else "DEQUANTIZE", [source.index], [out])
        return out

    def constant_input(self, name: str, dtype: str, perm=None, rank: int | None = None) -> int:
        """A constant as a TFLite tensor: broadcast to `rank`, laid out by `perm`, int8 if asked."""
        key = (name, dtype, tuple(perm) if perm is not None else None, rank)
        if key in self._constant_cache:
            return self._constant_cache[key]
        integer = dtype in integers.NUMPY_OF
        value = integers.integer_constant(self.constants[name], dtype) if integer else \
            np.asarray(self.constants[name], np.float32)
        if rank is not None and value.ndim < rank:
            value = value.reshape((1,) * (rank - value.ndim) + value.shape)
        if perm is not None and value.ndim == len(perm):
            value = value.transpose(perm)
        index = self.spec.add_constant(f"{name};{dtype}", value) if integer else \
            self.add_weight_constant(f"{name};{dtype}", value, dtype)
        self._constant_cache[key] = index
        return index

    def add_weight_constant(self, name: str, value: np.ndarray, dtype: str) -> int:
        """float32 constant, int8 with per-tensor asymmetric params from its own range, or int16
        symmetric (zero point 0)."""
        value = np.asarray(value, np.float32)
        if dtype == "float32":
            return self.spec.add_constant(name, value)
        if dtype == "int16":
            scale = quantmath.symmetric_scale(max(float(np.abs(value).max(initial=0.0)), DEGENERATE_RANGE), 16)
            return self.spec.add_constant(name, quantmath.quantize(value, scale, 0, bits=16),
                                          Quantization.per_tensor(scale, 0))
        scale, zero_point = quantmath.asymmetric_params(float(value.min(initial=0.0)), float(value.max(initial=0.0)))
        quantized = quantmath.quantize(value, scale, zero_point)
        return self.spec.add_constant(name, quantized, Quantization.per_tensor(scale, zero_point))

    def filter_and_bias(self, name: str, weights: np.ndarray, axis: int, bias: np.ndarray, input_index: int,
                        dtype: str) -> tuple[int, int]:
        """Filter and bias constants: per-channel symmetric int8 filter along `axis` (the output
        channel) and bias with scale input_scale x weight_scale[c], int32 (int8 data) or int64
        (int16 data, the 16x8 kernels' bias type); float32 otherwise."""
        weights = np.asarray(weights, np.float32)
        bias = np.asarray(bias, np.float32)
        if dtype == "float32":
            return (self.spec.add_constant(f"{name};filter", weights),
                    self.spec.add_constant(f"{name};bias", bias))
        input_scale = float(self.tensor(input_index).quantization.scale[0])
        # Dead channels (|w| ~ 1e-34 in real models after BN folding, all zero after a zero-init BN
        # gamma): floor their scale so the bias scale input_scale x weight_scale neither underflows
        # nor makes the int32 bias overflow. Their weights quantize to zeros either way.
        min_scales = np.maximum(np.abs(bias) / (input_scale * 2.0**30), MIN_BIAS_SCALE / input_scale)
        q_weights, weight_scales = quantmath.per_channel_symmetric(
            weights, axis, min_ratio=2.0**-20, min_scales=min_scales,
            ranges=getattr(self.calibration, "weight_ranges", "minmax"))
        filter_index = self.spec.add_constant(f"{name};filter", q_weights,
                                              Quantization.per_channel(weight_scales, axis))
        q_bias, bias_scales = quantmath.quantize_bias(bias, input_scale, weight_scales)
        if dtype == "int16":  # int64: an int16 input's finer scale would overflow an int32 bias
            q_bias = np.rint(np.asarray(bias, np.float64) / (input_scale * weight_scales.astype(np.float64)))
            q_bias = np.clip(q_bias, -(2.0**62), 2.0**62).astype(np.int64)
        bias_index = self.spec.add_constant(f"{name};bias", q_bias, Quantization.per_channel(bias_scales, 0))
        return filter_index, bias_index

    def quantized_constant(self, name: str, value, quant: Quantization | None, dtype: str) -> int:
        """A float constant expressed in the given int8 / int16 parameters (kernels needing shared params);
        as an int32 / bool constant for a node on integers (Clip / Min of an index)."""
        if dtype in integers.NUMPY_OF:
            return self.spec.add_constant(name, integers.integer_constant(value, dtype))
        value = np.asarray(value, np.float32)
        if dtype == "float32":
            return self.spec.add_constant(name, value)
        scale, zero_point = quant.as_pair()
        bits = 16 if dtype == "int16" else 8
        return self.spec.add_constant(name, quantmath.quantize(value, scale, zero_point, bits=bits), quant)

    def broadcast_input(self, name: str, dtype: str, perm, rank: int) -> int:
        """Input of a broadcasting op whose output has `rank` dims in layout `perm`."""
        if name in self.constants:
            return self.constant_input(name, dtype, perm, rank)
        if self.rank(name) == rank:
            return self.get(name, dtype, perm)
        source = self.get(name, dtype, identity(self.rank(name)))
        tensor = self.tensor(source)
        padded = [1] * (rank - len(tensor.shape)) + list(tensor.shape)
        reshaped = self.temp(f"{name};rank{rank}", padded, dtype, tensor.quantization)
        self.emit("RESHAPE", [source, self.int32_constant(f"{name};rank{rank}/shape", padded)], [reshaped])
        if tuple(perm) == identity(rank):
            return reshaped
        transposed = self.temp(f"{name};rank{rank};t", permute(padded, perm), dtype, tensor.quantization)
        if layouts.moves_only_unit_dims(padded, perm):
            self.emit("RESHAPE", [reshaped, self.int32_constant(f"{name};rank{rank};t/shape", permute(padded, perm))],
                      [transposed])
        else:
            self.emit("TRANSPOSE", [reshaped, self.int32_constant(f"{name};rank{rank}/perm", perm)], [transposed])
        return transposed

    def int32_constant(self, name: str, values) -> int:
        return self.spec.add_constant(name, np.asarray(values, np.int32))

    def requantized(self, index: int, quant: Quantization, name: str) -> int:
        """`index` re-expressed with `quant` (int8 -> int8 or int16 -> int16 QUANTIZE) if its
        parameters differ; int8 in steps XNNPACK's QUANTIZE takes (quantmath.stepped_grids)."""
        tensor = self.tensor(index)
        if tensor.dtype not in QUANTIZED or quant.same_as(tensor.quantization):
            return index
        grids = [quant.as_pair()]
        if tensor.dtype == "int8":
            grids = quantmath.stepped_grids(tensor.quantization.as_pair(), quant.as_pair(), REQUANT_RATIO)
        for step, grid in enumerate(grids, 1):
            step_quant = quant if step == len(grids) else Quantization.per_tensor(*grid)
            out = self.temp(f"{name};requant" + (f"{step}" if step < len(grids) else ""), tensor.shape,
                            tensor.dtype, step_quant)
            self.emit("QUANTIZE", [index], [out])
            index = out
        return index

    # ----- fusion ------------------------------------------------------------------------------
    def fuse_activation(self, node: onnx.NodeProto, out_name: str | None = None) -> tuple[int, str]:
        """(fused activation code, tensor name to write) for `node`'s output.

        When the only consumer is Relu / Relu6-like Clip / Clip(-1, 1) lowered in the same dtype,
        that consumer is folded in and marked consumed; the producer then writes the activation's
        output tensor, quantized with the activation's output range.
        """
        out_name = out_name or node.output[0]
        users = self.consumers.get(out_name, [])
        if out_name in self.graph_outputs or len(users) != 1:
            return ACTIVATIONS["NONE"], out_name
        user = users[0]
        kind = fusable_activation(self, user)
        if kind is None or self.node_dtype(user) != self.node_dtype(node) or user.name in self.consumed:
            return ACTIVATIONS["NONE"], out_name
        self.consumed.add(user.name)
        return ACTIVATIONS[kind], user.output[0]

    # ----- driver ------------------------------------------------------------------------------
    def run(self) -> ModelSpec:
        model_io.add_inputs(self)
        for node in integers.emission_order(self, QUANTIZED):
            if node.op_type == "Constant" or node.name in self.consumed:
                continue
            reason = self.unsupported_reason(node)
            if reason:
                raise UnsupportedOpError(node.name, support.qualified(node.domain, node.op_type), self.target, reason)
            entry = self.lowering_for(node)
            dtype = self.node_dtype(node)
            if self.quantized and dtype == "float32":
                self.float_lowered.append(node.name)
            elif dtype == "int16":
                self.int16_lowered.append(node.name)
            elif self.wants_int16(node):
                self.int16_fallback.append(node.name)
            entry.lower(self, node)
        model_io.add_outputs(self)
        return self.spec

    def io_perm(self, name: str) -> tuple[int, ...]:
        return model_io.io_perm(self, name)

    def io_dtype(self) -> str:
        return "int8" if self.quantized and self.int8_io else "float32"
