"""Inputs a release checker tries, each refused in one line before any large read or write:
a .npy header declaring gigabytes, a bundle archive of a million empty headers or one member of
gigabytes of zeros (a few MB packed), and paths with line breaks in the build summary."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
import zipfile

import numpy as np
import onnx
import pytest

from edgepipe.data import load_dataset
from edgepipe.delivery.archive import safe_extract
from edgepipe.errors import UserError
from tests.helpers import run_cli, tiny_conv_model

SPEC = {"x": ((1, 3, 8, 8), np.dtype(np.float32))}


def _giant_header(version: int) -> bytes:
    width = 2 if version == 1 else 4
    declared = 0xFFFF if version == 1 else 0xFFFFFFF0
    return (b"\x93NUMPY" + bytes([version, 0]) + declared.to_bytes(width, "little")
            + b"{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3, 8, 8), }")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_npy_header_declaring_gigabytes_is_refused_before_reading(tmp_path, version):
    path = tmp_path / "giant.npy"
    path.write_bytes(_giant_header(version))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"giant\.npy: not a readable numeric \.npy file \(its \.npy header declares"):
            load_dataset(path, SPEC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # numpy alone reads (allocates) all the bytes declared before checking its limit
    with zipfile.ZipFile(tmp_path / "giant.npz", "w") as archive:
        archive.writestr("x.npy", _giant_header(version))
    with pytest.raises(UserError, match="header declares"):
        load_dataset(tmp_path / "giant.npz", SPEC)


def test_archive_bombs_are_refused_from_their_headers(tmp_path):
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as tar:
        info = tarfile.TarInfo("b/0")
        for index in range(100_001):
            info.name = f"b/{index}"
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match="more than the 100000 members a bundle has"):
        safe_extract(many, tmp_path / "dest")

    zeros = tmp_path / "zeros.tar.gz"
    size = 1 << 30

    class Zeros(io.RawIOBase):
        left = size

        def readinto(self, buffer):
            count = min(len(buffer), self.left)
            buffer[:count] = bytes(count)
            self.left -= count
            return count

    with tarfile.open(zeros, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("b/manifest.json")
        info.size = size
        tar.addfile(info, Zeros())
    assert zeros.stat().st_size < size // 200
    with pytest.raises(UserError, match=r"members add up to more than \d+ bytes unpacked .*a decompression bomb"):
        safe_extract(zeros, tmp_path / "dest2")
    assert not (tmp_path / "dest2" / "b").exists()


def test_paths_with_line_breaks_stay_one_line_in_the_summary(tmp_path):
    onnx.save(tiny_conv_model(), str(tmp_path / "new\nline.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    result = run_cli("build", "--model", "new\nline.onnx", "--calib", "calib.npz", "--target", "arm-cpu",
                     "--out", "o\nerror: forged", "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o\nerror: forged" / "model.tflite").is_file()
    assert "bundle: o\\nerror: forged" in result.stdout
    assert not any(line.startswith("error: forged") for line in (result.stdout + result.stderr).splitlines())
    verified = run_cli("verify", "o\nerror: forged", cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("OK: ")


def test_a_resealed_bundle_with_a_broken_or_outside_model_is_one_line(tmp_path):
    """A bundle resealed after its model.tflite was replaced passes verify; LiteRT's ValueError
    ("not a valid Flatbuffer") was an internal error, and the manifest's model name could point
    outside the bundle."""
    from edgepipe.backends.tflite.probe import TfliteTensorProbe

    (tmp_path / "model.tflite").write_bytes(b"TFL3 not a flatbuffer")
    with pytest.raises(UserError, match=r"model\.tflite: LiteRT cannot load it \(.*\); rebuild the bundle"):
        TfliteTensorProbe(tmp_path, {"model": "model.tflite"})
    with pytest.raises(UserError, match=r"manifest names model '\.\./other/model\.tflite', not a file in the bundle"):
        TfliteTensorProbe(tmp_path, {"model": "../other/model.tflite"})


def test_a_range_sized_by_constants_is_one_line_with_nothing_native_on_stderr(tmp_path):
    """A Range of 2e9 elements (8 GB, just under the allocation-bomb bound of 2^31 elements) on a
    machine that cannot hold it:
    onnxsim printed the node's name raw (terminal controls and all), ONNX Runtime's colored error
    log and Python tracebacks to fd 2 while folding it, then fold's run failed as an internal error."""
    import resource
    import subprocess
    import sys

    from onnx import helper, numpy_helper

    name = "range\x1b]0;title\x07"
    constants = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s", 0), ("l", 2e9), ("d", 1))]
    nodes = [helper.make_node("Range", ["s", "l", "d"], ["r"], name=name),
             helper.make_node("ReduceSum", ["r"], ["t"], keepdims=0, name="sum"),
             helper.make_node("Add", ["x", "t"], ["y"], name="add")]
    x, y = (helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in ("x", "y"))
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], constants),
                                opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.ones((4, 1, 4), np.float32))

    def bounded():  # whatever the host's memory, 8 GB is never handed out
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    result = subprocess.run([sys.executable, "-m", "edgepipe", "build", "--model", "model.onnx", "--calib",
                             "calib.npz", "--target", "jetson", "--out", "out", "--no-host-report"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, preexec_fn=bounded)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: ONNX Runtime could not allocate a tensor (8000000000 bytes) running node "
        "'range\\x1b]0;title\\x07' (Range): the model computes more data than this machine's memory holds; "
        "check the shapes the model computes"], result.stderr
    assert not (tmp_path / "out").exists()
