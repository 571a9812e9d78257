"""Models shipped in ONNX Runtime's QOperator format rebuilt as their float models (edgepipe/qoperator.py).

The quantized files come from ONNX Runtime itself: `quantize_static(quant_format=QOperator)` on four
float models (a residual CNN, a MobileNet-like block with Relu6, hard-swish, squeeze-excite and
swish, a MatMul / Gemm / Softmax head, a Concat / MaxPool / Resize / Pad / Split pyramid), with
uint8 and int8 activations. The rewritten float graph is judged against ONNX Runtime running the
original float model and the shipped int8 file; QLinearConv / QLinearMatMul also against the ONNX
package's own node tests. Then each file is built through the CLI for arm-cpu and jetson.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgepipe.dequantize import float_from_quantized
from edgepipe.qoperator import QOPERATOR_OP_TYPES
from tests.helpers import deployed_outputs, run_cli, sqnr_db
from tests.tflite_harness import make_model, onnx_node_case

MS = "com.microsoft"


def _weights(rng, *shape, k=0.3):
    return (rng.normal(size=shape) * k).astype(np.float32)


def _residual(rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    return make_model(nodes, {"x": [1, 3, 16, 16]}, ["y"], {
        "w1": _weights(rng, 8, 3, 3, 3), "b1": _weights(rng, 8), "w2": _weights(rng, 8, 8, 3, 3, k=0.1),
        "b2": _weights(rng, 8), "fw": _weights(rng, 10, 8), "fb": _weights(rng, 10)}, opset=13)


def _mobile(rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, strides=[2, 2], name="stem"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
             helper.make_node("Conv", ["r1", "dw", "db"], ["c2"], pads=[1] * 4, group=8, name="depthwise"),
             helper.make_node("HardSwish", ["c2"], ["h"], name="hswish"),
             helper.make_node("GlobalAveragePool", ["h"], ["se0"], name="se_pool"),
             helper.make_node("Conv", ["se0", "sw1", "sb1"], ["se1"], name="se_fc1"),
             helper.make_node("Relu", ["se1"], ["se2"], name="se_relu"),
             helper.make_node("Conv", ["se2", "sw2", "sb2"], ["se3"], name="se_fc2"),
             helper.make_node("Sigmoid", ["se3"], ["se4"], name="se_gate"),
             helper.make_node("Mul", ["h", "se4"], ["se"], name="se_mul"),
             helper.make_node("Conv", ["se", "pw", "pb"], ["c3"], name="pointwise"),
             helper.make_node("Sigmoid", ["c3"], ["sg"], name="swish_gate"),
             helper.make_node("Mul", ["c3", "sg"], ["sw"], name="swish"),
             helper.make_node("AveragePool", ["sw"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="avgpool"),
             helper.make_node("LeakyRelu", ["ap"], ["y"], alpha=0.1, name="leaky")]
    return make_model(nodes, {"x": [1, 3, 16, 16]}, ["y"], {
        "w1": _weights(rng, 8, 3, 3, 3, k=0.6), "b1": _weights(rng, 8), "lo": np.float32(0), "hi": np.float32(6),
        "dw": _weights(rng, 8, 1, 3, 3), "db": _weights(rng, 8), "sw1": _weights(rng, 4, 8, 1, 1),
        "sb1": _weights(rng, 4), "sw2": _weights(rng, 8, 4, 1, 1), "sb2": _weights(rng, 8),
        "pw": _weights(rng, 12, 8, 1, 1), "pb": _weights(rng, 12)}, opset=14)


def _head(rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "m1"], ["h1"], name="mm1"),
             helper.make_node("Add", ["h1", "a1"], ["h2"], name="bias1"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
             helper.make_node("Gemm", ["h3", "g", "gb"], ["logits"], name="fc2"),
             helper.make_node("Softmax", ["logits"], ["y"], axis=-1, name="softmax")]
    return make_model(nodes, {"x": [1, 4, 6]}, ["y"], {
        "m1": _weights(rng, 24, 16), "a1": _weights(rng, 16), "g": _weights(rng, 16, 5), "gb": _weights(rng, 5)},
        opset=13)


def _pyramid(rng) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1] * 4, name="conv2"),
             helper.make_node("Resize", ["c2", "", "scales"], ["up"], mode="nearest", name="upsample"),
             helper.make_node("Concat", ["up", "r1"], ["cat"], axis=1, name="cat"),
             helper.make_node("Pad", ["cat", "pads"], ["padded"], mode="constant", name="pad"),
             helper.make_node("Conv", ["padded", "w3", "b3"], ["c3"], name="conv3"),
             helper.make_node("Transpose", ["c3"], ["t"], perm=[0, 2, 3, 1], name="nhwc"),
             helper.make_node("Reshape", ["t", "shape"], ["rows"], name="reshape"),
             helper.make_node("Split", ["rows", "split"], ["s1", "s2"], axis=1, name="split"),
             helper.make_node("Unsqueeze", ["s1", "axes"], ["y1"], name="unsqueeze"),
             helper.make_node("Squeeze", ["s2"], ["y2"], name="squeeze")]
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["y1", "y2"], {
        "w1": _weights(rng, 4, 3, 3, 3), "b1": _weights(rng, 4), "w2": _weights(rng, 4, 4, 3, 3), "b2": _weights(rng, 4),
        "scales": np.array([1, 1, 2, 2], np.float32), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "w3": _weights(rng, 6, 8, 3, 3, k=0.1), "b3": _weights(rng, 6), "shape": np.array([1, 64, 6], np.int64),
        "split": np.array([32, 32], np.int64), "axes": np.array([0], np.int64)}, opset=13)


# name: (float model, input shape, activation type, the QOperator ops ONNX Runtime writes for it)
MODELS = {
    "residual": (_residual, [1, 3, 16, 16], "uint8", {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool", "QGemm"}),
    "mobile": (_mobile, [1, 3, 16, 16], "uint8", {"QLinearConv", "QLinearSigmoid", "QLinearMul", "QLinearAveragePool",
                                                  "QLinearLeakyRelu"}),
    "head": (_head, [1, 4, 6], "int8", {"QLinearMatMul", "QLinearAdd", "QGemm", "QLinearSoftmax"}),
    "pyramid": (_pyramid, [1, 3, 8, 8], "int8", {"QLinearConv", "QLinearConcat", "MaxPool", "Resize", "Pad",
                                                 "Transpose", "Reshape", "Split", "Unsqueeze", "Squeeze"}),
}


def _samples(name: str, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=[count, *MODELS[name][1][1:]]).astype(np.float32)


def _feeds(name: str, count: int = 8, seed: int = 1) -> list[dict]:
    return [{"x": sample[None]} for sample in _samples(name, count, seed)]


def _run(model, feeds: list[dict]) -> list[np.ndarray]:
    data = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return [np.concatenate(outputs) for outputs in zip(*(session.run(None, feed) for feed in feeds))]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """{name: (float model path, QOperator model path)} written by ONNX Runtime's quantize_static."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    folder = tmp_path_factory.mktemp("qoperator")
    files = {}
    for name, (factory, shape, activations, _) in MODELS.items():
        onnx.save(factory(np.random.default_rng(0)), str(folder / f"{name}.float.onnx"))
        kind = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
        quantize_static(str(folder / f"{name}.float.onnx"), str(folder / f"{name}.qop.onnx"),
                        Reader(_feeds(name, 16, seed=0)), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=kind, weight_type=QuantType.QInt8)
        files[name] = (folder / f"{name}.float.onnx", folder / f"{name}.qop.onnx")
    return files


@pytest.mark.parametrize("name", sorted(MODELS))
def test_qoperator_model_becomes_its_float_model(shipped, name):
    """ORT's original float model and ORT running the shipped int8 file are the references: the
    rewritten graph is closer to the float model than the int8 file is (weight rounding only),
    and it agrees with the int8 file within that file's own int8 noise."""
    float_path, qop_path = shipped[name]
    qop = onnx.load(str(qop_path))
    assert MODELS[name][3] <= {n.op_type for n in qop.graph.node}
    rebuilt, count = float_from_quantized(qop)
    ops = {n.op_type for n in rebuilt.graph.node}
    assert count > 0 and not ops & (set(QOPERATOR_OP_TYPES) | {"QuantizeLinear", "DequantizeLinear"}), ops
    assert all(o.domain in ("", "ai.onnx") for o in rebuilt.opset_import)
    onnx.checker.check_model(rebuilt)
    feeds = _feeds(name)
    original, ours, int8 = _run(str(float_path), feeds), _run(rebuilt, feeds), _run(str(qop_path), feeds)
    for reference, got, shipped_int8 in zip(original, ours, int8):
        int8_noise = sqnr_db(reference, shipped_int8)
        assert sqnr_db(reference, got) > max(35.0, int8_noise), (sqnr_db(reference, got), int8_noise)
        assert sqnr_db(shipped_int8, got) > min(30.0, int8_noise - 1.5), (sqnr_db(shipped_int8, got), int8_noise)


def test_relus_folded_into_grids_come_back(shipped):
    """ONNX Runtime drops a Relu (and MobileNet's Relu6 Clip) into the conv's output grid; the float
    graph has them back, where the grid starts at 0 (and ends at exactly 6)."""
    rebuilt, _ = float_from_quantized(onnx.load(str(shipped["mobile"][1])))
    ops = [n.op_type for n in rebuilt.graph.node]
    assert ops[:3] == ["Conv", "Clip", "Conv"] and ops.count("Relu") == 1, ops  # stem Relu6, se_relu
    clip = rebuilt.graph.node[1]
    values = {t.name: numpy_helper.to_array(t) for t in rebuilt.graph.initializer}
    assert float(values[clip.input[1]]) == 0.0 and float(values[clip.input[2]]) == 6.0
    residual, _ = float_from_quantized(onnx.load(str(shipped["residual"][1])))
    assert [n.op_type for n in residual.graph.node][:5] == ["Conv", "Relu", "Conv", "Add", "Relu"]


@pytest.mark.parametrize("case, float_op", [("test_qlinearconv", "Conv"), ("test_qlinearmatmul_2D_uint8_float32", "MatMul"),
                                            ("test_qlinearmatmul_3D_int8_float32", "MatMul")])
def test_onnx_node_tests_in_dequantize_float_quantize_form(case, float_op):
    """The ONNX package's own QLinearConv / QLinearMatMul tests (integer input and output, so the
    DQ -> float op -> Q form stays): ONNX Runtime on the rewrite gives the expected integers, up to
    one step where the exact value sits on a rounding boundary."""
    from edgepipe.qoperator import qdq_from_qoperator

    model, feed, expected = onnx_node_case(case)
    rewritten, count = qdq_from_qoperator(model)
    assert count == 1
    assert [n.op_type for n in rewritten.graph.node] == ["DequantizeLinear", float_op, "QuantizeLinear"]
    got = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for value, want in zip(got, expected.values()):
        assert value.dtype == want.dtype
        assert np.max(np.abs(value.astype(np.int32) - want.astype(np.int32))) <= 1


def test_one_grid_under_two_names_is_still_one_grid(shipped):
    """A file that repeats a scale under another name for one reader (equal values): the Q/DQ pairs
    still go, since grids are compared by value."""
    qop = onnx.load(str(shipped["residual"][1]))
    add = next(n for n in qop.graph.node if n.op_type == "QLinearAdd")
    scale = next(t for t in qop.graph.initializer if t.name == add.input[4])
    copy = numpy_helper.from_array(numpy_helper.to_array(scale).copy(), "r1_scale_again")
    qop.graph.initializer.append(copy)
    add.input[4] = copy.name
    rebuilt, _ = float_from_quantized(qop)
    assert [n.op_type for n in rebuilt.graph.node][:5] == ["Conv", "Relu", "Conv", "Add", "Relu"]  # one Relu for r1
    feeds = _feeds("residual")
    assert sqnr_db(_run(str(shipped["residual"][0]), feeds)[0], _run(rebuilt, feeds)[0]) > 35.0


def test_qgemm_bias_follows_the_kernel_alpha(tmp_path):
    """QGemm adds C_int * alpha * a_scale * b_scale (ONNX Runtime's kernel); with alpha != 1 the file
    the quantizer writes differs from its float model, and the rewrite reproduces the file."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(4)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, name="fc")],
                       {"x": [1, 8]}, ["y"], {"w": _weights(rng, 5, 8), "b": _weights(rng, 5, k=2.0)}, opset=13)
    feeds = [{"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    onnx.save(model, str(tmp_path / "float.onnx"))
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qop.onnx"), Reader(),
                    quant_format=QuantFormat.QOperator)
    rebuilt, _ = float_from_quantized(onnx.load(str(tmp_path / "qop.onnx")))
    assert "Gemm" in [n.op_type for n in rebuilt.graph.node]
    assert sqnr_db(_run(str(tmp_path / "qop.onnx"), feeds)[0], _run(rebuilt, feeds)[0]) > 30.0


@pytest.mark.parametrize("target", ["arm-cpu", "jetson"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_qoperator_file_builds(shipped, name, target, tmp_path):
    """Through the CLI, the file as ORT wrote it: the deployed int8 model (LiteRT / the Q/DQ ONNX in
    ONNX Runtime) against ONNX Runtime FP32 on the rewritten float graph, on held-out samples."""
    np.savez(tmp_path / "calib.npz", x=_samples(name, 32, seed=5))
    proc = run_cli("build", "--model", str(shipped[name][1]), "--target", target, "--calib", str(tmp_path / "calib.npz"),
                   "--no-host-report", "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rebuilt, _ = float_from_quantized(onnx.load(str(shipped[name][1])))
    feeds = _feeds(name, 6, seed=9)
    expected = _run(rebuilt, feeds)
    got = [np.concatenate(outputs) for outputs in zip(*(deployed_outputs(tmp_path / "bundle", feed) for feed in feeds))]
    for reference, value in zip(expected, got):
        assert sqnr_db(reference, value.reshape(reference.shape)) > 25.0, (name, target, sqnr_db(reference, value))


def test_integer_moves_and_qlinear_where_by_hand():
    """Integer-domain Slice / Gather / DepthToSpace / Flatten / linear Resize / Clip, an ArgMax and a Shape on the integers and a
    com.microsoft QLinearWhere, written node for node: the rebuilt float graph differs from ONNX
    Runtime on the file by the input's rounding only (half a step), and its ArgMax is numpy's."""
    rng = np.random.default_rng(8)
    scale, zero, out_scale, out_zero = np.float32(0.05), np.uint8(128), np.float32(0.06), np.uint8(120)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="quantize"),
             helper.make_node("Slice", ["xq", "starts", "ends", "axes"], ["sq"], name="slice"),
             helper.make_node("Gather", ["sq", "channels"], ["gq"], axis=1, name="gather"),
             helper.make_node("DepthToSpace", ["gq"], ["dq"], blocksize=2, name="d2s"),
             helper.make_node("Flatten", ["dq"], ["fq"], name="flatten"),
             helper.make_node("DequantizeLinear", ["fq", "s", "z"], ["moved"], name="dequantize"),
             helper.make_node("ArgMax", ["xq"], ["index"], axis=1, keepdims=0, name="argmax"),
             helper.make_node("Shape", ["dq"], ["shape"], name="shape"),
             helper.make_node("Resize", ["xq", "", "twice"], ["rq"], mode="linear", name="upsample"),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["upsampled"], name="dequantize_resize"),
             helper.make_node("Clip", ["xq", "low", "high"], ["cq"], name="clip"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["clipped"], name="dequantize_clip"),
             helper.make_node("QLinearWhere", ["keep", "gq", "s", "z", "other", "s", "z", "s_out", "z_out"], ["wq"],
                              name="where", domain="com.microsoft"),
             helper.make_node("DequantizeLinear", ["wq", "s_out", "z_out"], ["picked"], name="dequantize_where")]
    constants = {"s": scale, "z": zero, "s_out": out_scale, "z_out": out_zero, "starts": np.array([1], np.int64),
                 "ends": np.array([7], np.int64), "axes": np.array([2], np.int64), "low": np.uint8(118), "twice": np.array([1, 1, 2, 2], np.float32),
                 "high": np.uint8(150),
                 "channels": np.array([0, 2, 4, 5], np.int64),
                 "keep": rng.random((1, 4, 6, 8)) > 0.5, "other": rng.integers(0, 256, (1, 4, 6, 8)).astype(np.uint8)}
    graph_proto = helper.make_graph(
        nodes, "moves", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6, 8, 8])],
        [helper.make_tensor_value_info("moved", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("index", onnx.TensorProto.INT64, None),
         helper.make_tensor_value_info("shape", onnx.TensorProto.INT64, None),
         helper.make_tensor_value_info("upsampled", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("clipped", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("picked", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    shipped = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    shipped.ir_version = 8
    rebuilt, _ = float_from_quantized(shipped)
    assert [n.op_type for n in rebuilt.graph.node] == ["Slice", "Gather", "DepthToSpace", "Flatten", "Identity",
                                                       "ArgMax", "Shape", "Resize", "Identity", "Clip", "Identity", "Where", "Identity"], rebuilt.graph.node
    feeds = [{"x": rng.normal(size=(1, 6, 8, 8)).astype(np.float32)} for _ in range(4)]
    ours, int8 = _run(rebuilt, feeds), _run(shipped, feeds)
    assert np.max(np.abs(ours[0] - int8[0])) <= scale / 2 + 1e-6  # x's rounding; the moves are exact
    np.testing.assert_array_equal(ours[1], np.concatenate([np.argmax(f["x"], axis=1) for f in feeds]))
    np.testing.assert_array_equal(ours[2], np.tile([1, 1, 12, 16], len(feeds)))
    assert np.max(np.abs(ours[3] - int8[3])) <= 1.5 * scale + 1e-6  # and the integer kernel truncating the average
    assert np.max(np.abs(ours[4] - int8[4])) <= scale / 2 + 1e-6 and np.min(ours[4]) == np.float32(-10 * scale)
    assert np.max(np.abs(ours[5] - int8[5])) <= scale / 2 + out_scale / 2 + 1e-6  # plus the output grid's rounding

