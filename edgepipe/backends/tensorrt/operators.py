"""ONNX operators TensorRT's ONNX parser (TensorRT 10) imports, keyed like every other backend.

Source: onnx-tensorrt `docs/operators.md` (TensorRT 10.x). What is listed there builds an engine;
what is not (integer-arithmetic ops such as ConvInteger or QLinearConv, sequences, optionals,
string and signal ops, Unique) fails in the parser on the device, long after the bundle was
made, so the targets refuse it at build time. Control flow (If / Loop / Scan) is imported by
TensorRT but refused here like on every target: calibration and Q/DQ placement see one flat
graph (edgepipe/backends/support.py).
"""

from __future__ import annotations

from edgepipe.backends.support import OpKey, OpTable

# op type -> first ONNX opset in which TensorRT's parser takes it (1: every opset that defines it)
PARSER_OPS = {
    **dict.fromkeys(
        "Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool "
        "BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Compress Concat Constant "
        "ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear "
        "Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements "
        "GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample "
        "HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity InstanceNormalization IsInf "
        "IsNaN LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LpPool MatMul Max "
        "MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not "
        "OneHot Or PRelu Pad Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform "
        "RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
        "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize "
        "ReverseSequence RoiAlign Round Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin "
        "Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh "
        "ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor".split(),
        1,
    ),
    "LayerNormalization": 17,
    "GroupNormalization": 18,
    "Gelu": 20,
}


def tensorrt_operators() -> OpTable[str]:
    table: OpTable[str] = OpTable("TensorRT ONNX-parser support")
    for op_type, since in PARSER_OPS.items():
        table.add(OpKey("", op_type, since), op_type)
    return table
