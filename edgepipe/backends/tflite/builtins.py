"""What the project knows about each TFLite builtin it emits, in one table.

The writer takes the version from here, the validator its int8 rules, the op lowerings the fixed
output parameters of LOGISTIC / TANH / SOFTMAX / LOG_SOFTMAX, and delegation checks whether
XNNPACK takes the int8 kernel. Emitting a new builtin therefore means one new row here (the
validator rejects any opcode without one) next to the op module that emits it.

Facts measured with LiteRT 2.3 (ai-edge-litert) and read from the kernels' Prepare() functions:
- `version`: the version the TFLite converter writes for the float32 and int8 kernels (version 0
  does not register; a version LiteRT does not register fails at load time).
- `fixed_output`: (scale, zero point) the int8 kernel assumes for its output whatever the file
  says (LOGISTIC 1/256 -128, TANH 1/128 0, SOFTMAX 1/256 -128, LOG_SOFTMAX 16/256 127).
- `same_quant`: the int8 kernel moves or compares integers without requantizing, so the output
  and the data inputs (`data_inputs`, None = all) must share scale and zero point.
- `weights`: (filter, bias, data) input slots and the filter's per-channel quantized dimension.
- `int16`: the version of the 16x8 kernel (int16 activations, int8 weights; LiteRT's own op
  versioning, tensorflow/lite/tools/versioning/op_version.cc), None when the project never emits
  it in int16. int16 activations are symmetric (zero point 0) everywhere; conv / FC biases are
  int64. XNNPACK takes no int16 kernel: every 16x8 op runs on LiteRT's builtin kernels.
- `int16_options`: (options table, {field: value}) the int16 kernel needs: ADD / SUB read general
  (not power-of-two) scales only with `pot_scale_int16` false, and the schema's default is true.
- `int16_fixed_output`: the int16 counterpart of `fixed_output` (LOGISTIC / TANH / SOFTMAX write
  1/32768, zero point 0).
- `xnnpack_int8`: True when LiteRT's default XNNPACK delegate takes the int8 kernel as our
  lowerings emit it, False when it falls back to a builtin kernel (correct, slower, splits the
  delegated graph), None when not measured or never emitted in int8. `xnnpack_fp32` the same for
  the float32 kernel (float models and float islands). tests/test_tflite_builtins.py measures
  every True/False value on a one-op model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Weights:
    filter: int
    bias: int
    data: int
    channel_axis: int  # quantized_dimension of a per-channel filter
    bias_required: bool = False  # int8 kernel dereferences the bias


@dataclass(frozen=True)
class Builtin:
    name: str
    version: int
    options_required: bool = False  # Prepare() dereferences the options table
    fixed_output: tuple[float, int] | None = None
    same_quant: bool = False
    data_inputs: tuple[int, ...] | None = (0,)
    weights: Weights | None = None
    xnnpack_fp32: bool | None = None
    xnnpack_int8: bool | None = None
    int16: int | None = None
    int16_fixed_output: tuple[float, int] | None = None
    int16_options: tuple[str, dict] | None = None

    def version_for(self, dtype: str) -> int:
        """The version a kernel with `dtype` activations needs (higher versions keep the lower ones)."""
        return max(self.version, self.int16) if dtype == "int16" and self.int16 is not None else self.version


INT16_UNIT = (1.0 / 32768, 0)  # output grid of the int16 LOGISTIC / TANH / SOFTMAX kernels
GENERAL_SCALES_ADD = ("AddOptions", {"PotScaleInt16": False})
GENERAL_SCALES_SUB = ("SubOptions", {"PotScaleInt16": False})


def _table(*rows: Builtin) -> dict[str, Builtin]:
    return {row.name: row for row in rows}


BUILTINS = _table(
    # conversions
    Builtin("QUANTIZE", 1, int16=2),
    Builtin("DEQUANTIZE", 2, int16=3),
    Builtin("CAST", 1),
    # weighted ops
    Builtin("CONV_2D", 3, True, weights=Weights(1, 2, 0, 0, bias_required=True), xnnpack_fp32=True, xnnpack_int8=True,
            int16=4),
    Builtin("DEPTHWISE_CONV_2D", 3, True, weights=Weights(1, 2, 0, 3, bias_required=True), xnnpack_fp32=True,
            xnnpack_int8=True, int16=5),
    Builtin("TRANSPOSE_CONV", 3, True, weights=Weights(1, 3, 2, 0), int16=3),
    Builtin("FULLY_CONNECTED", 4, True, weights=Weights(1, 2, 0, 0), xnnpack_fp32=True, xnnpack_int8=True, int16=7),
    # int8: only with a zero point 0 B (ops/linear.py)
    Builtin("BATCH_MATMUL", 4, xnnpack_fp32=True, xnnpack_int8=True, int16=3),
    # elementwise
    # int8 ADD: XNNPACK refuses it when an input/output scale ratio is < 2**-10
    Builtin("ADD", 2, xnnpack_fp32=True, xnnpack_int8=True, int16=3, int16_options=GENERAL_SCALES_ADD),
    Builtin("SUB", 2, xnnpack_fp32=True, xnnpack_int8=True, int16=5, int16_options=GENERAL_SCALES_SUB),
    Builtin("MUL", 2, xnnpack_fp32=True, xnnpack_int8=True, int16=4),
    Builtin("DIV", 1),
    Builtin("MAXIMUM", 2, same_quant=True, data_inputs=(0, 1), xnnpack_fp32=True, xnnpack_int8=False, int16=4),
    Builtin("MINIMUM", 2, same_quant=True, data_inputs=(0, 1), xnnpack_fp32=True, xnnpack_int8=False, int16=4),
    Builtin("POW", 1, xnnpack_fp32=False),  # LRN with a beta that is no multiple of 1/4 (ops/lrn.py)
    Builtin("SQRT", 1, xnnpack_fp32=True),
    # int8 RSQRT / SQRT / SQUARED_DIFFERENCE / DIV are not delegated (LiteRT 2.3; never emitted in int8:
    # LayerNorm is a float island, tests/test_tflite_layer_norm_int8.py)
    Builtin("RSQRT", 2, xnnpack_fp32=True),
    Builtin("SQUARED_DIFFERENCE", 2),
    Builtin("EXP", 2, xnnpack_fp32=True, xnnpack_int8=False),
    Builtin("LOG", 1),
    Builtin("ABS", 2),
    Builtin("NEG", 1),
    # float islands only (ops/unary.py, ops/trigonometry.py); LiteRT's ATAN2 and SIGN are not delegated
    Builtin("FLOOR", 1, xnnpack_fp32=True),
    Builtin("SIN", 1, xnnpack_fp32=True),
    Builtin("COS", 1, xnnpack_fp32=True),
    # reductions and pooling
    Builtin("MEAN", 2, True, xnnpack_fp32=True, xnnpack_int8=True, int16=3),
    Builtin("SUM", 1, True),
    Builtin("REDUCE_MAX", 2, True, same_quant=True, xnnpack_fp32=True, xnnpack_int8=True, int16=3),
    Builtin("REDUCE_MIN", 2, True, same_quant=True),
    # int8 AVERAGE_POOL_2D is not delegated (LiteRT 2.3): VALID is a depthwise conv, SAME a float island
    Builtin("AVERAGE_POOL_2D", 2, True, same_quant=True, xnnpack_fp32=True, int16=3),
    Builtin("MAX_POOL_2D", 2, True, same_quant=True, xnnpack_fp32=True, xnnpack_int8=True, int16=3),
    # activations
    # int8 SOFTMAX is not delegated (LiteRT 2.3): int8 models compute Softmax in float inside the delegate
    Builtin("SOFTMAX", 2, True, fixed_output=(1.0 / 256, -128), xnnpack_fp32=True, int16=3,
            int16_fixed_output=INT16_UNIT),
    Builtin("LOG_SOFTMAX", 2, fixed_output=(16.0 / 256, 127)),
    Builtin("LOGISTIC", 2, fixed_output=(1.0 / 256, -128), xnnpack_fp32=True, xnnpack_int8=True, int16=3,
            int16_fixed_output=INT16_UNIT),
    Builtin("TANH", 2, fixed_output=(1.0 / 128, 0), xnnpack_fp32=True, xnnpack_int8=True, int16=3,
            int16_fixed_output=INT16_UNIT),
    Builtin("RELU", 2, int16=3), Builtin("RELU6", 2, int16=3), Builtin("RELU_N1_TO_1", 2), Builtin("RELU_0_TO_1", 1),
    Builtin("HARD_SWISH", 1),
    Builtin("LEAKY_RELU", 2, True, xnnpack_fp32=True, xnnpack_int8=True, int16=2),
    # int8 PRELU is not delegated (LiteRT 2.3; benchmarks/xnnpack_op_speed.py's PRELU int8 row): int8
    # models compute PRelu in float inside the delegate (ops/activations.py)
    Builtin("PRELU", 1, xnnpack_fp32=True),
    # int8 GELU is not delegated (LiteRT 2.3): int8 models compute Gelu in float inside the delegate
    Builtin("GELU", 1, True, xnnpack_fp32=True),
    # data movement
    Builtin("CONCATENATION", 2, True, same_quant=True, data_inputs=None, xnnpack_fp32=True, xnnpack_int8=True,
            int16=3),
    Builtin("RESHAPE", 1, same_quant=True, xnnpack_fp32=True, xnnpack_int8=True, int16=1),
    Builtin("TRANSPOSE", 2, same_quant=True, int16=5),
    Builtin("SQUEEZE", 1, same_quant=True),
    Builtin("EXPAND_DIMS", 1, same_quant=True),
    Builtin("PAD", 2, same_quant=True, xnnpack_fp32=True, xnnpack_int8=True, int16=3),
    Builtin("PADV2", 2, same_quant=True, int16=3),
    Builtin("MIRROR_PAD", 2, same_quant=True),
    Builtin("SPLIT", 2, True, same_quant=True, data_inputs=(1,), xnnpack_fp32=True, xnnpack_int8=True),
    Builtin("SPLIT_V", 2, same_quant=True),  # not delegated: unequal splits are SLICEs (ops/indexing.py)
    Builtin("SLICE", 2, same_quant=True, xnnpack_fp32=True, xnnpack_int8=True, int16=4),
    Builtin("STRIDED_SLICE", 2, same_quant=True, int16=2),  # int16 kernel, no version of its own
    Builtin("GATHER", 2, same_quant=True, xnnpack_fp32=False, xnnpack_int8=False),
    # GatherElements (ops/gather_elements.py): coordinates built in int32 (FLOOR_MOD, CONCATENATION)
    Builtin("GATHER_ND", 1, same_quant=True, xnnpack_fp32=False, xnnpack_int8=False),
    Builtin("FLOOR_MOD", 1),
    Builtin("ONE_HOT", 1),  # int8 output on its own grid: the on / off values are constants written on it
    Builtin("DEPTH_TO_SPACE", 1, same_quant=True),
    Builtin("SPACE_TO_DEPTH", 2, same_quant=True),
    Builtin("RESIZE_BILINEAR", 2, same_quant=True, xnnpack_fp32=True, xnnpack_int8=True, int16=4),
    Builtin("RESIZE_NEAREST_NEIGHBOR", 2, same_quant=True, xnnpack_fp32=False, xnnpack_int8=False, int16=4),
    Builtin("BROADCAST_TO", 2, same_quant=True),
    Builtin("TILE", 2, same_quant=True),  # int8 kernel: version 2 (ops/shape.py)
    # masks and comparisons (ops/logical.py): int32 / float32 operands, bool results
    Builtin("EQUAL", 1),
    Builtin("NOT_EQUAL", 1),
    Builtin("LESS", 1),
    Builtin("LESS_EQUAL", 1),
    Builtin("GREATER", 1),
    Builtin("GREATER_EQUAL", 1),
    Builtin("LOGICAL_NOT", 1),
    Builtin("LOGICAL_AND", 1),
    Builtin("LOGICAL_OR", 1),
    Builtin("SELECT_V2", 1),
    Builtin("CUMSUM", 1),  # int32 only (ops/cumsum.py: float sums are delegated weight matrices)
    # selection (ops/selection.py): integer indices out, builtin kernels; TOPK_V2's values keep the
    # input's quantization
    Builtin("ARG_MAX", 2, True),
    Builtin("ARG_MIN", 2, True),
    Builtin("TOPK_V2", 2, same_quant=True),
)


def builtin(opcode: str) -> Builtin | None:
    return BUILTINS.get(opcode)


def fixed_output(opcode: str, dtype: str = "int8") -> tuple[float, int]:
    """(scale, zero point) the int8 (or int16) kernel of `opcode` assumes for its output."""
    row = BUILTINS[opcode]
    params = row.int16_fixed_output if dtype == "int16" else row.fixed_output
    if params is None:
        raise KeyError(f"{opcode} has no fixed {dtype} output parameters")
    return params
