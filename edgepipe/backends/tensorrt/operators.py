"""ONNX operators TensorRT's ONNX parser (TensorRT 10) imports, keyed like every other backend.

Source: onnx-tensorrt `docs/operators.md` (TensorRT 10.x). What is listed there builds an engine;
what is not (integer-arithmetic ops such as ConvInteger or QLinearConv, sequences, optionals,
string and signal ops, Unique) fails in the parser on the device, long after the bundle was
made, so the targets refuse it at build time. Control flow (If / Loop / Scan) is imported (ILoop,
IIfConditional): the main graph is calibrated and quantized, the subgraphs stay float (FP16 on
the device), and the parser's restrictions on them are checked in control_flow.py.
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
        "HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If InstanceNormalization IsInf "
        "IsNaN LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max "
        "MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not "
        "OneHot Or PRelu Pad Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform "
        "RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
        "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize "
        "ReverseSequence RoiAlign Round Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin "
        "Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh "
        "ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor".split(),
        1,
    ),
    "Scan": 9,  # Scan-8 (batch axis, sequence_lens) predates the parser's opset range
    "LayerNormalization": 17,
    "GroupNormalization": 18,
    "Gelu": 20,
}


def tensorrt_operators() -> OpTable[str]:
    table: OpTable[str] = OpTable("TensorRT ONNX-parser support")
    for op_type, since in PARSER_OPS.items():
        table.add(OpKey("", op_type, since), op_type)
    return table
