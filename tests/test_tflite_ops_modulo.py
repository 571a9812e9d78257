"""Integer index arithmetic: Mod lowered to FLOOR_MOD (ops/modulo.py; an end-to-end YOLO head's
class id, TopK's flat index Mod the class count; negative dividends and divisors, ONNX fmod=0),
fmod=1 and float Mod refused by node, and integer Div by a constant kept a truncating DIV
(ops/elementwise.py), against ONNX Runtime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.tflite import unsupported_nodes
from tests.tflite_harness import check_conformance

RNG = np.random.default_rng(9)


def _model(nodes, inputs, constants):
    proto = helper.make_graph(nodes, "mod", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    return graph.infer_shapes(helper.make_model(proto, opset_imports=[helper.make_opsetid("", 17)]))


def test_topk_index_mod_class_count_and_negative_operands(tmp_path):
    node = helper.make_node
    nodes = [node("TopK", ["scores", "k"], ["best", "flat"], name="topk"),
             node("Mod", ["flat", "classes"], ["class_id"], name="class_of"),  # the YOLO head's pattern
             node("Sub", ["flat", "shift"], ["signed"], name="signed"),  # negative dividends too
             node("Mod", ["signed", "minus_four"], ["wrapped"], name="negative_divisor"),
             node("Mul", ["class_id", "ten"], ["tens"], name="tens"),
             node("Add", ["tens", "wrapped"], ["code"], name="code"),
             node("Cast", ["code"], ["code_f"], name="code_f", to=TensorProto.FLOAT),
             node("Add", ["code_f", "best"], ["y"], name="y")]
    constants = {"k": np.array([6], np.int64), "classes": np.array(4, np.int64), "shift": np.array(9, np.int64),
                 "minus_four": np.array(-4, np.int64), "ten": np.array(10, np.int64)}
    model = _model(nodes, [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 20])], constants)
    feeds = [{"scores": RNG.permutation(20).astype(np.float32)[None] / 20} for _ in range(6)]
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"]["FLOOR_MOD"] == 2


def test_c_style_and_float_mod_are_refused_by_node():
    node = helper.make_node
    for fmod, kind in ((1, TensorProto.INT64), (1, TensorProto.FLOAT)):
        nodes = [node("Mod", ["x", "d"], ["m"], name="the_mod", fmod=fmod),
                 node("Cast", ["m"], ["y"], name="to_float", to=TensorProto.FLOAT)]
        divisor = np.array(3, np.int64 if kind == TensorProto.INT64 else np.float32)
        model = _model(nodes, [helper.make_tensor_value_info("x", kind, [1, 4])], {"d": divisor})
        problems = unsupported_nodes(model)
        assert [p[0] for p in problems] == ["the_mod"], problems
        assert ("fmod=1" if kind == TensorProto.INT64 else "float Mod") in problems[0][2]


def test_integer_div_by_a_constant_truncates_as_onnx_does(tmp_path):
    """trueocr's `ceil(widths / 4)` as PyTorch exports floor division: Div, Mod, Xor, Where on
    int64. An integer Div by a constant was lowered as a MUL by its reciprocal, 1/4 cast to int32
    is 0, and every length came out 0 in the fp32 .tflite too."""
    node = helper.make_node
    nodes = [node("Div", ["ids", "four"], ["quarter"], name="quarter"),
             node("Div", ["ids", "minus_three"], ["third"], name="third"),  # truncation toward zero
             node("Mul", ["third", "hundred"], ["shifted"], name="shifted"),
             node("Add", ["quarter", "shifted"], ["code"], name="code"),
             node("Cast", ["code"], ["y"], name="y", to=TensorProto.FLOAT)]
    constants = {"four": np.array(4, np.int64), "minus_three": np.array(-3, np.int64), "hundred": np.array(100, np.int64)}
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])], constants)
    feeds = [{"ids": RNG.integers(-20, 300, (1, 8))} for _ in range(4)]
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"]["DIV"] == 2
