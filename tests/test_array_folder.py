"""A folder of .npy / .npz files as calibration and eval data (edgepipe/array_folder.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepipe.data import infer_static_shape, load_dataset
from edgepipe.errors import UserError
from tests.helpers import run_cli

NCHW = {"x": ((1, 3, 4, 4), np.float32)}
RNG = np.random.default_rng(7)


def _samples(count, shape=(3, 4, 4)):
    return RNG.standard_normal((count, *shape)).astype(np.float32)


def _error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)


def test_one_sample_per_file_with_or_without_batch_dim_in_sorted_order(tmp_path):
    values = _samples(3)
    np.save(tmp_path / "b.npy", values[1][None])  # with the input's batch dim of 1
    np.save(tmp_path / "a.npy", values[0])  # without it
    np.save(tmp_path / "c.npy", values[2].astype(np.float64))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(tmp_path, NCHW)
    assert len(ds) == 3 and ds.labels is None and ds.kind == "array folder"
    np.testing.assert_array_equal(ds.stack("x"), values)
    assert ds.sample(0)["x"].shape == (1, 3, 4, 4) and ds.sample(2)["x"].dtype == np.float32


def test_stacked_files_of_different_sizes_concatenate_and_limit_spreads(tmp_path):
    batches = [_samples(n) for n in (4, 1, 3)]
    for i, batch in enumerate(batches):
        np.save(tmp_path / f"batch_{i:03d}.npy", batch)
    everything = np.concatenate(batches)
    ds = load_dataset(tmp_path, NCHW)
    assert len(ds) == 8
    np.testing.assert_array_equal(ds.stack("x"), everything)
    limited = load_dataset(tmp_path, NCHW, limit=3)
    np.save(tmp_path.parent / "all.npy", everything)
    expected = load_dataset(tmp_path.parent / "all.npy", NCHW, limit=3)  # the same spread rule as one file
    np.testing.assert_array_equal(limited.stack("x"), expected.stack("x"))


def test_npz_files_feed_several_inputs_with_labels(tmp_path):
    specs = {"tokens": ((1, 5), np.int64), "mask": ((1, 5), np.float32)}
    tokens, mask = RNG.integers(0, 100, (3, 5)), RNG.random((3, 5)).astype(np.float32)
    np.savez(tmp_path / "0.npz", tokens=tokens[:2], mask=mask[:2], labels=np.array([4, 1]))
    np.savez(tmp_path / "1.npz", tokens=tokens[2], mask=mask[2], labels=np.array(7))  # one sample, scalar label
    ds = load_dataset(tmp_path, specs)
    assert len(ds) == 3 and ds.labels.tolist() == [4, 1, 7]
    np.testing.assert_array_equal(ds.stack("tokens"), tokens)
    np.testing.assert_array_equal(ds.stack("mask"), mask)
    assert ds.sample(2)["tokens"].dtype == np.int64


def test_class_subfolders_label_every_sample_of_a_file(tmp_path):
    for name, count in (("cat", 2), ("dog", 1)):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "part.npy", _samples(count))
    ds = load_dataset(tmp_path, NCHW)
    assert ds.labels.tolist() == [0, 0, 1] and ds.class_names == ["cat", "dog"]


def test_only_one_file_is_open_while_reading(tmp_path, monkeypatch):
    from edgepipe import array_folder

    for i in range(4):
        np.save(tmp_path / f"{i}.npy", _samples(2))
    ds = load_dataset(tmp_path, NCHW)
    opened = []
    real_open = array_folder._open
    monkeypatch.setattr(array_folder, "_open", lambda path, specs: opened.append(path.name) or real_open(path, specs))
    for batch in ds.batches(3):
        assert batch["x"].shape[0] in (3, 2)
    assert opened == ["0.npy", "1.npy", "2.npy", "3.npy"]  # each file once, in order


def test_static_shape_is_taken_from_the_first_file(tmp_path):
    np.save(tmp_path / "0.npy", _samples(1, (3, 6, 5))[0])
    assert infer_static_shape(tmp_path, "x", declared=("N", 3, "H", "W")) == (1, 3, 6, 5)
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    np.save(stacked / "0.npy", _samples(4, (3, 6, 5)))
    assert infer_static_shape(stacked, "x", declared=("N", 3, "H", "W")) == (1, 3, 6, 5)


def test_errors_name_the_file(tmp_path):
    np.save(tmp_path / "0.npy", _samples(1)[0])
    bad = _samples(2)
    bad[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "1.npy", bad)
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, NCHW)
    _error(err, "1.npy", "NaN", "sample 1")

    (tmp_path / "1.npy").unlink()
    np.save(tmp_path / "2.npy", _samples(1, (3, 5, 4)))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, NCHW)
    _error(err, "2.npy", "shape")


def test_mixed_kinds_and_partial_labels_are_refused(tmp_path):
    from PIL import Image

    np.save(tmp_path / "0.npy", _samples(1))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "1.png")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, NCHW)
    _error(err, "both images and .npy/.npz")

    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "0.npz", x=_samples(1), labels=np.array([1]))
    np.savez(folder / "1.npz", x=_samples(1))
    with pytest.raises(UserError) as err:
        load_dataset(folder, NCHW)
    _error(err, "1.npz", "labels")


def _two_input_model(path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "y"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["out"], name="relu")]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])],
        [onnx.numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("target,model_file", [("arm-cpu", "model.tflite"), ("jetson", "model.qdq.onnx")])
def test_folder_calibrates_exactly_as_one_npz_of_the_same_samples(tmp_path, target, model_file):
    _two_input_model(tmp_path / "m.onnx")
    x, y = _samples(12), _samples(12, (4, 4, 4))
    np.savez(tmp_path / "all.npz", x=x, y=y)
    folder = tmp_path / "dumps"
    folder.mkdir()
    for i in range(0, 12, 5):  # what a data loop writes: a stacked batch per file
        np.savez(folder / f"step_{i:03d}.npz", x=x[i:i + 5], y=y[i:i + 5])
    bundles = {}
    for name, calib in (("npz", tmp_path / "all.npz"), ("folder", folder)):
        out = tmp_path / f"out-{name}"
        result = run_cli("build", "--model", str(tmp_path / "m.onnx"), "--target", target, "--calib", str(calib),
                         "--out", str(out), "--no-host-report", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        bundles[name] = out
    assert (bundles["npz"] / model_file).read_bytes() == (bundles["folder"] / model_file).read_bytes()
    assert (bundles["npz"] / "calibration.json").read_bytes() == (bundles["folder"] / "calibration.json").read_bytes()
