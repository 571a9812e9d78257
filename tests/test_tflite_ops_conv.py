"""Conformance of Conv / depthwise / grouped Conv / ConvTranspose lowerings against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.tflite_harness import check_conformance, delegate_partitions, make_interpreter, make_model

# (in_ch, out_ch, kernel, stride, dilation, group, padding, size)
CONV_CASES = [
    (3, 8, 3, 1, 1, 1, "same", 9),
    (4, 6, 3, 2, 1, 1, "valid", 11),
    (4, 6, 5, 2, 2, 1, "explicit", 13),
    (8, 8, 3, 1, 1, 8, "same", 10),  # depthwise
    (8, 16, 3, 2, 1, 8, "same_lower", 10),  # depthwise, multiplier 2, extra pad at the start
    (6, 9, 3, 1, 1, 3, "same", 8),  # grouped, 2 channels per group: dense block-diagonal CONV_2D
    (8, 12, 3, 2, 1, 4, "explicit", 9),  # grouped, strided, explicit pads
    (32, 32, 3, 1, 1, 4, "same", 6),  # grouped, 8 channels per group: one CONV_2D, [32, 3, 3, 8] filter
    (5, 7, 1, 1, 1, 1, "valid", 7),  # pointwise
    (3, 4, (3, 1), (1, 2), 1, 1, "explicit", 9),  # non-square kernel and stride
]


def _pads(padding, kernel, dilation):
    if padding == "same":
        return {"auto_pad": "SAME_UPPER"}
    if padding == "same_lower":
        return {"auto_pad": "SAME_LOWER"}
    if padding == "valid":
        return {}
    kh, kw = kernel
    return {"pads": [kh // 2, 0, (kh - 1) * dilation // 2 + 1, kw // 2]}


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_conv_matches_onnxruntime(case, tmp_path):
    in_ch, out_ch, kernel, stride, dilation, group, padding, size = case
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    rng = np.random.default_rng(sum(map(hash, map(str, case))) % 1000)
    weights = rng.normal(size=(out_ch, in_ch // group, *kernel)).astype(np.float32) * 0.3
    bias = rng.normal(size=out_ch).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, strides=list(stride),
                            dilations=[dilation, dilation], kernel_shape=list(kernel),
                            **_pads(padding, kernel, dilation))
    model = make_model([node], {"x": [1, in_ch, size, size + 1]}, ["y"], {"w": weights, "b": bias})
    report = check_conformance(model, tmp_path)
    expected_op = "DEPTHWISE_CONV_2D" if group == in_ch and group > 1 else "CONV_2D"
    histogram = report.result["op_histogram"]
    assert histogram.get(expected_op) == 1 and not {"SPLIT", "CONCATENATION"} & set(histogram), histogram
    for name in ("model.tflite", "model.fp32.tflite"):
        assert len(delegate_partitions(report.out_dir / name)) == 1, name


@pytest.mark.parametrize("in_ch,out_ch,group,filter_in", [(8, 8, 4, 8), (16, 16, 4, 16), (32, 32, 4, 8),
                                                          (64, 64, 8, 8)])
def test_grouped_conv_is_dense_only_where_groups_are_narrow(in_ch, out_ch, group, filter_in, tmp_path):
    """Groups of 2-4 channels (ResNeXt blocks on narrow tensors): a dense CONV_2D with a
    block-diagonal filter, whose XNNPACK GEMM is not mostly tile padding; 8 channels per group
    and more stay one grouped CONV_2D (filter input dim C / groups). Same in both models."""
    rng = np.random.default_rng(in_ch + group)
    weights = rng.normal(size=(out_ch, in_ch // group, 3, 3)).astype(np.float32) * 0.3
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, pads=[1, 1, 1, 1])
    model = make_model([node], {"x": [1, in_ch, 6, 7]}, ["y"],
                       {"w": weights, "b": rng.normal(size=out_ch).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    for name in ("model.tflite", "model.fp32.tflite"):
        interpreter = make_interpreter(report.out_dir / name, "reference")
        shapes = {d["index"]: list(d["shape"]) for d in interpreter.get_tensor_details()}
        convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
        assert len(convs) == 1 and shapes[convs[0]["inputs"][1]] == [out_ch, 3, 3, filter_in], name


@pytest.mark.parametrize("channels,kernel,stride,int8_group,float_group", [
    (24, 7, 1, 8, 8),  # ConvNeXt: groups of 8 (int8: 8 channels fill a tap's input step, 12 would pad to 16)
    (13, 7, 2, 13, 1),  # 13 channels: int8 one dense group; float keeps the depthwise op (13 overflows its tile)
    (16, (3, 9), 1, 16, 8),  # 27 taps
    (16, 5, 1, 1, 1),  # 25 taps: XNNPACK's depthwise kernel holds them, the depthwise op stays
])
def test_depthwise_beyond_25_taps_is_a_grouped_conv(channels, kernel, stride, int8_group, float_group, tmp_path):
    """A depthwise conv with more taps than XNNPACK's depthwise kernels hold (ConvNeXt's 7x7) runs
    there as one GEMM per channel; written as a grouped CONV_2D with up to a GEMM tile of channels
    per group (filter [C, kh, kw, group], each output channel reading its own input channel only)
    it has the same values as ONNX Runtime and is one XNNPACK partition in both models."""
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    rng = np.random.default_rng(channels + kernel[1])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=channels, strides=[stride, stride],
                            pads=[kernel[0] // 2, kernel[1] // 2] * 2)
    model = make_model([node], {"x": [1, channels, 10, 11]}, ["y"], {
        "w": rng.normal(size=(channels, 1, *kernel)).astype(np.float32) * 0.3,
        "b": rng.normal(size=channels).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    for name, group in (("model.tflite", int8_group), ("model.fp32.tflite", float_group)):
        interpreter = make_interpreter(report.out_dir / name, "reference")
        shapes = {d["index"]: list(d["shape"]) for d in interpreter.get_tensor_details()}
        (op,) = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        expected = (("CONV_2D", [channels, *kernel, group]) if group > 1
                    else ("DEPTHWISE_CONV_2D", [1, *kernel, channels]))
        assert (op["op_name"], shapes[op["inputs"][1]]) == expected, name
        assert len(delegate_partitions(report.out_dir / name)) == 1, name


def _conv_filter_shapes(report) -> dict[str, list[int]]:
    """The filter shape of the one CONV_2D in each model of a conformance report."""
    shapes = {}
    for name in ("model.tflite", "model.fp32.tflite"):
        interpreter = make_interpreter(report.out_dir / name, "reference")
        tensors = {d["index"]: list(d["shape"]) for d in interpreter.get_tensor_details()}
        (conv,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
        shapes[name] = tensors[conv["inputs"][1]]
        assert len(delegate_partitions(report.out_dir / name)) == 1, name
    return shapes


@pytest.mark.parametrize("kernel,pads,width,in_ch,float_taps", [
    (7, [3, 3, 3, 3], 16, 3, None), (3, [1, 1, 1, 1], 15, 3, None), (3, [0, 2, 1, 0], 12, 4, None),
    (2, [0, 0, 0, 0], 11, 3, 1), (4, [1, 2, 1, 2], 12, 3, None)],
    ids=["resnet-stem", "odd-width", "even-left-pad", "unread-last-column", "even-kernel-padded"])
def test_first_conv_with_stride_2_reads_pairs_of_columns(kernel, pads, width, in_ch, float_taps, tmp_path):
    """A stride-2 conv on <= 4 channels in int8: the [N, H, W / 2, 2C] view of the padded input (PAD
    on rows of W * C, RESHAPE) and a stride-1 filter with half the taps along W; the fp32 model
    keeps the plain conv unless the view adds no multiply-add (an even kernel) and no PAD.
    Fused Relu kept; same values as ONNX Runtime."""
    rng = np.random.default_rng(kernel + width)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem", strides=[2, 2], pads=pads),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [1, in_ch, 9, width]}, ["y"], {
        "w": rng.normal(size=(8, in_ch, kernel, kernel)).astype(np.float32) * 0.3,
        "b": rng.normal(size=8).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    taps = (kernel + pads[1] % 2 + 1) // 2
    float_filter = [8, kernel, float_taps, 2 * in_ch] if float_taps else [8, kernel, kernel, in_ch]
    assert _conv_filter_shapes(report) == {"model.tflite": [8, kernel, taps, 2 * in_ch],
                                           "model.fp32.tflite": float_filter}
    assert "RELU" not in report.result["op_histogram"]


def test_strided_conv1d_on_one_channel_reads_frames_of_samples(tmp_path):
    """An STFT written as a Conv1d (one sample channel, window 48, hop 16; audio frontends): the
    int8 model reads the samples as columns of 16 channels (the widest view whose taps fill the
    int8 tile: 3 taps, stride 1), cropping the samples no window reads; the fp32 model takes the
    same view (it adds no multiply-add). Same values as ONNX Runtime."""
    rng = np.random.default_rng(16)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="stft", strides=[16], kernel_shape=[48])
    model = make_model([node], {"x": [1, 1, 200]}, ["y"], {
        "w": rng.normal(size=(10, 1, 48)).astype(np.float32) * 0.3, "b": rng.normal(size=10).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert _conv_filter_shapes(report) == {"model.tflite": [10, 1, 3, 16], "model.fp32.tflite": [10, 1, 3, 16]}
    assert report.result["op_histogram"].get("SLICE") == 1 and "PAD" not in report.result["op_histogram"]


@pytest.mark.parametrize("stride,int8_group", [(4, 2), (8, 8)], ids=["convnext-stem", "vit-patches"])
def test_patchify_stem_reads_columns_that_fill_the_tile(stride, int8_group, tmp_path):
    """A k x k, stride-k stem on 3 channels (ConvNeXt, ViT patch embedding): int8 groups the
    columns with the fewest padded multiply-adds (stride 4: 2 or 4 columns tie, 6 channels pad
    less per tap than 12, so 2; stride 8: all 8 columns, 24 channels, one tap); fp32 reads all k
    columns as one tap (no multiply-add added). Same values as ONNX Runtime."""
    rng = np.random.default_rng(stride)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="stem", strides=[stride, stride])
    model = make_model([node], {"x": [1, 3, 2 * stride, 3 * stride]}, ["y"], {
        "w": rng.normal(size=(8, 3, stride, stride)).astype(np.float32) * 0.3,
        "b": rng.normal(size=8).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert _conv_filter_shapes(report) == {"model.tflite": [8, stride, stride // int8_group, 3 * int8_group],
                                           "model.fp32.tflite": [8, stride, 1, 3 * stride]}


def test_conv_without_bias_gets_int32_zero_bias_and_fused_relu6(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")]
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"],
                       {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)})
    report = check_conformance(model, tmp_path)
    histogram = report.result["op_histogram"]
    assert histogram["CONV_2D"] == 1 and "RELU6" not in histogram and "MINIMUM" not in histogram


@pytest.mark.parametrize("stride,pads,kernel,output_padding", [
    (2, [0, 0, 0, 0], 2, 0), (2, [1, 1, 1, 1], 4, 0), (1, [0, 0, 0, 0], 3, 0),
    (2, [3, 3, 3, 3], 4, 0),  # waifu2x upconv_7: neither SAME nor VALID, a window of the VALID output
    (2, [1, 0, 2, 1], 3, 0),  # asymmetric pads
    (2, [1, 1, 1, 1], 3, 1),  # output_padding within the end pad
])
def test_conv_transpose_matches_onnxruntime(stride, pads, kernel, output_padding, tmp_path):
    rng = np.random.default_rng(stride + kernel)
    extra = {"output_padding": [output_padding] * 2} if output_padding else {}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv", strides=[stride, stride],
                            pads=pads, kernel_shape=[kernel, kernel], **extra)
    model = make_model([node], {"x": [1, 4, 5, 6]}, ["y"],
                       {"w": rng.normal(size=(4, 3, kernel, kernel)).astype(np.float32) * 0.3,
                        "b": rng.normal(size=3).astype(np.float32)})
    report = check_conformance(model, tmp_path)
    assert report.result["op_histogram"]["TRANSPOSE_CONV"] == 1


def test_layout_change_that_moves_only_unit_dims_is_a_reshape(tmp_path):
    """A tf2onnx head: a [1, C, 1, 1] result (NHWC inside TFLite) reshaped to NHWC [1, 1, 1, C]
    (a speech embedding's output). Back to the ONNX layout only dims of 1 move, the same bytes:
    a RESHAPE, not a TRANSPOSE."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("GlobalMaxPool", ["c"], ["g"], name="pool"),
             helper.make_node("Reshape", ["g", "nhwc"], ["y"], name="to_nhwc")]
    constants = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "nhwc": np.array([1, 1, 1, 4], np.int64)}
    model = make_model(nodes, {"x": [1, 3, 9, 8]}, ["y"], constants)
    report = check_conformance(model, tmp_path)
    assert "TRANSPOSE" not in report.result["op_histogram"], report.result["op_histogram"]


def test_nhwc_graph_input_reshaped_to_nchw_keeps_its_layout(tmp_path):
    """tf2onnx's NHWC one-channel input (a speech embedding's [1, 76, 32, 1] log-mel frames): Pad,
    Reshape to NCHW [1, 1, H, W], Conv. The input reaches the Conv only through a Reshape, so the
    .tflite takes it in its ONNX layout: no TRANSPOSE before the Reshape."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("Reshape", ["p", "nchw"], ["r"], name="to_nchw"),
             helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    constants = {"pads": np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64), "nchw": np.array([1, 1, 11, 10], np.int64),
                 "w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32)}
    model = make_model(nodes, {"x": [1, 9, 8, 1]}, ["y"], constants)
    report = check_conformance(model, tmp_path)
    assert "TRANSPOSE" not in report.result["op_histogram"], report.result["op_histogram"]
    assert report.result["io"]["inputs"][0]["layout"] != "NHWC"
