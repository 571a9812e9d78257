"""Conformance of the token-model ops (ops/logical.py, computed-index Gather, integer Casts):
int64 token ids and attention mask as int32 TFLite inputs, the embedding lookup, the comparisons
and logical ops that build the mask, Where's additive -inf mask (float: calibration marks it
unbounded), Expand (elided where its reader broadcasts, else BROADCAST_TO), the masked mean
pooling. ONNX Runtime on the same model is the reference; LiteRT with XNNPACK and without."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph
from edgepipe.backends.tflite import delegation
from edgepipe.backends.tflite.runtime import run_tflite
from tests.tflite_harness import check_conformance, make_model, run_onnx, structured_inputs

RNG = np.random.default_rng(17)
VOCAB, LENGTH, DIM = 50, 8, 6


def _token_model(table: np.ndarray, id_type=TensorProto.INT64) -> onnx.ModelProto:
    """ids, mask -> embedding, masked self-attention scores, masked mean pooling; outputs `y`
    (pooled [1, DIM]) and `spread` (the keep-mask expanded to [1, LENGTH, LENGTH], a graph output,
    so BROADCAST_TO stays)."""
    node = helper.make_node
    nodes = [
        node("Gather", ["table", "ids"], ["emb"], name="embedding"),
        node("Equal", ["mask", "zero"], ["pad"], name="is_pad"),
        node("Not", ["pad"], ["keep"], name="keep"),
        node("Greater", ["ids", "minus_one"], ["valid"], name="valid"),
        node("And", ["keep", "valid"], ["kept"], name="kept"),
        node("Or", ["pad", "kept"], ["anything"], name="anything"),
        node("Cast", ["kept"], ["weight"], name="weight", to=TensorProto.FLOAT),
        node("Cast", ["anything"], ["ones"], name="ones", to=TensorProto.FLOAT),
        node("Where", ["pad", "minus_inf", "zero_float"], ["bias"], name="bias"),
        node("Unsqueeze", ["bias", "axis1"], ["bias3"], name="bias3"),
        node("Expand", ["bias3", "square"], ["bias_full"], name="expand_bias"),
        node("Transpose", ["emb"], ["emb_t"], name="emb_t", perm=[0, 2, 1]),
        node("MatMul", ["emb", "emb_t"], ["scores"], name="scores"),
        node("Add", ["scores", "bias_full"], ["masked"], name="masked"),
        node("Softmax", ["masked"], ["attention"], name="attention", axis=-1),
        node("MatMul", ["attention", "emb"], ["context"], name="context"),
        node("Unsqueeze", ["weight", "axis2"], ["weight3"], name="weight3"),
        node("Mul", ["context", "weight3"], ["weighted"], name="weighted"),
        node("ReduceSum", ["weighted", "axis1"], ["total"], name="total", keepdims=0),
        node("ReduceSum", ["weight3", "axis1"], ["count"], name="count", keepdims=0),
        node("Div", ["total", "count"], ["pooled"], name="pooled"),
        node("Mul", ["pooled", "ones_scale"], ["y"], name="y"),
        node("Unsqueeze", ["ones", "axis1"], ["ones3"], name="ones3"),
        node("Expand", ["ones3", "square"], ["spread"], name="spread"),
    ]
    constants = {
        "table": table, "zero": np.array(0, np.int64), "minus_one": np.array(-1, np.int64),
        "minus_inf": np.array(-np.inf, np.float32), "zero_float": np.array(0.0, np.float32),
        "axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64),
        "square": np.array([1, LENGTH, LENGTH], np.int64), "ones_scale": np.array(1.0, np.float32),
    }
    if id_type != TensorProto.INT64:
        constants["minus_one"] = constants["minus_one"].astype(np.int32)
    proto = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("ids", id_type, [1, LENGTH]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [1, LENGTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("spread", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = graph.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def _table() -> np.ndarray:
    """Rows 0 and 1 hold the table's extremes, and every feed reads them: the calibrated range of
    the lookup is then the table's own, the grid the int8 table is written on."""
    table = RNG.normal(size=(VOCAB, DIM)).astype(np.float32)
    table[0, 0], table[1, 0] = -4.0, 4.0
    return table


def _feeds(count: int, id_dtype=np.int64) -> list[dict]:
    feeds = []
    for _ in range(count):
        ids = RNG.integers(2, VOCAB, (1, LENGTH))
        ids[0, :2] = [0, 1]
        mask = np.ones((1, LENGTH), np.int64)
        mask[0, RNG.integers(3, LENGTH + 1):] = 0  # some samples unpadded
        feeds.append({"ids": ids.astype(id_dtype), "mask": mask})
    return feeds


@pytest.mark.parametrize("id_type", [TensorProto.INT64, TensorProto.INT32])
def test_token_mask_path_matches_onnx_runtime(id_type, tmp_path):
    id_dtype = np.int64 if id_type == TensorProto.INT64 else np.int32
    model = _token_model(_table(), id_type)
    feeds = _feeds(8, id_dtype)
    feeds[0]["mask"][0, 5:] = 0  # the samples the comparison runs on are padded
    report = check_conformance(model, tmp_path, feeds, int8_steps=3.0)
    io = report.result["io"]
    assert {s["name"]: s["dtype"] for s in io["inputs"]} == {"ids": "int32", "mask": "int32"}
    histogram = report.result["op_histogram"]
    for opcode in ("GATHER", "EQUAL", "LOGICAL_NOT", "GREATER", "LOGICAL_AND", "LOGICAL_OR", "SELECT_V2", "CAST"):
        assert histogram.get(opcode), opcode
    assert histogram["BROADCAST_TO"] == 1  # the graph output; the mask added to the scores is not expanded
    # the additive mask and everything it reaches before the Softmax are float, never int8
    assert {"bias", "bias3", "expand_bias", "masked"} <= set(report.result["float_nodes"])
    assert "embedding" not in report.result["float_nodes"]


def test_token_mask_path_delegation(tmp_path):
    """What XNNPACK leaves on builtin kernels is the lookup and the mask ops only (none of them has
    an XNNPACK kernel); every int8 op of the attention is delegated."""
    model = _token_model(_table())
    check_conformance(model, tmp_path, _feeds(8), int8_steps=3.0)
    measured = delegation.measure(tmp_path / "tflite" / "model.tflite")
    assert set(measured["outside"]) <= {"GATHER", "EQUAL", "LOGICAL_NOT", "GREATER", "LOGICAL_AND", "LOGICAL_OR",
                                        "SELECT_V2", "CAST", "BROADCAST_TO", "RESHAPE"}, measured
    assert not {"BATCH_MATMUL", "SOFTMAX", "MUL", "ADD", "SUM"} & set(measured["outside"])


def test_padding_changes_nothing_but_the_padded_tokens(tmp_path):
    """Padded positions get no attention weight in the int8 file: changing the ids under the
    padding leaves the output as it was (the -inf mask kept float, not saturated on an int8 grid)."""
    model = _token_model(_table())
    report = check_conformance(model, tmp_path, _feeds(8), int8_steps=3.0)
    path, io = tmp_path / "tflite" / "model.tflite", report.result["io"]
    feed = _feeds(1)[0]
    feed["mask"][0, 4:] = 0
    other = {"ids": feed["ids"].copy(), "mask": feed["mask"]}
    other["ids"][0, 4:] = RNG.integers(2, VOCAB, LENGTH - 4)
    first, second = run_tflite(path, io, feed)["y"], run_tflite(path, io, other)["y"]
    np.testing.assert_array_equal(first, second)
    unpadded = {"ids": feed["ids"].copy(), "mask": feed["mask"]}
    unpadded["ids"][0, 2] = (unpadded["ids"][0, 2] + 7) % (VOCAB - 2) + 2  # a real token: the output moves
    assert not np.array_equal(run_tflite(path, io, unpadded)["y"], first)
    assert not np.array_equal(run_onnx(model, unpadded)["y"], run_onnx(model, feed)["y"])


def test_two_expands_into_one_reader_keep_the_expanded_shape(tmp_path):
    """Add(Expand(a [1, 1, 1, 4]), Expand(b [1, 1, 4, 1])) to [1, 3, 4, 4]: each Expand alone may
    be left to the Add's broadcasting, not both (the sum would be [1, 1, 4, 4])."""
    from tests.tflite_harness import make_model

    nodes = [helper.make_node("Expand", ["a", "shape"], ["a_wide"], name="expand_a"),
             helper.make_node("Expand", ["b", "shape"], ["b_wide"], name="expand_b"),
             helper.make_node("Add", ["a_wide", "b_wide"], ["y"], name="add")]
    model = make_model(nodes, {"a": [1, 1, 1, 4], "b": [1, 1, 4, 1]}, ["y"],
                       {"shape": np.array([1, 3, 4, 4], np.int64)})
    feeds = [{"a": RNG.normal(size=(1, 1, 1, 4)).astype(np.float32),
              "b": RNG.normal(size=(1, 1, 4, 1)).astype(np.float32)} for _ in range(4)]
    report = check_conformance(model, tmp_path, feeds)
    io = report.result["io"]
    fp32_io = {k: [dict(s, dtype="float32" if s["dtype"] == "int8" else s["dtype"], quantization=None) for s in v]
               for k, v in io.items()}
    expected = run_onnx(model, feeds[0])["y"]
    got = run_tflite(report.out_dir / "model.fp32.tflite", fp32_io, feeds[0])["y"]
    assert got.shape == expected.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


ZERO = {"zero": np.array(0.0, np.float32)}


def test_div_no_nan_pattern(tmp_path):
    """TensorFlow's div_no_nan as tf2onnx writes it (Spotify's Basic Pitch normalizes its
    log-magnitude CQT so): (x - min) / (max - min), 0 where the range is 0: a per-sample
    [1, 1, 1] denominator broadcast over [1, 6, 8]; one feed is constant, its range 0, and Where picks 0."""
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["lo"], name="lo", axes=[1, 2], keepdims=1),
        helper.make_node("Sub", ["x", "lo"], ["centred"], name="centre"),
        helper.make_node("ReduceMax", ["centred"], ["range"], name="range", axes=[1, 2], keepdims=1),
        helper.make_node("Div", ["centred", "range"], ["ratio"], name="divide"),
        helper.make_node("Equal", ["range", "zero"], ["empty"], name="empty"),
        helper.make_node("Where", ["empty", "zero", "ratio"], ["y"], name="select"),
    ]
    model = make_model(nodes, {"x": [1, 6, 8]}, ["y"], ZERO, opset=17)
    feeds = structured_inputs(model)
    feeds.insert(1, {"x": np.full((1, 6, 8), 2.5, np.float32)})
    report = check_conformance(model, tmp_path, feeds)
    histogram = report.result["op_histogram"]
    assert histogram["EQUAL"] == 1 and histogram["SELECT_V2"] == 1
    assert {"empty", "select"} <= set(report.result["float_nodes"])


def test_xor_of_booleans_is_not_equal(tmp_path):
    """trueocr's recognizer ends in a greedy CTC decode whose Xor of two boolean masks had no
    lowering; on booleans Xor is NOT_EQUAL (every truth-table row checked against ONNX Runtime)."""
    node = helper.make_node
    nodes = [node("Greater", ["ids", "four"], ["a"], name="a"),
             node("Greater", ["other", "four"], ["b"], name="b"),
             node("Xor", ["a", "b"], ["either"], name="either"),
             node("Cast", ["either"], ["y"], name="y", to=TensorProto.FLOAT)]
    constants = {"four": np.array(4, np.int64)}
    proto = helper.make_graph(nodes, "xor", [helper.make_tensor_value_info(name, TensorProto.INT64, [1, LENGTH])
                                             for name in ("ids", "other")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = graph.infer_shapes(helper.make_model(proto, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = [{"ids": RNG.integers(0, 10, (1, LENGTH)), "other": RNG.integers(0, 10, (1, LENGTH))} for _ in range(4)]
    rows = {(bool(a > 4), bool(b > 4)) for f in feeds for a, b in zip(f["ids"].ravel(), f["other"].ravel())}
    assert len(rows) == 4  # the feeds cover the truth table
    report = check_conformance(model, tmp_path, feeds)
    assert report.result["op_histogram"]["NOT_EQUAL"] == 1
