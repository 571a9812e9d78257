"""With no `preprocess` settings, an image folder is read the way the model input says (layout,
channels, pixel scale): through the real CLI, where the config's defaults used to force NCHW, RGB
and 1/255 onto every model (an NHWC or one-channel model was refused; a uint8 model calibrated on
pixels scaled to 0..1 and rounded to 0 or 1)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.helpers import run_cli

RNG = np.random.default_rng(3)


def _images(folder, count=12, size=(10, 10)):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _model(path, input_type, shape, channels_last, channels):
    """Input -> (Cast) -> (Transpose to NCHW) -> Conv -> GlobalAveragePool."""
    nodes, name = [], "image"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [name], ["pixels"], name="to_float", to=TensorProto.FLOAT))
        name = "pixels"
    if channels_last:
        nodes.append(helper.make_node("Transpose", [name], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        name = "nchw"
    nodes += [helper.make_node("Conv", [name, "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("GlobalAveragePool", ["c"], ["out"], name="pool")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("image", input_type, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [numpy_helper.from_array(RNG.normal(size=(4, channels, 3, 3)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.parametrize("case,input_type,shape,channels_last,channels,expected_range", [
    ("nhwc-float", TensorProto.FLOAT, [1, 10, 10, 3], True, 3, (0.0, 1.0)),
    ("one-channel", TensorProto.FLOAT, [1, 1, 10, 10], False, 1, (0.0, 1.0)),
    ("uint8-nhwc", TensorProto.UINT8, [1, 10, 10, 3], True, 3, (0.0, 255.0)),
])
def test_image_folder_follows_the_model_input(case, input_type, shape, channels_last, channels, expected_range,
                                              tmp_path):
    _model(tmp_path / "m.onnx", input_type, shape, channels_last, channels)
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--target", "jetson", "--calib",
                     str(_images(tmp_path / "images")), "--out", str(out), "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tensors = json.loads((out / "calibration.json").read_text())["tensors"]
    conv_input = "nchw" if channels_last else ("pixels" if input_type != TensorProto.FLOAT else "image")
    low, high = tensors[conv_input]["min"], tensors[conv_input]["max"]
    # random pixels over 12 images span most of the pixel range, in the input's own units (0..1 for
    # float inputs, 0..255 for uint8: a uint8 input scaled by 1/255 would calibrate 0..1)
    assert expected_range[0] <= low and high <= expected_range[1]
    assert high - low >= 0.5 * (expected_range[1] - expected_range[0])


def test_uint8_nhwc_image_model_runs_on_arm_cpu(tmp_path):
    """An integer image input is an int32 TFLite input in the model's own layout: run.py feeds the
    eval images (the build runs it) and the int8 output agrees with FP32."""
    _model(tmp_path / "m.onnx", TensorProto.UINT8, [1, 10, 10, 3], True, 3)
    out = tmp_path / "out"
    result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--target", "arm-cpu", "--calib",
                     str(_images(tmp_path / "images", count=24)), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    io = json.loads((out / "manifest.json").read_text())["io"]["inputs"][0]
    assert io["shape"] == [1, 10, 10, 3] and io["layout"] is not None and io["layout"] == "NCHW"
    outputs = json.loads((out / "report" / "results.json").read_text())["accuracy"]["outputs"]
    assert outputs["out"]["sqnr_db"] > 25
