"""16x8 lowering (int16 activations, int8 weights) in the real LiteRT interpreter against ONNX Runtime.

Every op family that registers `int16=True` is built with `activations: int16` on a one-node
graph, run under every resolver (XNNPACK default: the int16 ops stay on the builtin kernels;
without delegates; reference kernels), and compared with ONNX Runtime FP32 on the same model
with its weights rounded to per-channel int8 (the only int8 left in 16x8). The tolerance is a
few steps of the output's int16 grid, derived from the calibration (observed |x| max / 32767) or the
kernel's fixed grid (1/32768), never read from the file; the int8 build of the same graph must
be at least 8x further off (where int8 lowers the node int8 at all), so a node silently left
int8 would fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import build_tflite, validator
from edgepipe.backends.tflite.build import lower_model
from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import fake_quantized_weights, make_model, minmax_calibration, run_onnx, structured_inputs

RNG = np.random.default_rng(16)
W = (RNG.normal(size=(4, 4, 3, 3)) * 0.4).astype(np.float32)
IMAGE = {"x": [1, 4, 6, 6]}
PAIR = {"x": [1, 4, 6, 6], "x2": [1, 4, 6, 6]}
FIXED_GRID = 1.0 / 32768  # LOGISTIC / TANH / SOFTMAX int16 outputs

# case -> (nodes as (op, inputs, attrs), input shapes, initializers, the opcode that must run int16)
CASES = {
    "conv": ([("Conv", ["x", "w"], {"pads": [1, 1, 1, 1]})], IMAGE, {"w": W}, "CONV_2D"),
    "conv_relu": ([("Conv", ["x", "w"], {"pads": [1, 1, 1, 1]}, "c"), ("Relu", ["c"], {})], IMAGE, {"w": W},
                  "CONV_2D"),
    "depthwise": ([("Conv", ["x", "w"], {"group": 4, "strides": [2, 2]})], IMAGE, {"w": W[:, :1]},
                  "DEPTHWISE_CONV_2D"),
    "gemm_relu": ([("Gemm", ["x", "w", "b"], {"transB": 1}, "g"), ("Relu", ["g"], {})], {"x": [2, 8]},
                  {"w": (RNG.normal(size=(5, 8)) * 0.3).astype(np.float32), "b": np.full(5, 0.1, np.float32)},
                  "FULLY_CONNECTED"),
    "batch_matmul": ([("MatMul", ["x", "x2"], {})], {"x": [1, 3, 4], "x2": [1, 4, 5]}, {}, "BATCH_MATMUL"),
    "add": ([("Add", ["x", "x2"], {})], PAIR, {}, "ADD"),
    "add_constant": ([("Add", ["x", "c"], {})], IMAGE, {"c": np.linspace(-1, 1, 4, dtype=np.float32).reshape(4, 1, 1)},
                     "ADD"),
    "sub": ([("Sub", ["x", "x2"], {})], PAIR, {}, "SUB"),
    "mul": ([("Mul", ["x", "x2"], {})], PAIR, {}, "MUL"),
    "div_constant": ([("Div", ["x", "c"], {})], IMAGE, {"c": np.float32(4.0)}, "MUL"),
    "max": ([("Max", ["x", "x2"], {})], PAIR, {}, "MAXIMUM"),
    "min": ([("Min", ["x", "x2"], {})], PAIR, {}, "MINIMUM"),
    "sigmoid": ([("Sigmoid", ["x"], {})], IMAGE, {}, "LOGISTIC"),
    "tanh": ([("Tanh", ["x"], {})], IMAGE, {}, "TANH"),
    "softmax": ([("Softmax", ["x"], {"axis": -1})], {"x": [2, 10]}, {}, "SOFTMAX"),
    "leaky_relu": ([("LeakyRelu", ["x"], {"alpha": 0.1})], IMAGE, {}, "LEAKY_RELU"),
    "relu": ([("Relu", ["x"], {})], IMAGE, {}, "RELU"),
    "relu6": ([("Clip", ["x", "lo", "hi"], {})], IMAGE, {"lo": np.float32(0), "hi": np.float32(6)}, "RELU6"),
    "clip": ([("Clip", ["x", "lo", "hi"], {})], IMAGE, {"lo": np.float32(-0.5), "hi": np.float32(0.7)}, "MINIMUM"),
    "global_average": ([("GlobalAveragePool", ["x"], {})], IMAGE, {}, "MEAN"),
    "global_max": ([("GlobalMaxPool", ["x"], {})], IMAGE, {}, "REDUCE_MAX"),
    "max_pool": ([("MaxPool", ["x"], {"kernel_shape": [2, 2], "strides": [2, 2]})], IMAGE, {}, "MAX_POOL_2D"),
    "max_pool_padded": ([("MaxPool", ["x"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]})],
                        IMAGE, {}, "PADV2"),
    "average_pool": ([("AveragePool", ["x"], {"kernel_shape": [2, 2], "strides": [2, 2]})], IMAGE, {},
                     "AVERAGE_POOL_2D"),
    "average_pool_same": ([("AveragePool", ["x"], {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"})], IMAGE, {},
                          "AVERAGE_POOL_2D"),
    "reduce_mean": ([("ReduceMean", ["x"], {"axes": [2], "keepdims": 1})], {"x": [1, 4, 6]}, {}, "MEAN"),
    "reduce_max": ([("ReduceMax", ["x"], {"axes": [1], "keepdims": 0})], {"x": [1, 4, 6]}, {}, "REDUCE_MAX"),
    "concat": ([("Concat", ["x", "x2"], {"axis": 1})], PAIR, {}, "CONCATENATION"),
    "reshape": ([("Reshape", ["x", "shape"], {})], {"x": [1, 4, 6]}, {"shape": np.array([1, 24], np.int64)},
                "RESHAPE"),
    "transpose_flatten": ([("Relu", ["x"], {}, "r"), ("Transpose", ["r"], {"perm": [0, 2, 1]}, "t"),
                           ("Flatten", ["t"], {})], {"x": [1, 4, 6]}, {}, "TRANSPOSE"),
    "pad": ([("Pad", ["x", "pads"], {})], IMAGE, {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, "PAD"),
    "pad_value": ([("Pad", ["x", "pads", "v"], {})], IMAGE,
                  {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64), "v": np.float32(0.5)}, "PAD"),
    "hard_sigmoid": ([("HardSigmoid", ["x"], {"alpha": 0.2, "beta": 0.5})], IMAGE, {}, "MINIMUM"),
    "hard_swish": ([("HardSwish", ["x"], {})], IMAGE, {}, "MUL"),
    "square": ([("Pow", ["x", "two"], {})], IMAGE, {"two": np.float32(2.0)}, "MUL"),
    "slice": ([("Slice", ["x", "starts", "ends", "axes"], {})], IMAGE,
              {"starts": np.array([1], np.int64), "ends": np.array([5], np.int64), "axes": np.array([3], np.int64)},
              "SLICE"),
    "strided_slice": ([("Slice", ["x", "starts", "ends", "axes", "steps"], {})], IMAGE,
                      {"starts": np.array([5], np.int64), "ends": np.array([-100], np.int64),
                       "axes": np.array([2], np.int64), "steps": np.array([-2], np.int64)}, "STRIDED_SLICE"),
    "step_slice": ([("Slice", ["x", "starts", "ends", "axes", "steps"], {})], IMAGE,  # ops/strided_slice.py
                   {"starts": np.array([0], np.int64), "ends": np.array([6], np.int64),
                    "axes": np.array([2], np.int64), "steps": np.array([2], np.int64)}, "SLICE"),
    "conv_transpose": ([("ConvTranspose", ["x", "w"], {"strides": [2, 2]})], IMAGE, {"w": W[:, :2, :2, :2]},
                       "TRANSPOSE_CONV"),
    "resize_bilinear": ([("Resize", ["x", "", "s"], {"mode": "linear"})], IMAGE,
                        {"s": np.array([1, 1, 2, 2], np.float32)}, "RESIZE_BILINEAR"),
    "resize_nearest": ([("Resize", ["x", "", "s"], {"mode": "nearest"})], IMAGE,
                       {"s": np.array([1, 1, 1.5, 1.5], np.float32)}, "RESIZE_NEAREST_NEIGHBOR"),
    "upsample_repeat": ([("Resize", ["x", "", "s"], {"mode": "nearest"})], IMAGE,
                        {"s": np.array([1, 1, 2, 2], np.float32)}, "CONCATENATION"),
    "batch_norm": ([("BatchNormalization", ["x", "g", "b", "m", "v"], {})], IMAGE,
                   {"g": np.array([1.0, 0.5, 2.0, 1.5], np.float32), "b": np.array([0.1, -0.2, 0.0, 0.3], np.float32),
                    "m": np.array([0.0, 0.1, -0.1, 0.2], np.float32), "v": np.array([1.0, 0.5, 2.0, 1.0], np.float32)},
                   "DEPTHWISE_CONV_2D"),
}
# int16 steps of the output grid allowed: rounding of the int16 input and output, plus the
# kernels' fixed-point multipliers; ops that sum many rounded inputs or have int8 weights that
# the reference does not round (BatchNormalization) get more
STEPS = {"batch_norm": None, "softmax": 8, "tanh": 8, "sigmoid": 8}


def _model(case: str):
    nodes, shapes, initializers, _ = CASES[case]
    made = []
    for position, spec in enumerate(nodes):
        op_type, inputs, attrs = spec[:3]
        output = spec[3] if len(spec) > 3 else "y"
        made.append(helper.make_node(op_type, inputs, [output], name="op" if position == 0 else f"op{position}",
                                     **attrs))
    return make_model(made, shapes, ["y"], initializers, opset=17)


def _output_grid(model, calibration, case: str) -> float:
    if CASES[case][3] in ("LOGISTIC", "TANH", "SOFTMAX"):
        return FIXED_GRID
    tensor = calibration.tensors["y"]
    return max(abs(tensor.min), abs(tensor.max)) / 32767


@pytest.mark.parametrize("case", sorted(CASES))
def test_int16_op_matches_onnx_runtime(case, tmp_path):
    model = _model(case)
    feeds = structured_inputs(model, 6, seed=3)
    calibration = minmax_calibration(model, feeds)
    built8 = build_tflite(model, calibration, tmp_path / "int8", {})
    built16 = build_tflite(model, calibration, tmp_path / "int16", {"activations": "int16"})
    assert "op" in built16["int16_nodes"] and not built16["int16_fallback"]
    assert CASES[case][3] in built16["kernels"]["int16"], built16["kernels"]
    reference_model = fake_quantized_weights(model)
    grid = _output_grid(model, calibration, case)
    for resolver in ("xnnpack", "no_delegates", "reference"):
        for feed in feeds[:3]:
            want = run_onnx(reference_model, feed)["y"]
            got16 = run_tflite(tmp_path / "int16" / "model.tflite", built16["io"], feed, resolver)["y"]
            got8 = run_tflite(tmp_path / "int8" / "model.tflite", built8["io"], feed, resolver)["y"]
            error16 = float(np.max(np.abs(got16 - want)))
            error8 = float(np.max(np.abs(got8 - run_onnx(model, feed)["y"])))
            steps = STEPS.get(case, 4)
            if steps is not None:
                assert error16 <= steps * grid + 1e-7, (resolver, error16 / grid)
            if "op" not in built8["float_nodes"]:  # int8 keeps SAME averages and Softmax float (XNNPACK)
                assert error16 * 8 < error8, (resolver, error16, error8)


def test_int16_nodes_by_name_convert_at_the_borders(tmp_path):
    """Only the named node runs 16x8; QUANTIZE int8 -> int16 before it, int16 -> int8 after it."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="first", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["a"], ["b"], name="middle"),
             helper.make_node("Conv", ["b", "w"], ["y"], name="last", pads=[1, 1, 1, 1])]
    model = make_model(nodes, IMAGE, ["y"], {"w": W}, opset=17)
    feeds = structured_inputs(model, 6, seed=4)
    calibration = minmax_calibration(model, feeds)
    ctx = lower_model(model, calibration, {"int16_nodes": {"middle"}}, quantized=True)
    dtypes = {op.opcode: [ctx.spec.tensors[i].dtype for i in op.outputs] for op in ctx.spec.operators
              if op.opcode != "QUANTIZE"}
    assert dtypes["LOGISTIC"] == ["int16"] and ctx.int16_lowered == ["middle"]
    assert all(ctx.spec.tensors[op.outputs[0]].dtype == "int8" for op in ctx.spec.operators if op.opcode == "CONV_2D")
    conversions = [(ctx.spec.tensors[op.inputs[0]].dtype, ctx.spec.tensors[op.outputs[0]].dtype)
                   for op in ctx.spec.operators if op.opcode == "QUANTIZE"]
    assert ("int8", "int16") in conversions and ("int16", "int8") in conversions
    built = build_tflite(model, calibration, tmp_path, {"int16_nodes": {"middle"}})
    for feed in feeds[:2]:
        got = run_tflite(tmp_path / "model.tflite", built["io"], feed)["y"]
        want = run_onnx(model, feed)["y"]
        assert float(np.max(np.abs(got - want))) < 0.05 * float(np.max(np.abs(want)))


def test_int16_node_without_kernel_stays_int8(tmp_path):
    """DepthToSpace has no int16 lowering: asked for 16x8 it is lowered int8 and reported."""
    model = make_model([helper.make_node("DepthToSpace", ["x"], ["y"], name="op", blocksize=2)], {"x": [1, 4, 6, 6]},
                       ["y"], opset=17)
    calibration = minmax_calibration(model, structured_inputs(model, 4))
    result = build_tflite(model, calibration, tmp_path, {"int16_nodes": {"op"}})
    assert result["int16_fallback"] == ["op"] and result["int16_nodes"] == []
    assert "int16" not in result["kernels"]


def test_validator_rules_for_int16(tmp_path):
    """The validator refuses 16x8 models that break a kernel rule: int32 bias, a zero point,
    ADD on the power-of-two path, a fixed output grid, an opcode without an int16 kernel."""
    model = _model("conv")
    calibration = minmax_calibration(model, structured_inputs(model, 4))
    ctx = lower_model(model, calibration, {"activations": "int16"}, quantized=True)
    validator.validate(ctx.spec)
    conv = next(op for op in ctx.spec.operators if op.opcode == "CONV_2D")
    bias = ctx.spec.tensors[conv.inputs[2]]
    assert bias.dtype == "int64"
    values = ctx.spec.constant_value(conv.inputs[2])
    bias.dtype, ctx.spec.buffers[bias.buffer] = "int32", values.astype(np.int32).tobytes()
    assert "bias" in {p.rule for p in validator.find_problems(ctx.spec)}
    bias.dtype, ctx.spec.buffers[bias.buffer] = "int64", values.tobytes()
    output = ctx.spec.tensors[conv.outputs[0]]
    output.quantization.zero_point[:] = 3
    assert "quant-zero-point" in {p.rule for p in validator.find_problems(ctx.spec)}

    add = lower_model(_model("add"), minmax_calibration(_model("add"), structured_inputs(_model("add"), 4)),
                      {"activations": "int16"}, quantized=True)
    op = next(op for op in add.spec.operators if op.opcode == "ADD")
    assert op.options["PotScaleInt16"] is False
    op.options["PotScaleInt16"] = True
    assert "options" in {p.rule for p in validator.find_problems(add.spec)}
    op.opcode = "SQUARED_DIFFERENCE"  # no int16 kernel in builtins.py
    assert "int16-kernel" in {p.rule for p in validator.find_problems(add.spec)}

    sigmoid = _model("sigmoid")
    ctx = lower_model(sigmoid, minmax_calibration(sigmoid, structured_inputs(sigmoid, 4)), {"activations": "int16"},
                      quantized=True)
    op = next(op for op in ctx.spec.operators if op.opcode == "LOGISTIC")
    ctx.spec.tensors[op.outputs[0]].quantization.scale[:] = 1.0 / 256
    assert "fixed-output" in {p.rule for p in validator.find_problems(ctx.spec)}


def test_every_int16_row_of_the_builtin_table_is_run_here():
    """Each builtin with an `int16` version in builtins.py is emitted as a 16x8 kernel by a case
    above (so its version registered and its kernel ran in LiteRT), and nothing else is."""
    from edgepipe.backends.tflite.builtins import BUILTINS
    from edgepipe.backends.tflite.delegation import kernel_histogram

    emitted = set()
    for case in CASES:
        model = _model(case)
        ctx = lower_model(model, minmax_calibration(model, structured_inputs(model, 2)), {"activations": "int16"},
                          quantized=True)
        emitted |= set(kernel_histogram(ctx.spec).get("int16", {}))
    assert emitted == {name for name, row in BUILTINS.items() if row.int16 is not None}
