"""edgepipe.data: image folders, .npz, .npy, preprocessing, and every user-facing data error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgepipe import images
from edgepipe.data import infer_static_shape, load_dataset
from edgepipe.errors import UserError

NCHW = {"x": ((1, 3, 8, 8), np.float32)}


def _png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8), mode="RGB").save(path)
    return path


def _solid(value, size=(8, 8)):
    return np.broadcast_to(np.asarray(value, np.uint8), (*size, 3)).copy()


def _one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)


# --- image folders -------------------------------------------------------------------------------


def test_flat_folder_is_sorted_unlabeled_and_preprocessed(tmp_path):
    for name, red in [("c.png", 30), ("a.png", 10), ("b.png", 20)]:
        _png(tmp_path / name, _solid([red, 100, 200]))
    (tmp_path / "notes.txt").write_text("ignored")
    pre = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 0.125]}
    ds = load_dataset(tmp_path, NCHW, pre)
    assert len(ds) == 3 and ds.names == ["x"] and ds.labels is None
    first = ds.sample(0)["x"]
    assert first.shape == (1, 3, 8, 8) and first.dtype == np.float32
    reds = [ds.sample(i)["x"][0, 0, 0, 0] * 0.5 + 0.1 for i in range(3)]
    np.testing.assert_allclose(np.array(reds) * 255, [10, 20, 30], atol=1e-3)
    np.testing.assert_allclose(first[0, 2], (200 / 255 - 0.3) / 0.125, rtol=1e-6)
    assert "3 samples" in ds.describe() and "no labels" in ds.describe()


def test_image_folder_layout_gives_sorted_class_labels(tmp_path):
    for cls in ["dog", "cat", "emu"]:
        for k in range(2):
            _png(tmp_path / cls / f"{k}.png", _solid([k, 0, 0]))
    ds = load_dataset(tmp_path, NCHW)
    assert ds.class_names == ["cat", "dog", "emu"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_folder_pixels_match_a_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        _png(tmp_path / f"{i}.png", picture)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]
    stacked = load_dataset(tmp_path, NCHW, {"mean": mean, "std": std}).stack("x")
    expected = ((pictures / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(stacked, expected, atol=1e-5)


def test_bgr_nhwc_grayscale_and_integer_inputs(tmp_path):
    _png(tmp_path / "a.png", _solid([10, 20, 30]))
    nhwc = load_dataset(tmp_path, {"x": ((1, 8, 8, 3), np.float32)}, {"channel_order": "BGR", "scale": 1})
    assert nhwc.sample(0)["x"][0, 0, 0].tolist() == [30, 20, 10]
    gray = load_dataset(tmp_path, {"x": ((1, 1, 8, 8), np.float32)}, {"scale": 1})
    assert gray.sample(0)["x"].shape == (1, 1, 8, 8)
    assert 10 < gray.sample(0)["x"][0, 0, 0, 0] < 30
    raw = load_dataset(tmp_path, {"x": ((1, 3, 8, 8), np.uint8)})
    assert raw.sample(0)["x"].dtype == np.uint8 and raw.sample(0)["x"][0, :, 0, 0].tolist() == [10, 20, 30]


def test_resize_center_crop_versus_stretch(tmp_path):
    thirds = np.zeros((10, 30, 3), np.uint8)
    thirds[:, :10, 0] = thirds[:, 10:20, 1] = thirds[:, 20:, 2] = 255
    _png(tmp_path / "a.png", thirds)
    spec = {"x": ((1, 3, 10, 10), np.float32)}
    cropped = load_dataset(tmp_path, spec, {"size": [10, 10]}).sample(0)["x"][0]
    assert np.all(cropped[1] == 1.0) and np.all(cropped[0] == 0) and np.all(cropped[2] == 0)
    stretched = load_dataset(tmp_path, spec, {"size": [10, 10], "resize": "stretch"}).sample(0)["x"][0]
    assert stretched[0, :, 0].min() > 0.9 and stretched[2, :, -1].min() > 0.9


def test_images_are_read_lazily(tmp_path, monkeypatch):
    for i in range(5):
        _png(tmp_path / f"{i}.png", _solid([i, 0, 0]))
    opened = []
    real_open = images._open_image
    monkeypatch.setattr(images, "_open_image", lambda path, gray: opened.append(path) or real_open(path, gray))
    ds = load_dataset(tmp_path, NCHW)
    assert len(opened) == 1  # only the first image, to validate the shape
    ds.sample(3)
    assert len(opened) == 2 and opened[-1].name == "3.png"


def test_limit_spreads_over_classes_and_batches_cover_everything(tmp_path):
    for cls in "abc":
        for k in range(4):
            _png(tmp_path / cls / f"{k}.png", _solid([k, 0, 0]))
    limited = load_dataset(tmp_path, NCHW, limit=3)
    assert len(limited) == 3 and limited.labels.tolist() == [0, 1, 2]
    full = load_dataset(tmp_path, NCHW)
    batches = list(full.batches(5))
    assert [len(b["x"]) for b in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), full.stack("x"))


def test_dynamic_spec_dims_use_the_image_size(tmp_path):
    _png(tmp_path / "a.png", np.zeros((6, 9, 3)))
    ds = load_dataset(tmp_path, {"x": (("batch", 3, None, "w"), np.float32)})
    assert ds.sample(0)["x"].shape == (1, 3, 6, 9)
    assert infer_static_shape(tmp_path, "x") == (1, 3, 6, 9)
    assert infer_static_shape(tmp_path, "x", {"size": [4, 5], "layout": "NHWC"}) == (1, 4, 5, 3)


# --- arrays -----------------------------------------------------------------------------------------


def test_npz_multi_input_with_labels_and_extra_keys(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", a=a, b=b, labels=np.arange(6), notes=np.zeros(2))
    specs = {"a": ((1, 4), np.float32), "b": ((1, 2, None), np.float32)}
    ds = load_dataset(tmp_path / "d.npz", specs)
    assert len(ds) == 6 and ds.labels.tolist() == list(range(6))
    sample = ds.sample(2)
    assert sample["a"].dtype == np.float32 and sample["a"].shape == (1, 4)
    np.testing.assert_allclose(sample["a"][0], a[2].astype(np.float32))
    np.testing.assert_array_equal(ds.stack("b"), b)
    assert infer_static_shape(tmp_path / "d.npz", "b") == (1, 2, 3)
    assert ds.ignored_members == ["notes"]  # the build warns that it named no input


def test_npy_single_input(tmp_path):
    values = np.arange(2 * 3 * 8 * 8, dtype=np.float64).reshape(2, 3, 8, 8)
    np.save(tmp_path / "d.npy", values)
    ds = load_dataset(tmp_path / "d.npy", NCHW)
    assert len(ds) == 2 and ds.labels is None
    np.testing.assert_array_equal(ds.sample(1)["x"][0], values[1].astype(np.float32))
    assert infer_static_shape(tmp_path / "d.npy", "anything") == (1, 3, 8, 8)


# --- errors -----------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "nope", NCHW)
    _one_line_error(err, "nope", "no such file")


def test_empty_folder(tmp_path):
    (tmp_path / "README.md").write_text("not an image")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, NCHW)
    _one_line_error(err, tmp_path, "no images")


def test_corrupt_image_is_named_first_or_later(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, NCHW)
    _one_line_error(err, "a.png", "cannot read image")
    (tmp_path / "a.png").unlink()
    _png(tmp_path / "a.png", _solid([1, 2, 3]))
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    ds = load_dataset(tmp_path, NCHW)
    with pytest.raises(UserError) as err:
        ds.sample(1)
    _one_line_error(err, "b.jpg")


def test_npz_missing_input_names_it_and_the_keys_present(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 3, 8, 8)), other=np.zeros(2))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.npz", NCHW)
    _one_line_error(err, "'x'", "image", "other", "d.npz")


def test_wrong_per_sample_shape(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 9)))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.npz", NCHW)
    _one_line_error(err, "'x'", "(3, 8, 9)", "[N, 3, 8, 8] or [N, 1, 3, 8, 8]")
    np.savez(tmp_path / "e.npz", x=np.zeros((2, 2, 3, 8, 8)))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "e.npz", NCHW)
    _one_line_error(err, "(2, 3, 8, 8)", "[N, 3, 8, 8] or [N, 1, 3, 8, 8]")


def test_batch_axis_forms_and_static_leading_dims(tmp_path):
    """[N, *shape[1:]] and [N, *shape] both feed a batch-1 input; a static leading dim other than 1
    belongs to every sample; each sample is fed in the input's exact shape."""
    values = np.random.default_rng(3).standard_normal((5, 3, 4, 5)).astype(np.float32)
    np.save(tmp_path / "plain.npy", values)
    np.save(tmp_path / "full.npy", values[:, None])
    for name in ("plain.npy", "full.npy"):
        ds = load_dataset(tmp_path / name, {"x": ((1, 3, 4, 5), np.float32)})
        assert len(ds) == 5 and ds.sample(2)["x"].shape == (1, 3, 4, 5)
        np.testing.assert_array_equal(ds.stack("x"), values)
    unbatched = load_dataset(tmp_path / "plain.npy", {"x": ((3, 4, 5), np.float32)})
    assert len(unbatched) == 5 and unbatched.sample(4)["x"].shape == (3, 4, 5)
    np.testing.assert_array_equal(unbatched.sample(4)["x"], values[4])
    np.testing.assert_array_equal(unbatched.stack("x"), values)
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "plain.npy", {"x": ((2, 3, 4, 5), np.float32)})
    _one_line_error(err, "(3, 4, 5)", "store it as [N, 2, 3, 4, 5]")
    state = np.zeros((6, 2, 1, 128), np.float32)  # an RNN state [2, B, 128] fixed to B = 1
    np.savez(tmp_path / "rnn.npz", h=state, x=np.zeros((6, 7), np.float32))
    ds = load_dataset(tmp_path / "rnn.npz", {"h": ((2, 1, 128), np.float32), "x": ((1, 7), np.float32)})
    assert ds.sample(0)["h"].shape == (2, 1, 128) and ds.sample(0)["x"].shape == (1, 7)
    assert infer_static_shape(tmp_path / "rnn.npz", "h", declared=(2, "B", 128)) == (2, 1, 128)
    assert infer_static_shape(tmp_path / "rnn.npz", "x", declared=(-1, 7)) == (1, 7)
    assert infer_static_shape(tmp_path / "full.npy", "x", declared=(0, 3, 4, 5)) == (1, 3, 4, 5)
    with pytest.raises(UserError) as err:
        infer_static_shape(tmp_path / "rnn.npz", "x", declared=("a", "b", "c", 7))
    _one_line_error(err, "'x'", "[N, ?, ?, 7] or [N, ?, ?, ?, 7]")


def test_image_shape_not_matching_the_model(tmp_path):
    _png(tmp_path / "a.png", _solid([1, 2, 3], size=(8, 8)))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, {"x": ((1, 3, 8, 8), np.float32)}, {"size": [4, 4]})
    _one_line_error(err, "preprocess size [4, 4] is not the model input's [height, width] [8, 8]")  # before decoding
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, {"x": ((1, 3, 8, 8), np.float32)}, {"grayscale": True})
    _one_line_error(err, "3 channels")


def test_non_numeric_dtype(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array(["a", "b"]))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.npz", {"x": ((1,), np.float32)})
    _one_line_error(err, "'x'", "non-numeric")


def test_labels_of_the_wrong_length(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 3, 8, 8)), labels=np.arange(2))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.npz", NCHW)
    _one_line_error(err, "labels", "2 entries", "3 samples")


def test_npy_for_a_multi_input_model(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((2, 4)))
    specs = {"a": ((1, 4), np.float32), "b": ((1, 4), np.float32)}
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.npy", specs)
    _one_line_error(err, "d.npy", ".npz", "2 inputs")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_input_and_first_bad_sample(tmp_path, bad):
    values = np.zeros((300, 3, 8, 8), np.float32)
    values[260, 1, 2, 3] = bad
    values[290, 0, 0, 0] = bad
    np.savez(tmp_path / "d.npz", x=values)
    np.save(tmp_path / "d.npy", values)
    for name in ["d.npz", "d.npy"]:
        with pytest.raises(UserError) as err:
            load_dataset(tmp_path / name, NCHW)
        _one_line_error(err, name, "'x'", "sample 260")


def test_other_user_errors(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((3, 4)), b=np.zeros((2, 4)))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.npz", {"a": ((1, 4), np.float32), "b": ((1, 4), np.float32)})
    _one_line_error(err, "'b'", "same number")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "bad.npz", NCHW)
    _one_line_error(err, "bad.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "d.csv", NCHW)
    _one_line_error(err, "'.csv'")
    _png(tmp_path / "imgs" / "a.png", _solid([0, 0, 0]))
    _png(tmp_path / "imgs" / "cls" / "b.png", _solid([0, 0, 0]))
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "imgs", NCHW)
    _one_line_error(err, "mixes")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "imgs" / "cls", {"a": ((1, 4), np.float32), "b": ((1, 4), np.float32)})
    _one_line_error(err, "single-input")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path / "imgs" / "cls", NCHW, {"mean": [0.5, 0.5]})
    _one_line_error(err, "mean")


def test_differently_sized_images_without_a_fixed_size(tmp_path):
    _png(tmp_path / "a.png", np.zeros((6, 9, 3)))
    _png(tmp_path / "b.png", np.zeros((7, 9, 3)))
    ds = load_dataset(tmp_path, {"x": ((1, 3, None, None), np.float32)})
    with pytest.raises(UserError) as err:
        ds.sample(1)
    _one_line_error(err, "b.png", "size")
    resized = load_dataset(tmp_path, {"x": ((1, 3, None, None), np.float32)}, {"size": [5, 5]})
    assert resized.stack("x").shape == (2, 3, 5, 5)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 40), limit=st.integers(1, 50), batch_size=st.integers(1, 12))
def test_limit_and_batches_properties(tmp_path_factory, count, limit, batch_size):
    values = np.arange(count, dtype=np.float32)[:, None] * np.ones(2, np.float32)
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, x=values, labels=np.arange(count))
    ds = load_dataset(path, {"x": ((1, 2), np.float32)}, limit=limit)
    chosen = ds.labels
    assert len(ds) == min(count, limit) == len(chosen)
    assert np.all(np.diff(chosen) > 0) and chosen[0] == 0 and chosen[-1] < count
    if limit < count:  # spread over the whole set, not just its head
        assert chosen[-1] >= count - count // limit - 1
    batches = list(ds.batches(batch_size))
    assert all(len(b["x"]) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]["x"]) <= batch_size
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches])[:, 0], chosen.astype(np.float32))
