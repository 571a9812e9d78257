"""Conformance of GatherElements -> GATHER_ND (ops/gather_elements.py): constant indices, indices
computed in the graph (an ArgMax and the bins around it, as SwiftF0's pitch decoding reads them,
negative ones counted from the end), fp32 and int8, LiteRT against ONNX Runtime and the ONNX
package's own node tests."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import assert_onnx_case_fp32, check_conformance, make_model, op_names

RNG = np.random.default_rng(41)


@pytest.mark.parametrize("case", ["test_gather_elements_0", "test_gather_elements_1",
                                  "test_gather_elements_negative_indices"])
def test_onnx_node_tests(case, tmp_path):
    assert_onnx_case_fp32(case, tmp_path, 0.0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_constant_indices(axis, tmp_path):
    shape = [3, 4, 5]
    index_shape = list(shape)
    index_shape[axis] = 2
    length = shape[axis]
    indices = RNG.integers(-length, length, size=index_shape).astype(np.int64)
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], name="gather", axis=axis)
    model = make_model([node], {"x": shape}, ["y"], {"i": indices})
    report = check_conformance(model, tmp_path)
    assert "GATHER_ND" in op_names(report.out_dir / "model.tflite")


@pytest.mark.parametrize("axis", [2, 1])
def test_indices_around_the_argmax(axis, tmp_path):
    """idx = argmax + [-2..2] along `axis` (off the end on both sides: -1 and -2 count from the end
    in ONNX; one past the end does not occur, as the model pads its data first)."""
    shape = [1, 6, 9]
    offsets = np.arange(-2, 3, dtype=np.int64).reshape([5 if d == axis else 1 for d in range(3)])
    nodes = [helper.make_node("ArgMax", ["x"], ["peak"], name="peak", axis=axis, keepdims=1),
             helper.make_node("Add", ["peak", "offsets"], ["around"], name="around"),
             helper.make_node("Min", ["around", "last"], ["bins"], name="clamp"),
             helper.make_node("GatherElements", ["x", "bins"], ["y"], name="gather", axis=axis)]
    model = make_model(nodes, {"x": shape}, ["y"], {"offsets": offsets, "last": np.int64(shape[axis] - 1)})
    report = check_conformance(model, tmp_path)
    names = op_names(report.out_dir / "model.tflite")
    assert "GATHER_ND" in names and "FLOOR_MOD" in names
    assert report.fp32_error["xnnpack"] == 0.0  # values are moved, never computed


def test_values_picked_around_the_argmax_are_decoded_in_float(tmp_path):
    """SwiftF0's pitch decoding: softmax of the logits around the peak weighs log frequencies read
    from a constant table at the same bins, summed and exponentiated. In the int8 model the
    decoding runs float (edgepipe/backends/tflite/picked_values.py): the table and the Hz output
    on int8 grids would be 3 % and 8 Hz coarse; the logits stay int8 up to the pick."""
    bins = 12
    table = np.linspace(np.log(50.0), np.log(2000.0), bins).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="dense"),
             helper.make_node("ArgMax", ["logits"], ["peak"], name="peak", axis=-1, keepdims=1),
             helper.make_node("Add", ["peak", "offsets"], ["around"], name="around"),
             helper.make_node("Clip", ["around", "zero", "last"], ["bins"], name="clamp"),
             helper.make_node("GatherElements", ["logits", "bins"], ["picked"], name="pick", axis=-1),
             helper.make_node("Softmax", ["picked"], ["weights"], name="softmax", axis=-1),
             helper.make_node("Gather", ["table", "bins"], ["log_f"], name="lookup", axis=0),
             helper.make_node("Mul", ["weights", "log_f"], ["weighted"], name="weigh"),
             helper.make_node("ReduceSum", ["weighted", "axes"], ["mean_log_f"], name="sum", keepdims=0),
             helper.make_node("Exp", ["mean_log_f"], ["hz"], name="exp")]
    inits = {"w": RNG.normal(size=(8, bins)).astype(np.float32), "offsets": np.array([-1, 0, 1], np.int64),
             "zero": np.int64(0), "last": np.int64(bins - 1), "table": table, "axes": np.array([-1], np.int64)}
    model = make_model(nodes, {"x": [1, 5, 8]}, ["hz"], inits)
    report = check_conformance(model, tmp_path, fp32_rtol=1e-5)
    assert set(report.result["float_nodes"]) >= {"pick", "softmax", "lookup", "weigh", "sum", "exp"}
    assert "dense" not in report.result["float_nodes"]
