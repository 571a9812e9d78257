"""Each validator rule rejects its violation (starting from a valid lowered model each time)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import helper

from edgepipe.backends.tflite import validator
from edgepipe.backends.tflite.build import lower_model
from edgepipe.backends.tflite.writer import Quantization
from tests.tflite_harness import make_model, minmax_calibration, structured_inputs


@pytest.fixture(scope="module")
def valid_spec():
    """int8 Conv -> Sigmoid, Conv -> MaxPool -> Concat -> Reshape: touches every rule's op kind."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"),
             helper.make_node("MaxPool", ["c"], ["m"], name="pool", kernel_shape=[1, 1]),
             helper.make_node("Concat", ["s", "m"], ["k"], name="concat", axis=1),
             helper.make_node("Flatten", ["k"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)]
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                                                          "fw": rng.normal(size=(5, 128)).astype(np.float32)})
    calibration = minmax_calibration(model, structured_inputs(model, 4))
    return lower_model(model, calibration, {}, quantized=True).spec


def _op(spec, opcode):
    return next(op for op in spec.operators if op.opcode == opcode)


def _input(spec, opcode, slot):
    return spec.tensors[_op(spec, opcode).inputs[slot]]


def _output(spec, opcode):
    return spec.tensors[_op(spec, opcode).outputs[0]]


def _set_zero_point(tensor, value):
    tensor.quantization = Quantization(tensor.quantization.scale, np.array([value], np.int64))


MUTATIONS = {
    "buffer0": lambda s: s.buffers.__setitem__(0, b"\x01"),
    "buffer-size": lambda s: s.buffers.__setitem__(_input(s, "CONV_2D", 1).buffer, b"\x00" * 7),
    "shape": lambda s: setattr(_output(s, "CONV_2D"), "shape", [1, -1, 4, 4]),
    "quant-missing": lambda s: setattr(_output(s, "CONV_2D"), "quantization", None),
    "quant-types": lambda s: setattr(_output(s, "CONV_2D").quantization, "zero_point",
                                     _output(s, "CONV_2D").quantization.zero_point.astype(np.int32)),
    "quant-length": lambda s: setattr(_input(s, "CONV_2D", 1).quantization, "scale",
                                      _input(s, "CONV_2D", 1).quantization.scale[:2]),
    "quant-scale": lambda s: _output(s, "CONV_2D").quantization.scale.__setitem__(0, 0.0),
    "quant-zero-point": lambda s: _set_zero_point(_output(s, "CONV_2D"), 200),
    "io": lambda s: s.outputs.append(s.inputs[0]),
    "dataflow": lambda s: s.operators.reverse(),
    "opcode": lambda s: setattr(s.operators[1], "opcode", "SEGMENT_SUM"),
    "dtype-mix": lambda s: setattr(_output(s, "MAX_POOL_2D"), "dtype", "float32"),
    "weights": lambda s: _input(s, "CONV_2D", 1).quantization.zero_point.__setitem__(0, 1),
    "bias": lambda s: _op(s, "CONV_2D").inputs.__setitem__(2, -1),
    "fixed-output": lambda s: _set_zero_point(_output(s, "LOGISTIC"), 0),
    "same-quant": lambda s: _set_zero_point(_output(s, "RESHAPE"), 3),
    "options": lambda s: setattr(_op(s, "CONCATENATION"), "options_type", None),
}


def test_the_valid_model_passes(valid_spec):
    assert validator.find_problems(valid_spec) == []


@pytest.mark.parametrize("rule", sorted(MUTATIONS))
def test_rule_rejects_its_violation(rule, valid_spec):
    spec = copy.deepcopy(valid_spec)
    MUTATIONS[rule](spec)
    with pytest.raises(validator.ValidationError) as caught:
        validator.validate(spec)
    assert rule in caught.value.rules, caught.value.problems


@pytest.mark.parametrize("case", ["bias-scale", "bias-unquantized", "bias-count", "concat-input", "weight-axis"])
def test_bias_weight_and_concat_details(case, valid_spec):
    spec = copy.deepcopy(valid_spec)
    conv = _op(spec, "CONV_2D")
    bias = spec.tensors[conv.inputs[2]]
    if case == "bias-scale":
        bias.quantization.scale[:] *= 2
    elif case == "bias-unquantized":
        bias.quantization = None
    elif case == "bias-count":
        bias.quantization = Quantization.per_tensor(float(bias.quantization.scale[0]), 0)
    elif case == "concat-input":
        _set_zero_point(spec.tensors[_op(spec, "CONCATENATION").inputs[0]], 5)
    else:  # per-channel along the wrong dimension (same size, so only the weights rule catches it)
        weights = spec.tensors[conv.inputs[1]]
        weights.shape = [4, 3, 3, 4]
        weights.quantization.axis = 3
        spec.buffers[weights.buffer] = bytes(4 * 3 * 3 * 4)
    with pytest.raises(validator.ValidationError) as caught:
        validator.validate(spec)
    assert caught.value.rules & {"bias", "same-quant", "weights", "fixed-output"}


def test_softmax_without_beta_is_rejected(valid_spec):
    spec = copy.deepcopy(valid_spec)
    op = _op(spec, "LOGISTIC")
    op.opcode, op.options_type, op.options = "SOFTMAX", "SoftmaxOptions", {}
    with pytest.raises(validator.ValidationError, match="Beta"):
        validator.validate(spec)
