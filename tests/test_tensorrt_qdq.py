"""Q/DQ placement for TensorRT explicit quantization, and the Q/DQ model's numerics in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from edgepipe import graph, quantmath
from edgepipe.backends.qdq import write_qdq_model
from edgepipe.calibrate import calibrate
from edgepipe.data import load_dataset
from edgepipe.errors import UserError


def make_model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def calibrate_random(model, tmp_path, samples=8, seed=0):
    """Real calibration (min/max) on random inputs, through the project's dataset loader."""
    specs = {v.name: (tuple(graph.tensor_shape(v)), np.float32) for v in graph.graph_inputs(model)}
    rng = np.random.default_rng(seed)
    arrays = {name: rng.standard_normal((samples, *shape[1:])).astype(np.float32) for name, (shape, _) in specs.items()}
    path = tmp_path / f"calib_{seed}.npz"
    np.savez(path, **arrays)
    return calibrate(model, load_dataset(path, specs, {}), {"method": "minmax", "rounds": 1})


def rng_weights(*shape, seed=1):
    return np.random.default_rng(seed + len(shape)).standard_normal(shape).astype(np.float32) * 0.3


def node_by_name(model, name):
    return next(n for n in model.graph.node if n.name == name)


def producer_op(model, tensor):
    producer = graph.producers(model).get(tensor)
    return producer.op_type if producer is not None else None


def dq_source(model, tensor):
    """For a DQ output, the float tensor its Q node reads (or the int8 initializer)."""
    producers = graph.producers(model)
    dq = producers[tensor]
    assert dq.op_type == "DequantizeLinear"
    q = producers.get(dq.input[0])
    return q.input[0] if q is not None else dq.input[0]


def attr(node, name, default=None):
    return graph.node_attributes(node).get(name, default)


# --- placement rules ------------------------------------------------------------------------------


def conv_relu_conv():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    inits = {"w1": rng_weights(6, 3, 3, 3), "b1": rng_weights(6), "w2": rng_weights(4, 6, 1, 1)}
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])], inits)


def test_weighted_op_inputs_quantized_outputs_not(tmp_path):
    model = conv_relu_conv()
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    conv1, conv2, relu = (node_by_name(qdq, n) for n in ("conv1", "conv2", "relu1"))
    assert producer_op(qdq, conv1.input[0]) == producer_op(qdq, conv2.input[0]) == "DequantizeLinear"
    assert dq_source(qdq, conv1.input[0]) == "x" and dq_source(qdq, conv2.input[0]) == "r1"
    assert producer_op(qdq, conv1.input[1]) == "DequantizeLinear" and conv1.input[1] != "w1"
    assert relu.input[0] == "c1", "conv output must not get its own Q/DQ (ReLU fuses into the conv)"
    assert conv1.input[2] == "b1", "bias stays float"
    assert report["activation_pairs"] == 2 and report["weight_pairs"] == 2 and report["qdq_pairs"] == 4
    assert set(report["quantized_nodes"]) == {"conv1", "conv2"}
    counts = {op: sum(n.op_type == op for n in qdq.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    assert counts == {"QuantizeLinear": 4, "DequantizeLinear": 4}


def test_weight_dequantize_is_per_channel_axis0_with_positive_scales(tmp_path):
    model = conv_relu_conv()
    qdq, _ = write_qdq_model(model, calibrate_random(model, tmp_path))
    dq = graph.producers(qdq)[node_by_name(qdq, "conv1").input[1]]
    assert attr(dq, "axis") == 0
    scales = graph.constant_value(qdq, dq.input[1])
    zero_points = graph.constant_value(qdq, dq.input[2])
    assert scales.shape == (6,) and np.all(scales > 0)
    assert zero_points.dtype == np.int8 and not zero_points.any()
    # the dequantized weight is within half a step of the float weight, channel by channel
    w = graph.constant_value(model, "w1")
    q = graph.producers(qdq)[dq.input[0]]
    on_grid = graph.constant_value(qdq, q.input[0])
    assert np.all(np.abs(on_grid - w) <= scales.reshape(-1, 1, 1, 1) / 2 + 1e-7)


def test_activation_scale_is_calibrated_amax_over_127_zero_point_int8(tmp_path):
    model = conv_relu_conv()
    calibration = calibrate_random(model, tmp_path)
    qdq, _ = write_qdq_model(model, calibration)
    dq = graph.producers(qdq)[node_by_name(qdq, "conv2").input[0]]
    scale = graph.constant_value(qdq, dq.input[1])
    zero = graph.constant_value(qdq, dq.input[2])
    assert scale.shape == () and np.isclose(float(scale), calibration.tensors["r1"].amax / 127, rtol=1e-6)
    assert zero.dtype == np.int8 and int(zero) == 0


def residual_model(skip_from_conv=False):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["y"], name="relu_out"),
    ]
    inits = {"w1": rng_weights(4, 4, 3, 3), "w2": rng_weights(4, 4, 3, 3, seed=5)}
    return make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 4, 6, 6])], inits)


def test_residual_add_quantizes_only_the_skip_input(tmp_path):
    model = residual_model()
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    add = node_by_name(qdq, "residual")
    assert add.input[0] == "c2", "the conv branch feeds the add directly (TensorRT fuses add into conv2)"
    assert producer_op(qdq, add.input[1]) == "DequantizeLinear" and dq_source(qdq, add.input[1]) == "r1"
    assert add.input[1] == node_by_name(qdq, "conv2").input[0], "one shared Q/DQ pair for r1"
    assert "conv2" in report["quantized_nodes"]["residual"]["reason"]
    assert report["activation_pairs"] == 2  # x and r1, nothing on c2 / s / y


def test_add_without_weighted_input_stays_float(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
        helper.make_node("Sigmoid", ["x"], ["b"], name="sig_b"),
        helper.make_node("Add", ["a", "b"], ["y"], name="plain_add"),
    ]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], {})
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    assert not any(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    assert "plain_add" in report["float_nodes"] and report["qdq_pairs"] == 0


def test_maxpool_input_quantized(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 3, 3])], {"w": rng_weights(4, 3, 3, 3)})
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    pool = node_by_name(qdq, "pool")
    assert dq_source(qdq, pool.input[0]) == "r"
    assert report["quantized_nodes"]["pool"]["op"] == "MaxPool"


def test_global_max_pool_input_quantized(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GlobalMaxPool", ["c"], ["y"], name="gmp")]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 1, 1])], {"w": rng_weights(4, 3, 3, 3)})
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    assert dq_source(qdq, node_by_name(qdq, "gmp").input[0]) == "c"
    assert report["quantized_nodes"]["gmp"]["op"] == "GlobalMaxPool"


@pytest.mark.parametrize("trans_b, axis", [(0, 1), (1, 0)])
def test_gemm_weight_axis_is_output_features(tmp_path, trans_b, axis):
    w = rng_weights(5, 3) if trans_b else rng_weights(3, 5)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b)]
    model = make_model(nodes, [("x", [1, 3])], [("y", [1, 5])], {"w": w, "b": rng_weights(5)})
    qdq, _ = write_qdq_model(model, calibrate_random(model, tmp_path))
    dq = graph.producers(qdq)[node_by_name(qdq, "fc").input[1]]
    assert attr(dq, "axis") == axis and graph.constant_value(qdq, dq.input[1]).shape == (5,)


def test_matmul_constant_and_activation_operands(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm_weight"),
        helper.make_node("MatMul", ["h", "x2"], ["y"], name="mm_acts"),
    ]
    model = make_model(nodes, [("x", [1, 2, 3]), ("x2", [1, 5, 4])], [("y", [1, 2, 4])], {"w": rng_weights(3, 5)})
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    weight_dq = graph.producers(qdq)[node_by_name(qdq, "mm_weight").input[1]]
    assert attr(weight_dq, "axis") == 1 and graph.constant_value(qdq, weight_dq.input[1]).shape == (5,)
    acts = node_by_name(qdq, "mm_acts")
    assert [dq_source(qdq, t) for t in acts.input] == ["h", "x2"]
    assert report["quantized_nodes"]["mm_acts"]["inputs"] == ["h", "x2"]


@pytest.mark.parametrize("weight_shape", [(2, 4, 5), (3, 1, 4, 5)])
def test_batched_matmul_weight_is_per_tensor_and_loads_in_optimized_onnx_runtime(weight_shape, tmp_path):
    """ONNX Runtime fuses DQ -> MatMul into an integer MatMul that takes per-column scales on a
    2-D B only ("b zero point is not valid"); a batched constant B is quantized per tensor."""
    import onnxruntime as ort

    x_shape, y_shape = [1, 2, 3, 4], [weight_shape[0], 2, 3, 5] if len(weight_shape) == 4 else [1, 2, 3, 5]
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [("x", x_shape)],
                       [("y", y_shape)], {"w": rng_weights(*weight_shape)})
    calibration = calibrate_random(model, tmp_path)
    qdq, report = write_qdq_model(model, calibration)
    weight_dq = graph.producers(qdq)[node_by_name(qdq, "mm").input[1]]
    assert attr(weight_dq, "axis") is None and graph.constant_value(qdq, weight_dq.input[1]).shape == ()
    assert "per-tensor" in report["quantized_nodes"]["mm"]["reason"]
    amax = calibration.tensors["x"].amax  # inside the calibrated range: rounding only, no clipping
    x = np.clip(np.random.default_rng(3).standard_normal(x_shape), -amax, amax).astype(np.float32)
    got = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    exact = x @ model_weight(model, "w")
    w_step = float(np.max(np.abs(model_weight(model, "w")))) / 127
    weight = model_weight(model, "w")
    bound = calibration.symmetric_scale("x") * np.abs(weight).sum(-2).max() + w_step * np.abs(x).sum(-1).max()
    assert np.max(np.abs(got - exact)) <= bound


def test_opset_21_qdq_loads_with_the_documented_onnx_runtime_setting(tmp_path):
    """At opset 21 the Q/DQ nodes we write carry int8 zero points and no output_dtype; the README's
    workaround for ONNX Runtime's own passes (which write a QuantizeLinear whose output_dtype and
    zero point disagree) loads the model with every other optimization on."""
    import onnxruntime as ort

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Add", ["c", "x"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2])]
    model = make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 2, 3, 3])], {"w": rng_weights(2, 2, 1, 1)})
    model.opset_import[0].version, model.ir_version = 21, 10
    qdq, _ = write_qdq_model(model, calibrate_random(model, tmp_path))
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear":
            assert attr(node, "output_dtype") is None
            assert graph.constant_value(qdq, node.input[2]).dtype == np.int8
    x = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32) * 0.5}
    plain = graph.make_session(qdq).run(None, x)[0]
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["QDQS8ToU8Transformer"])
    np.testing.assert_allclose(session.run(None, x)[0], plain, atol=1e-5)


def model_weight(model, name):
    return graph.constant_value(model, name)


def test_conv_transpose_weight_axis_1(tmp_path):
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", strides=[2, 2])]
    model = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 7, 10, 10])], {"w": rng_weights(4, 7, 2, 2)})
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path))
    dq = graph.producers(qdq)[node_by_name(qdq, "deconv").input[1]]
    assert attr(dq, "axis") == 1 and graph.constant_value(qdq, dq.input[1]).shape == (7,)
    ref = graph.make_session(model).run(None, {"x": np.ones((1, 4, 5, 5), np.float32)})[0]
    out = graph.make_session(qdq).run(None, {"x": np.ones((1, 4, 5, 5), np.float32)})[0]
    assert quantmath.sqnr_db(ref, out) > 25


def test_keep_float_is_a_per_node_decision(tmp_path):
    model = conv_relu_conv()
    calibration = calibrate_random(model, tmp_path)
    qdq, report = write_qdq_model(model, calibration, keep_float={"conv2"})
    conv2 = node_by_name(qdq, "conv2")
    assert conv2.input[0] == "r1" and conv2.input[1] == "w2", "conv2 reads float activation and float weight"
    assert producer_op(qdq, node_by_name(qdq, "conv1").input[0]) == "DequantizeLinear"
    assert "conv2" in report["float_nodes"] and "conv2" not in report["quantized_nodes"]
    assert report["qdq_pairs"] == 2
    with pytest.raises(UserError, match="no_such_node"):
        write_qdq_model(model, calibration, keep_float={"no_such_node"})


def test_graph_io_names_unchanged_and_int8_weight_storage(tmp_path):
    model = residual_model()
    calibration = calibrate_random(model, tmp_path)
    for int8_weights in (False, True):
        qdq, report = write_qdq_model(model, calibration, int8_weights=int8_weights)
        assert [i.name for i in graph.graph_inputs(qdq)] == ["x"] and [o.name for o in qdq.graph.output] == ["y"]
        weight_inputs = [graph.producers(qdq)[node_by_name(qdq, n).input[1]] for n in ("conv1", "conv2")]
        stored = [graph.constant_value(qdq, dq.input[0]) for dq in weight_inputs]
        if int8_weights:
            assert all(s is not None and s.dtype == np.int8 for s in stored) and report["weight_storage"] == "int8-dq"
        else:
            assert all(s is None for s in stored)  # DQ reads a Q output, Q reads float-on-grid weights
        assert graph.constant_value(qdq, "w1") is None, "the original float weight is gone"


def test_per_tensor_weights_when_per_channel_off(tmp_path):
    model = conv_relu_conv()
    qdq, report = write_qdq_model(model, calibrate_random(model, tmp_path), per_channel=False)
    dq = graph.producers(qdq)[node_by_name(qdq, "conv1").input[1]]
    assert attr(dq, "axis") is None and graph.constant_value(qdq, dq.input[1]).shape == ()
    assert report["per_channel"] is False


# --- numerics -------------------------------------------------------------------------------------


def conv2d_int(x_q, w_q, pads):
    """Integer convolution (stride 1): int8 x int8 products accumulated in int64."""
    x = np.pad(x_q.astype(np.int64), ((0, 0), (0, 0), (pads, pads), (pads, pads)))
    kh, kw = w_q.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))  # N, C, H, W, kh, kw
    return np.einsum("nchwij,ocij->nohw", windows, w_q.astype(np.int64))


def test_qdq_model_matches_numpy_int8_simulation(tmp_path):
    """ORT's Q/DQ graph computes exactly what TensorRT's int8 kernels compute: int8 x int8 -> int32."""
    model = conv_relu_conv()
    calibration = calibrate_random(model, tmp_path, samples=16)
    qdq, _ = write_qdq_model(model, calibration)
    x = np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ort_y = graph.make_session(qdq).run(None, {"x": x})[0]

    w1_q, w1_s = quantmath.per_channel_symmetric(graph.constant_value(model, "w1"), axis=0)
    w2_q, w2_s = quantmath.per_channel_symmetric(graph.constant_value(model, "w2"), axis=0)
    sx, sr = calibration.symmetric_scale("x"), calibration.symmetric_scale("r1")
    acc1 = conv2d_int(quantmath.quantize(x, sx), w1_q, pads=1)
    r1 = np.maximum(acc1 * (sx * w1_s.astype(np.float64)).reshape(1, -1, 1, 1)
                    + graph.constant_value(model, "b1").reshape(1, -1, 1, 1), 0)
    acc2 = conv2d_int(quantmath.quantize(r1, sr), w2_q, pads=0)
    sim_y = acc2 * (sr * w2_s.astype(np.float64)).reshape(1, -1, 1, 1)

    step = sr * float(np.max(np.abs(w2_q))) * float(np.max(w2_s))  # one int8 step of r1, through conv2
    diff = np.abs(sim_y - ort_y)
    assert np.mean(diff < 1e-4 * np.max(np.abs(sim_y))) > 0.97, "float32 rounding may flip a rare tie only"
    assert diff.max() <= 6 * step


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The demo CNN (BN folded), calibrated on its 200 calibration PNGs, and its Q/DQ form."""
    from edgepipe.demo import DEMO_PREPROCESS, demo_calib_dir, demo_data_dir
    from edgepipe.fold.batchnorm import fold_batchnorm
    from edgepipe.stages.export import run_export

    model = run_export("edgepipe.demo.model:build_demo", None, {"image": [1, 3, 32, 32]}, output_names=["logits"])
    model, _ = fold_batchnorm(model)
    specs = {"image": ((1, 3, 32, 32), np.float32)}
    calibration = calibrate(model, load_dataset(demo_calib_dir(), specs, DEMO_PREPROCESS), {"rounds": 1})
    qdq, report = write_qdq_model(model, calibration)
    data = np.load(demo_data_dir() / "eval.npz")
    return model, qdq, report, data["image"].astype(np.float32), data["labels"], calibration


def test_demo_cnn_qdq_matches_fp32_in_onnx_runtime(demo_models):
    model, qdq, report, images, labels, _ = demo_models
    fp32, int8 = graph.make_session(model), graph.make_session(qdq)
    ref = np.concatenate([fp32.run(None, {"image": im[None]})[0] for im in images])
    out = np.concatenate([int8.run(None, {"image": im[None]})[0] for im in images])
    sqnr = quantmath.sqnr_db(ref, out)
    agreement = float(np.mean(ref.argmax(1) == out.argmax(1)))
    assert sqnr >= 25, sqnr
    assert agreement >= 0.97, agreement
    assert float(np.mean(out.argmax(1) == labels)) >= float(np.mean(ref.argmax(1) == labels)) - 0.02
    # the demo's residual block: skip input quantized, the pointwise-conv branch feeds the add directly
    add = next(n for n in qdq.graph.node if n.op_type == "Add")
    kinds = sorted(producer_op(qdq, t) for t in add.input)
    assert kinds == ["Conv", "DequantizeLinear"]
    assert report["qdq_pairs"] == sum(n.op_type == "DequantizeLinear" for n in qdq.graph.node)


def test_int8_weight_storage_computes_the_same_and_is_smaller(demo_models):
    model, qdq, _, images, _, calibration = demo_models
    compact, report = write_qdq_model(model, calibration, int8_weights=True)
    assert report["weight_storage"] == "int8-dq"
    assert len(compact.SerializeToString()) < 0.5 * len(qdq.SerializeToString())
    float_storage, int8_storage = graph.make_session(qdq), graph.make_session(compact)
    for image in images[:20]:
        a = float_storage.run(None, {"image": image[None]})[0]
        b = int8_storage.run(None, {"image": image[None]})[0]
        np.testing.assert_array_equal(a, b)


def test_new_tflite_ops_get_qdq_only_where_tensorrt_runs_int8(tmp_path):
    """ceil-mode pooling, Erf GELU, LayerNormalization with unused training outputs, HardSigmoid,
    PRelu: pooling inputs quantized, the rest FP16 (no Q/DQ of their own); the Q/DQ model passes
    the ONNX checker (inside write_qdq_model), runs in ONNX Runtime and tracks FP32."""
    sqrt2, half, one = np.array(np.sqrt(2.0)), np.array(0.5), np.array(1.0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p1"], name="max_ceil", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["p1"], ["p2"], name="avg_ceil", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
        helper.make_node("Conv", ["p2", "w2"], ["c2"], name="conv2"),
        helper.make_node("Div", ["c2", "sqrt2"], ["d"], name="gelu_div"),
        helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
        helper.make_node("Add", ["e", "one"], ["a"], name="gelu_add"),
        helper.make_node("Mul", ["c2", "a"], ["m"], name="gelu_mul"),
        helper.make_node("Mul", ["m", "half"], ["g"], name="gelu_half"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("LayerNormalization", ["f", "gamma", "beta"], ["n", "mean", "inv_std"], name="ln"),
        helper.make_node("Gemm", ["n", "w3"], ["h"], name="fc", transB=1),
        helper.make_node("HardSigmoid", ["h"], ["hs"], name="hard_sigmoid"),
        helper.make_node("PRelu", ["hs", "slope"], ["y"], name="prelu"),
    ]
    inits = {"w1": rng_weights(6, 3, 3, 3), "w2": rng_weights(8, 6, 1, 1), "w3": rng_weights(5, 72),
             "sqrt2": sqrt2, "half": half, "one": one, "gamma": np.ones(72), "beta": np.zeros(72),
             "slope": np.full(5, 0.1)}
    model = make_model(nodes, [("x", [1, 3, 9, 9])], [("y", [1, 5])], inits)
    calibration = calibrate_random(model, tmp_path)
    qdq, report = write_qdq_model(model, calibration)
    for pool in ("max_ceil", "avg_ceil"):
        assert producer_op(qdq, node_by_name(qdq, pool).input[0]) == "DequantizeLinear"
        assert report["quantized_nodes"][pool]["reason"].startswith("pooling input")
    for name in ("gelu_erf", "gelu_mul", "ln", "hard_sigmoid", "prelu"):
        assert all(producer_op(qdq, t) != "DequantizeLinear" for t in node_by_name(qdq, name).input), name
    assert list(node_by_name(qdq, "ln").output) == ["n"]  # TensorRT implements the first output only
    rng = np.random.default_rng(7)
    feeds = [rng.standard_normal((1, 3, 9, 9)).astype(np.float32) for _ in range(16)]
    fp32, int8 = graph.make_session(model), graph.make_session(qdq)
    ref = np.concatenate([fp32.run(None, {"x": x})[0] for x in feeds])
    out = np.concatenate([int8.run(None, {"x": x})[0] for x in feeds])
    assert quantmath.sqnr_db(ref, out) >= 20


@pytest.mark.parametrize("case", ["all-zero-conv-residual", "dead-relu-then-conv"])
def test_degenerate_numerics_get_representable_scales(case, tmp_path):
    """A zero-initialised BatchNorm gamma folded into a conv, a Relu that never fires: no scale of
    ~1e-14 (below FP16, TensorRT's fallback precision), and the Q/DQ model still computes FP32's result."""
    weights = rng_weights(4, 4, 3, 3)
    if case == "all-zero-conv-residual":
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Add", ["c", "x"], ["y"], name="add")]
        inits = {"w": np.zeros_like(weights)}
    else:
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Conv", ["r", "w"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
        inits = {"w": weights, "b": np.full(4, -100.0)}
    model = make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 4, 6, 6])], inits)
    qdq, _ = write_qdq_model(model, calibrate_random(model, tmp_path))
    scales = [numpy_helper.to_array(t) for t in qdq.graph.initializer if t.name.endswith("_scale")]
    assert scales and min(float(s.min()) for s in scales) > 1e-7
    x = np.random.default_rng(3).standard_normal((1, 4, 6, 6)).astype(np.float32)
    reference = graph.make_session(model).run(None, {"x": x})[0]
    got = graph.make_session(qdq).run(None, {"x": x})[0]
    assert np.all(np.isfinite(got)) and quantmath.sqnr_db(reference, got) >= 30
