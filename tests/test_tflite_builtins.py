"""The table of TFLite builtins (edgepipe/backends/tflite/builtins.py) against the real interpreter:
every version registers in LiteRT, and every xnnpack_int8 / xnnpack_fp32 True/False value holds on a
one-op model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import ops
from edgepipe.backends.tflite.builtins import BUILTINS, fixed_output
from edgepipe.backends.tflite.validator import FIXED_OUTPUT
from tests.tflite_harness import convert, delegate_partitions, make_model

RNG = np.random.default_rng(31)
CONV_W = RNG.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.4
IMAGE = {"x": [1, 4, 6, 6]}
PAIR = {"x": [1, 4, 6, 6], "x2": [1, 4, 6, 6]}
SCALE2 = {"s": np.array([1, 1, 2, 2], np.float32)}

# builtin -> (one ONNX node that lowers to it in int8, inputs, initializers)
ONE_OP_MODELS = {
    "CONV_2D": (("Conv", ["x", "w"], {"pads": [1, 1, 1, 1]}), IMAGE, {"w": CONV_W}),
    "DEPTHWISE_CONV_2D": (("Conv", ["x", "w"], {"group": 4, "pads": [1, 1, 1, 1]}), IMAGE, {"w": CONV_W[:, :1]}),
    "FULLY_CONNECTED": (("Gemm", ["x", "w"], {"transB": 1}), {"x": [2, 8]},
                        {"w": RNG.normal(size=(3, 8)).astype(np.float32)}),
    "BATCH_MATMUL": (("MatMul", ["x", "x2"], {}), {"x": [1, 3, 4], "x2": [1, 4, 5]}, {}),
    "ADD": (("Add", ["x", "x2"], {}), PAIR, {}),
    "SUB": (("Sub", ["x", "x2"], {}), PAIR, {}),
    "MUL": (("Mul", ["x", "x2"], {}), PAIR, {}),
    "MINIMUM": (("Min", ["x", "x2"], {}), PAIR, {}),
    "MAXIMUM": (("Max", ["x", "x2"], {}), PAIR, {}),
    "EXP": (("Exp", ["x"], {}), IMAGE, {}),
    "FLOOR": (("Floor", ["x"], {}), IMAGE, {}),
    "SIN": (("Sin", ["x"], {}), IMAGE, {}),
    "COS": (("Cos", ["x"], {}), IMAGE, {}),
    # the float island's one RSQRT (per-row inverse standard deviation)
    "RSQRT": (("LayerNormalization", ["x", "gamma", "beta"], {"axis": -1}), {"x": [1, 5, 8]},
              {"gamma": RNG.uniform(0.5, 1.5, 8).astype(np.float32), "beta": RNG.normal(size=8).astype(np.float32)}),
    # LRN's t^-0.75 is RSQRT(t) * SQRT(RSQRT(t)); another beta is one POW (ops/lrn.py)
    "SQRT": (("LRN", ["x"], {"size": 3}), IMAGE, {}),
    "POW": (("LRN", ["x"], {"size": 3, "beta": 0.6}), IMAGE, {}),
    "MEAN": (("GlobalAveragePool", ["x"], {}), IMAGE, {}),
    "REDUCE_MAX": (("GlobalMaxPool", ["x"], {}), IMAGE, {}),
    "AVERAGE_POOL_2D": (("AveragePool", ["x"], {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"}), IMAGE, {}),
    "MAX_POOL_2D": (("MaxPool", ["x"], {"kernel_shape": [2, 2], "strides": [2, 2]}), IMAGE, {}),
    "SOFTMAX": (("Softmax", ["x"], {}), {"x": [2, 10]}, {}),
    "LOGISTIC": (("Sigmoid", ["x"], {}), IMAGE, {}),
    "TANH": (("Tanh", ["x"], {}), IMAGE, {}),
    "LEAKY_RELU": (("LeakyRelu", ["x"], {"alpha": 0.1}), IMAGE, {}),
    # a slope varying along H: per-channel slopes are depthwise convs and an ADD (ops/activations.py)
    "PRELU": (("PRelu", ["x", "slope"], {}), IMAGE, {"slope": RNG.uniform(0.1, 0.5, (4, 6, 1)).astype(np.float32)}),
    "GELU": (("Gelu", ["x"], {}), IMAGE, {}),
    "CONCATENATION": (("Concat", ["x", "x2"], {"axis": 1}), PAIR, {}),
    "SPLIT": (("Split", ["x"], {"axis": 1, "num_outputs": 2}), IMAGE, {}),
    "SLICE": (("Slice", ["x", "starts", "ends", "axes"], {}), IMAGE,
              {"starts": np.array([1], np.int64), "ends": np.array([3], np.int64), "axes": np.array([1], np.int64)}),
    "GATHER": (("Gather", ["x", "indices"], {"axis": 1}), IMAGE, {"indices": np.array([2, 0], np.int64)}),
    "GATHER_ND": (("GatherElements", ["x", "indices"], {"axis": 1}), IMAGE,
                  {"indices": RNG.integers(0, 4, (1, 2, 6, 6)).astype(np.int64)}),
    "RESHAPE": (("Reshape", ["x", "shape"], {}), {"x": [1, 4, 6]}, {"shape": np.array([1, 24], np.int64)}),
    "PAD": (("Pad", ["x", "pads"], {}), IMAGE, {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}),
    "RESIZE_BILINEAR": (("Resize", ["x", "", "s"], {"mode": "linear"}), IMAGE, SCALE2),
    # a non-integer factor: integer nearest upscaling is CONCATENATION + RESHAPE (ops/resize.py)
    "RESIZE_NEAREST_NEIGHBOR": (("Resize", ["x", "", "s"], {"mode": "nearest"}), IMAGE,
                                {"s": np.array([1, 1, 1.5, 1.5], np.float32)}),
}

MULTI_OUTPUT = {"SPLIT": ["y", "y2"]}
# builtins an int8 model writes as float islands because XNNPACK delegates them in float only
# (ops/elementwise.py); the int8 kernel is forced here to check that fact
FLOAT_ISLANDS_IN_INT8 = {"MINIMUM": "Min", "MAXIMUM": "Max"}


def test_every_measured_row_has_a_model():
    measured = {name for name, row in BUILTINS.items() if row.xnnpack_int8 is not None or row.xnnpack_fp32 is not None}
    assert measured == set(ONE_OP_MODELS)


def _one_op(opcode, tmp_path):
    (op_type, inputs, attrs), shapes, initializers = ONE_OP_MODELS[opcode]
    outputs = MULTI_OUTPUT.get(opcode, ["y"])
    model = make_model([helper.make_node(op_type, inputs, outputs, name="op", **attrs)], shapes, outputs, initializers,
                       opset=20)
    # a FULLY_CONNECTED writing a float model output is kept float (ops/linear.py): int8 io keeps it int8
    result, _ = convert(model, tmp_path, int8_io=opcode == "FULLY_CONNECTED")
    assert result["op_histogram"].get(opcode) == 1
    return result


@pytest.mark.parametrize("opcode", sorted(k for k in ONE_OP_MODELS if BUILTINS[k].xnnpack_int8 is not None))
def test_xnnpack_int8_delegation_matches_the_table(opcode, tmp_path, monkeypatch):
    if opcode in FLOAT_ISLANDS_IN_INT8:
        monkeypatch.setattr(ops.registry().find("", FLOAT_ISLANDS_IN_INT8[opcode], 20), "int8", True)
    result = _one_op(opcode, tmp_path)
    assert not result["float_nodes"]
    delegated = len(delegate_partitions(tmp_path / "model.tflite")) == 1  # else the op splits Q and DQ apart
    assert delegated == BUILTINS[opcode].xnnpack_int8


@pytest.mark.parametrize("opcode", sorted(k for k in ONE_OP_MODELS if BUILTINS[k].xnnpack_fp32 is not None))
def test_xnnpack_fp32_delegation_matches_the_table(opcode, tmp_path):
    _one_op(opcode, tmp_path)
    delegated = len(delegate_partitions(tmp_path / "model.fp32.tflite")) == 1
    assert delegated == BUILTINS[opcode].xnnpack_fp32


def test_fixed_output_parameters_live_in_one_place():
    assert fixed_output("LOGISTIC") == (1.0 / 256, -128) and fixed_output("TANH") == (1.0 / 128, 0)
    assert fixed_output("SOFTMAX") == (1.0 / 256, -128) and fixed_output("LOG_SOFTMAX") == (16.0 / 256, 127)
    assert FIXED_OUTPUT == {name: row.fixed_output for name, row in BUILTINS.items() if row.fixed_output}
    with pytest.raises(KeyError):
        fixed_output("ADD")
