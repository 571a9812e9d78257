"""ONNX Runtime's dynamically quantized models rebuilt as float layers (edgepipe/dequantize.py).

The quantized models come from ONNX Runtime itself: `quantize_dynamic` on a float model (today's
pattern: float bias added after the integer layer, DynamicQuantizeLSTM), and the older pattern
ddddocr ships (bias quantized at run time by Floor(Div(B, x_scale * w_scale)), written here node
for node as that file has it). The rewritten float graph is judged against ONNX Runtime running
the original float model and the int8 one, then built through the CLI and run in LiteRT.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgepipe.dequantize import DYNAMIC_OPS, float_from_quantized
from tests.helpers import run_cli
from tests.tflite_harness import make_model

RNG = np.random.default_rng(17)


def _float_model() -> onnx.ModelProto:
    """Conv (bias) -> Relu -> bidirectional LSTM -> MatMul + bias: the layers quantize_dynamic takes."""
    rng = np.random.default_rng(3)  # the same model every call
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["seq"], name="to_seq"),
             helper.make_node("LSTM", ["seq", "W", "R", "B"], ["y", "yh"], name="lstm", hidden_size=8,
                              direction="bidirectional"),
             helper.make_node("Reshape", ["y", "shape2"], ["flat"], name="flat"),
             helper.make_node("MatMul", ["flat", "m"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "mb"], ["out"], name="mm_bias")]
    inits = {"w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32) * 0.3, "b": rng.normal(size=4).astype(np.float32),
             "shape": np.array([6, 1, -1], np.int64), "W": rng.normal(size=(2, 32, 16)).astype(np.float32) * 0.3,
             "R": rng.normal(size=(2, 32, 8)).astype(np.float32) * 0.3,
             "B": rng.normal(size=(2, 64)).astype(np.float32) * 0.1, "shape2": np.array([6, 16], np.int64),
             "m": rng.normal(size=(16, 5)).astype(np.float32), "mb": rng.normal(size=5).astype(np.float32)}
    return make_model(nodes, {"x": [1, 1, 4, 6]}, ["out"], inits, opset=13)


def _run(model: onnx.ModelProto, feeds: list[dict]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def _sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - test) ** 2.0)))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("dynamic")
    onnx.save(_float_model(), str(folder / "float.onnx"))
    quantize_dynamic(str(folder / "float.onnx"), str(folder / "dynamic.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul", "LSTM"])
    return folder / "dynamic.onnx"


FEEDS = [{"x": RNG.normal(size=(1, 1, 4, 6)).astype(np.float32)} for _ in range(8)]


def test_onnxruntime_dynamic_model_becomes_its_float_layers(quantized):
    dynamic = onnx.load(str(quantized))
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"} <= {
        n.op_type for n in dynamic.graph.node}
    rebuilt, count = float_from_quantized(dynamic)
    assert count == 3
    assert not {n.op_type for n in rebuilt.graph.node} & set(DYNAMIC_OPS)
    assert all(o.domain in ("", "ai.onnx") for o in rebuilt.opset_import)
    onnx.checker.check_model(rebuilt)
    original, ours, int8 = _run(_float_model(), FEEDS), _run(rebuilt, FEEDS), _run(dynamic, FEEDS)
    assert _sqnr(original, ours) > 35.0  # only the weights' uint8 rounding is left
    assert _sqnr(int8, ours) > 25.0  # and ORT's run-time activation rounding is gone


def test_runtime_quantized_bias_pattern_as_ddddocr_ships_it():
    """DynamicQuantizeLinear -> ConvInteger + Reshape(Cast(Floor(Div(B, x_scale * w_scale)))) ->
    Cast -> Mul(x_scale * w_scale): a Conv with bias B, whatever the run-time scale."""
    weights = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
    w_scale = np.float32(np.abs(weights).max() / 127)
    w_zero = np.uint8(128)
    w_q = np.clip(np.round(weights / w_scale) + 128, 0, 255).astype(np.uint8)
    bias = RNG.normal(size=3).astype(np.float32)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="x_quant"),
             helper.make_node("Mul", ["xs", "w_scale"], ["bias_scale"], name="bias_scale"),
             helper.make_node("Div", ["bias", "bias_scale"], ["bias_div"], name="bias_div"),
             helper.make_node("Floor", ["bias_div"], ["bias_floor"], name="bias_floor"),
             helper.make_node("Cast", ["bias_floor"], ["bias_int"], name="bias_cast", to=onnx.TensorProto.INT32),
             helper.make_node("ConvInteger", ["xq", "w_q", "xz", "w_zero"], ["acc"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["bias_int", "bias_shape"], ["bias_nchw"], name="bias_reshape"),
             helper.make_node("Add", ["acc", "bias_nchw"], ["acc_bias"], name="bias_add"),
             helper.make_node("Cast", ["acc_bias"], ["acc_float"], name="to_float", to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "w_scale"], ["out_scale"], name="out_scale"),
             helper.make_node("Mul", ["acc_float", "out_scale"], ["y"], name="rescale"),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    inits = {"w_scale": np.array(w_scale), "w_zero": np.array(w_zero), "w_q": w_q, "bias": bias,
             "bias_shape": np.array([1, -1, 1, 1], np.int64)}
    graph_proto = helper.make_graph(
        nodes, "old_dynamic", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    dynamic = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 12)])
    dynamic.ir_version = 7
    rebuilt, count = float_from_quantized(dynamic)
    assert count == 1 and [n.op_type for n in rebuilt.graph.node] == ["Conv", "Relu"]
    conv = rebuilt.graph.node[0]
    values = {t.name: numpy_helper.to_array(t) for t in rebuilt.graph.initializer}
    np.testing.assert_array_equal(values[conv.input[2]], bias)
    np.testing.assert_allclose(values[conv.input[1]], (w_q.astype(np.float32) - 128) * w_scale, rtol=1e-6)
    feeds = [{"x": RNG.normal(size=(1, 2, 5, 5)).astype(np.float32)} for _ in range(4)]
    assert _sqnr(_run(dynamic, feeds), _run(rebuilt, feeds)) > 25.0


def test_dynamic_model_builds_for_arm_cpu(quantized, tmp_path):
    """Through the CLI: the file as ORT wrote it builds, and its fp32 .tflite runs the float layers."""
    from tests.realmodels import evaluate

    np.savez(tmp_path / "calib.npz", x=RNG.normal(size=(8, 1, 4, 6)).astype(np.float32))
    proc = run_cli("build", "--model", str(quantized), "--target", "arm-cpu", "--calib", str(tmp_path / "calib.npz"),
                   "--no-host-report", "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    images = np.concatenate([feed["x"] for feed in FEEDS[:3]])
    got = evaluate.run_tflite(tmp_path / "bundle" / "model.fp32.tflite", evaluate.manifest(tmp_path / "bundle")["io"],
                              images)[0]
    rebuilt, _ = float_from_quantized(onnx.load(str(quantized)))
    expected = _run(rebuilt, FEEDS[:3])
    got = got.reshape(expected.shape)
    assert np.max(np.abs(got - expected)) <= 1e-4 * max(1.0, float(np.max(np.abs(expected))))


def test_inspect_sees_the_float_layers_a_build_deploys(quantized, tmp_path):
    proc = run_cli("inspect", str(quantized), "--target", "arm-cpu", "--target", "jetson", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "arm-cpu: all ops supported" in proc.stdout and "jetson: all ops supported" in proc.stdout, proc.stdout
    assert "ConvInteger" not in proc.stdout and "LSTM x1" in proc.stdout, proc.stdout


def test_static_qdq_model_becomes_its_float_layers(tmp_path):
    """ONNX Runtime quantize_static (QDQ, per-channel weights): constant DequantizeLinears fold to
    their values and every activation QuantizeLinear -> DequantizeLinear pair goes."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(FEEDS)

        def get_next(self):
            return next(self.feeds, None)

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "m", "mb"], ["out"], name="head", transB=1)]
    rng = np.random.default_rng(5)
    model = make_model(nodes, {"x": [1, 1, 4, 6]}, ["out"], {
        "w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32),
        "m": rng.normal(size=(3, 96)).astype(np.float32), "mb": rng.normal(size=3).astype(np.float32)}, opset=13)
    onnx.save(model, str(tmp_path / "float.onnx"))
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    qdq = onnx.load(str(tmp_path / "qdq.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) >= 2
    rebuilt, count = float_from_quantized(qdq)
    assert count >= 4 and not {n.op_type for n in rebuilt.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    # the Relu ORT folded into the conv's uint8 grid (zero point 0) is back; the output keeps its name
    assert [n.op_type for n in rebuilt.graph.node] == ["Conv", "Relu", "Flatten", "Gemm", "Identity"]
    assert _sqnr(_run(model, FEEDS), _run(rebuilt, FEEDS)) > 30.0  # int8 weight rounding only


def _embedding_model() -> onnx.ModelProto:
    """Token ids -> embedding Gather -> Transpose to [seq, batch, dim] -> MatMul: the front of a char
    LSTM as text2tashkeel exports it, before quantize_dynamic."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embedding"),
             helper.make_node("Transpose", ["e"], ["t"], name="to_seq", perm=[1, 0, 2]),
             helper.make_node("MatMul", ["t", "m"], ["y"], name="proj")]
    model = helper.make_model(helper.make_graph(
        nodes, "embedding", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [12, 1, 5])],
        [numpy_helper.from_array(rng.normal(size=(30, 16)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.normal(size=(16, 5)).astype(np.float32) * 0.3, "m")]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_quantized_embedding_dequantized_after_data_movement_builds(tmp_path):
    """quantize_dynamic quantizes the embedding table, and the graph gathers and transposes int8
    rows before its DequantizeLinear: an activation DQ that no QuantizeLinear feeds. It becomes
    the float table with the same Gather and Transpose; the arm-cpu build runs it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tests.realmodels import evaluate

    onnx.save(_embedding_model(), str(tmp_path / "float.onnx"))
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Gather", "Transpose"])
    dynamic = onnx.load(str(tmp_path / "dynamic.onnx"))
    movement = [n for n in dynamic.graph.node if n.op_type == "DequantizeLinear"]
    assert movement and all(n.input[0] not in {i.name for i in dynamic.graph.initializer} for n in movement)
    rebuilt, _ = float_from_quantized(dynamic)
    assert "DequantizeLinear" not in {n.op_type for n in rebuilt.graph.node}
    ids = [{"ids": RNG.integers(0, 30, (1, 12)).astype(np.int64)} for _ in range(8)]
    assert _sqnr(_run(_embedding_model(), ids), _run(rebuilt, ids)) > 35.0  # the table's uint8 rounding only
    np.savez(tmp_path / "calib.npz", ids=np.concatenate([feed["ids"] for feed in ids]))
    proc = run_cli("build", "--model", str(tmp_path / "dynamic.onnx"), "--target", "arm-cpu", "--calib",
                   str(tmp_path / "calib.npz"), "--no-host-report", "--out", str(tmp_path / "bundle"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = evaluate.run_tflite(tmp_path / "bundle" / "model.fp32.tflite", evaluate.manifest(tmp_path / "bundle")["io"],
                              np.concatenate([feed["ids"] for feed in ids[:3]]))[0]
    expected = _run(dynamic, ids[:3])
    assert np.max(np.abs(got.reshape(expected.shape) - expected)) <= 1e-4 * max(1.0, float(np.max(np.abs(expected))))
