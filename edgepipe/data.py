"""Calibration and evaluation data: one `Dataset` over image folders, .npz and .npy files.

Calibration, evaluation and the bundle's eval set all read user data through `load_dataset`, so
every mistake a user can make with their data (wrong shape, missing key, corrupt image, NaN) is
caught here once, as a one-line `UserError` naming the file and what to do, before hours of
calibration run on garbage. Nothing is loaded whole, so memory does not grow with the number of
samples: images are decoded one file per `sample(i)`, .npy files and .npz members are read a few
samples at a time (edgepipe/npyfile.py). Which samples are used (a limit, the holdout) is
edgepipe/sampling.py.

Sources
- folder of images (.png .jpg .jpeg .bmp .gif .tif .tiff .webp .ppm .pgm), single-input models:
  flat folder -> no labels; ImageFolder layout (one subfolder per class, images anywhere below
  it) -> label = index of the class folder in the sorted list of subfolder names. Hidden files
  and non-image files are ignored. Order: sorted paths.
- .npz: one array [N, ...] per model input, keyed by input name; optional `labels` [N];
  other keys are ignored.
- .npy: one array [N, ...], single-input models only.
- folder of .npy / .npz files (edgepipe/array_folder.py): each file one sample or a stack [N, ...],
  as above; class subfolders give labels as for images.
- a .wav file or a folder of them (edgepipe/audio.py): windows of the input's time dim, single-input
  models only; class subfolders give labels as for images.

Image preprocessing (edgepipe/images.py; `preprocess` dict; unknown keys belong to other stages)
- `size` [H, W]: resize so the image covers H x W keeping its aspect ratio (bilinear), then
  center-crop; `resize: stretch` resizes to exactly H x W instead. Default: the model input's
  static H, W, else the images' own size (which must then all agree).
- `scale` (default 1/255 for float inputs, 1 for integer inputs), then `mean`, `std` per channel
  in the model's channel order: x = (pixel * scale - mean) / std. No mean/std: no normalization.
- `channel_order` RGB (default) | BGR; `grayscale` (default: true when the input has 1 channel).
- `layout` NCHW | NHWC (default: NHWC when the input's last dim is 1 or 3 and dim 1 is not).
"""

from __future__ import annotations

import copy
import os
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgepipe.errors import UserError
from edgepipe.npyfile import ArrayFile, read_header
from edgepipe.images import ImageTransform, _cast
from edgepipe.safeio import check_npz_members
from edgepipe.sampling import evenly_spaced

AUDIO_SUFFIXES = (".wav",)  # edgepipe/audio.py
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LABELS_KEY = "labels"
InputSpecs = dict[str, tuple[tuple, np.dtype]]
_CHECK_CHUNK_BYTES = 4 << 20  # finiteness is checked this many bytes at a time


class Dataset:
    """Samples of a model's inputs, each with batch dim 1 and the input's dtype; optional labels."""

    def __init__(self, source: Path, kind: str, specs: InputSpecs, count: int,
                 read: Callable[[int], dict[str, np.ndarray]], labels: np.ndarray | None = None,
                 class_names: list[str] | None = None, limit: int | None = None):
        self.source, self.kind = Path(source), kind
        self.names = list(specs)
        self._dtypes = {name: np.dtype(dtype) for name, (_, dtype) in specs.items()}
        self._batched = {name: has_batch_axis(shape) for name, (shape, _) in specs.items()}
        self._read = read
        self._indices = evenly_spaced(count, count if limit is None else limit, centred=False)
        self.labels = None if labels is None else np.asarray(labels, np.int64)[self._indices]
        self.class_names = class_names
        self.ignored_members: list[str] = []  # .npz arrays named after no model input (e.g. a weight)

    def __len__(self) -> int:
        return len(self._indices)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Feed dict of sample i: {input name: array in the input's shape and dtype}; the batch dim
        is 1 where the input has one (see `has_batch_axis`)."""
        raw = self._read(int(self._indices[i]))
        return {name: _cast(raw[name], self._dtypes[name])[None] if self._batched[name]
                else _cast(raw[name], self._dtypes[name]) for name in self.names}

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feed dicts of up to batch_size samples each (the last one may be smaller)."""
        for start in range(0, len(self), max(1, int(batch_size))):
            samples = [self.sample(i) for i in range(start, min(start + batch_size, len(self)))]
            yield {name: np.concatenate([s[name] for s in samples]) for name in self.names}

    def stack(self, name: str) -> np.ndarray:
        """Every sample of one input, [N, ...]; loads all of them (meant for small eval sets)."""
        if name not in self.names:
            raise KeyError(f"{name!r} is not an input of this dataset ({self.names})")
        join = np.concatenate if self._batched[name] else np.stack
        return join([self.sample(i)[name] for i in range(len(self))])

    def subset(self, positions) -> "Dataset":
        """A view of the samples at these positions of this dataset, in that order; labels follow."""
        view = copy.copy(self)
        positions = np.asarray(positions, dtype=np.int64)
        view._indices = self._indices[positions]
        view.labels = None if self.labels is None else self.labels[positions]
        return view

    def mapped(self, transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> "Dataset":
        """A view whose samples (without batch dim) pass through `transform`; labels unchanged."""
        view = copy.copy(self)
        read = self._read
        view._read = lambda index: transform(read(index))
        return view

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.class_names is not None:
            labels = f"{len(self.class_names)} classes"
        else:
            labels = "labels" if self.labels is not None else "no labels"
        return f"{self.kind} {self.source}: {len(self)} samples, {labels}, inputs {self.names}"

    def __repr__(self) -> str:
        return f"<Dataset {self.describe()}>"


def load_dataset(path: str | os.PathLike, input_specs: InputSpecs, preprocess: dict | None = None,
                 limit: int | None = None) -> Dataset:
    """Open calibration/eval data for a model whose inputs are described by `input_specs`.

    `input_specs` maps input names to (shape including batch dim 1, dtype); dims that are None or
    a string are dynamic and accept any size. `limit` keeps that many samples spread evenly over
    the whole set (so a class-sorted folder still gives every class), in order.
    """
    path = Path(path)
    if not input_specs:
        raise ValueError("input_specs is empty: the model has no inputs")
    if limit is not None and limit < 1:
        raise UserError(f"{path}: sample limit must be a positive number, got {limit}")
    if not path.exists():
        raise _missing_data(path)
    if path.is_dir():
        return _folder_dataset(path, input_specs, preprocess or {}, limit)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays, labels, ignored = _read_npz(path, input_specs)
        kind = "npz"
    elif suffix == ".npy":
        arrays, labels, ignored = {_only_input(path, input_specs): _read_npy(path)}, None, []
        kind = "npy"
    elif suffix in AUDIO_SUFFIXES:
        from edgepipe.audio import wav_dataset

        return wav_dataset(path, [path], None, None, input_specs, preprocess or {}, limit)
    else:
        raise _unsupported_data(path)
    count = _check_arrays(path, arrays, input_specs)
    if labels is not None:
        _check_labels(path, labels, count)
    dataset = Dataset(path, kind, input_specs, count, lambda i: {n: a[i] for n, a in arrays.items()},
                      labels=labels, limit=limit)
    dataset.ignored_members = ignored
    return dataset


_DATA_FORMS = "a folder of images or .wav files, an .npz, an .npy or a .wav file"


def _missing_data(path: Path) -> UserError:
    return UserError(f"{path}: no such file or folder; pass {_DATA_FORMS}")


def _unsupported_data(path: Path) -> UserError:
    return UserError(f"{path}: unsupported data file type '{path.suffix}'; use {_DATA_FORMS}")


def infer_static_shape(path: str | os.PathLike, input_name: str, preprocess: dict | None = None,
                       declared: tuple | None = None) -> tuple:
    """The input shape one sample of `input_name` gives, e.g. (1, 3, 224, 224).

    Used to fix a model's dynamic dims from its calibration data; reads headers, not whole files.
    `declared` is the model's (partly dynamic) input shape: a sample of the same rank is the whole
    input ([N, 2, 1, 128] fixes an RNN state [2, B, 128]); one dim fewer gets a batch dim of 1.
    """
    path = Path(path)
    per_sample = _first_sample_shape(path, input_name, preprocess, declared)
    if declared is None or len(per_sample) + 1 == len(declared):
        return (1, *per_sample)
    if len(per_sample) == len(declared):
        return tuple(per_sample)
    raise UserError(f"{path}: input '{input_name}' samples have shape {tuple(per_sample)} but the model "
                    f"input is {_format_shape(tuple(declared))}; {_accepted_forms(tuple(declared))}")


def _first_sample_shape(path: Path, input_name: str, preprocess: dict | None, declared: tuple | None = None,
                        whole: bool = False) -> tuple:
    """Shape of one sample (`whole`: of the first file's whole array) of `input_name`; headers only."""
    if path.is_dir():
        from edgepipe.array_folder import first_sample_shape

        paths, _, _, kind = _scan_folder(path)
        if kind == "arrays":
            return first_sample_shape(paths[0], input_name, declared)
        if kind == "audio":
            from edgepipe.audio import first_sample_shape as first_window_shape

            return first_window_shape(paths[0], input_name, declared)
        unknown_spec = {input_name: ((None, None, None, None), np.float32)}
        return tuple(_image_dataset(path, unknown_spec, preprocess or {}, 1).sample(0)[input_name].shape)[1:]
    if not path.exists():
        raise _missing_data(path)
    if path.suffix.lower() == ".npy":
        return tuple(_read_npy(path).shape[1:])
    if path.suffix.lower() in AUDIO_SUFFIXES:
        from edgepipe.audio import first_sample_shape as first_window_shape

        return first_window_shape(path, input_name, declared)
    if path.suffix.lower() != ".npz":
        raise _unsupported_data(path)
    try:
        with zipfile.ZipFile(path) as archive:
            keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            if input_name not in keys:
                raise UserError(f"{path}: no array named '{input_name}' (keys present: {keys}); "
                                "save each model input under its input name")
            with archive.open(f"{input_name}.npy") as member:
                shape, _, _ = read_header(member)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc}); re-save it with numpy.savez") from exc
    return tuple(shape) if whole else tuple(shape[1:])


def _only_input(path: Path, specs: InputSpecs) -> str:
    if len(specs) != 1:
        raise UserError(f"{path}: a .npy file holds one array but the model has {len(specs)} inputs "
                        f"{list(specs)}; use an .npz with one array per input name")
    return next(iter(specs))


def _read_npy(path: Path) -> ArrayFile:
    try:
        return ArrayFile.open_npy(path)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, TypeError) as exc:
        raise UserError(f"{path}: not a readable numeric .npy file ({_first_line(exc)}); "
                        "save a numeric array with numpy.save") from exc


def _read_npz(path: Path, specs: InputSpecs) -> tuple[dict[str, ArrayFile], np.ndarray | None, list[str]]:
    """Lazy readers for the input members (nothing but headers is read here), the labels, and the
    names of members that are neither (the build warns about them)."""
    check_npz_members(path, list(specs), "input", read_whole=False)  # inputs are read lazily
    check_npz_members(path, [LABELS_KEY], "labels")
    try:
        with zipfile.ZipFile(path) as archive:
            keys = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
            missing = [name for name in specs if name not in keys]
            if missing:
                raise UserError(f"{path}: no array for input '{missing[0]}' (keys present: "
                                f"{sorted(keys)}); save each model input under its input name")
            arrays = {name: ArrayFile.open_member(path, archive, f"{name}.npy") for name in specs}
            labels = None
            if LABELS_KEY in keys and LABELS_KEY not in specs:
                with archive.open(f"{LABELS_KEY}.npy") as member:
                    labels = np.lib.format.read_array(member, allow_pickle=False)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            zlib.error, KeyError) as exc:  # zipfile raises all of these on damaged archives
        raise UserError(f"{path}: not a readable numeric .npz file ({_first_line(exc)}); "
                        "save numeric arrays with numpy.savez") from exc
    return arrays, labels, sorted(keys - set(specs) - {LABELS_KEY})


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], specs: InputSpecs, values: bool = True) -> int:
    """Validate dtype, per-sample shape, sample count and (`values`) finiteness; return the sample count.

    Samples of an input with a batch axis may come as [N, *shape[1:]] or [N, *shape]; the second
    form is replaced in `arrays` by a view without the batch dim, so every array holds [N, sample].
    An input without a batch axis ([3, 4, 5]) takes [N, *shape] only.
    """
    count = None
    for name, array in list(arrays.items()):
        if array.dtype.kind not in "biuf":
            raise UserError(f"{path}: input '{name}' has non-numeric dtype {array.dtype}; "
                            "store numbers (e.g. float32)")
        shape, got = tuple(specs[name][0]), array.shape[1:]
        batched = has_batch_axis(shape)
        if array.ndim and batched and _shape_matches(got, shape[1:]):
            pass
        elif array.ndim and _shape_matches(got, shape) and (not batched or got[0] == 1):
            if batched:
                arrays[name] = array[:, 0]
        else:
            raise UserError(f"{path}: input '{name}' samples have shape {got} but the model input is "
                            f"{_format_shape(shape)}; {_accepted_forms(shape)}")
        if count is None:
            count, first = len(array), name
        elif len(array) != count:
            raise UserError(f"{path}: input '{name}' has {len(array)} samples but '{first}' has "
                            f"{count}; every input needs the same number of samples")
        if values and array.dtype.kind == "f":
            _check_finite(path, name, array, np.dtype(specs[name][1]))
    if not count:
        raise UserError(f"{path}: holds 0 samples; add at least one")
    return count


def _check_finite(path: Path, name: str, array: np.ndarray, dtype: np.dtype) -> None:
    """No NaN / Inf, and (float64 data for a float32 input) no value the cast would make Inf."""
    narrower = dtype.kind == "f" and dtype.itemsize < array.dtype.itemsize
    sample_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, _CHECK_CHUNK_BYTES // sample_bytes)
    for start in range(0, len(array), step):
        chunk = np.asarray(array[start:start + step])
        chunk = chunk.reshape(len(chunk), -1)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            index = start + int(np.argmin(finite))
            raise UserError(f"{path}: input '{name}' has NaN/Inf values in sample {index}; "
                            "clean or drop that sample")
        fits = (np.abs(chunk) <= np.finfo(dtype).max).all(axis=1) if narrower else finite
        if not fits.all():
            index = start + int(np.argmin(fits))
            raise UserError(f"{path}: input '{name}' has values beyond {dtype.name}'s range in sample {index} "
                            f"(the model input takes {dtype.name}); scale the data or drop that sample")


def _check_labels(path: Path, labels: np.ndarray, count: int) -> None:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: '{LABELS_KEY}' must be a 1-D integer array of class indices, got "
                        f"{labels.dtype} {labels.shape}")
    if len(labels) != count:
        raise UserError(f"{path}: '{LABELS_KEY}' has {len(labels)} entries but the inputs have "
                        f"{count} samples; give one label per sample")
    if len(labels) and labels.dtype.kind == "u" and labels.max() > np.iinfo(np.int64).max:
        raise UserError(f"{path}: '{LABELS_KEY}' holds {labels.max()}, past int64; a label is a class index from 0")
    if len(labels) and labels.min() < 0:  # numpy would read -1 as the last class: a top-1 that looks real
        index = int(np.argmax(labels < 0))
        raise UserError(f"{path}: '{LABELS_KEY}' holds {labels[index]} for sample {index}; a label is a class "
                        "index from 0, drop unlabeled samples or save them without labels")


def has_batch_axis(shape) -> bool:
    """Axis 0 of an input is a batch axis when it is dynamic or 1. Any other static leading dim is
    part of every sample ([N, 3, 4, 5] feeds a [3, 4, 5] input), never taken for a batch."""
    shape = tuple(shape)
    return bool(shape) and (not isinstance(shape[0], (int, np.integer)) or shape[0] <= 1)


def _accepted_forms(shape: tuple) -> str:
    inner = _format_shape(shape)[1:-1]
    full = f"[N, {inner}]" if inner else "[N]"
    if not has_batch_axis(shape):
        return f"store it as {full}"
    rest = _format_shape(shape[1:])[1:-1]
    return f"store it as [N, {rest}] or {full}" if rest else f"store it as [N] or {full}"


def _shape_matches(got: tuple, expected: tuple) -> bool:
    return len(got) == len(expected) and all(
        not isinstance(e, int) or e <= 0 or g == e for g, e in zip(got, expected))


def _format_shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + "]"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Images


def _image_dataset(folder: Path, specs: InputSpecs, preprocess: dict, limit: int | None,
                   scanned: tuple | None = None) -> Dataset:
    if len(specs) != 1:
        raise UserError(f"{folder}: an image folder can feed a single-input model only, this one has "
                        f"inputs {list(specs)}; use an .npz with one array per input name")
    name, (shape, dtype) = next(iter(specs.items()))
    paths, labels, class_names = scanned or _scan_folder(folder)[:3]
    transform = ImageTransform.from_preprocess(folder, preprocess, tuple(shape), np.dtype(dtype))
    first = transform(paths[0])
    expected = tuple(shape)[1:]
    if not _shape_matches(first.shape, expected):
        raise UserError(f"{paths[0]}: preprocesses to shape {list(first.shape)} but input '{name}' "
                        f"expects {_format_shape(expected)}; set preprocess size/layout/grayscale")

    def read(i: int) -> dict[str, np.ndarray]:
        sample = transform(paths[i])
        if sample.shape != first.shape:  # only possible without a fixed size
            raise UserError(f"{paths[i]}: preprocesses to shape {list(sample.shape)} but {paths[0].name} "
                            f"gave {list(first.shape)}; set preprocess size: [H, W] to give all images one size")
        return {name: sample}

    return Dataset(folder, "image folder", specs, len(paths), read, labels=labels,
                   class_names=class_names, limit=limit)


def _folder_dataset(folder: Path, specs: InputSpecs, preprocess: dict, limit: int | None) -> Dataset:
    paths, labels, class_names, kind = _scan_folder(folder)
    if kind == "arrays":
        from edgepipe.array_folder import array_folder_dataset

        return array_folder_dataset(folder, paths, labels, class_names, specs, limit)
    if kind == "audio":
        from edgepipe.audio import wav_dataset

        return wav_dataset(folder, paths, labels, class_names, specs, preprocess, limit)
    return _image_dataset(folder, specs, preprocess, limit, (paths, labels, class_names))


def checked_subfolder(subfolder: Path) -> Path:
    """A class subfolder, refused when it is a link to its own folder or to one above it (`ln -s /
    root`, `ln -s .. up`): walking it would read the whole file system or loop."""
    target, parent = subfolder.resolve(), subfolder.parent.resolve()
    if subfolder.is_symlink() and (parent == target or parent.is_relative_to(target)):
        raise UserError(f"{subfolder}: is a link to {target}, which holds this data folder (a loop); remove the link")
    return subfolder


def sample_tree_files(folder: Path) -> list[Path]:
    """Every file below `folder` as the loaders walk it (a linked class subfolder is followed once,
    links further down are not), sorted: what the calibration cache key hashes."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            found.extend(p for p in checked_subfolder(entry).rglob("*") if p.is_file())
        elif entry.is_file():
            found.append(entry)
    return sorted(found)


def _scan_folder(folder: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None, str]:
    """Sorted sample files, labels and class names for the ImageFolder layout, and which kind of
    files ("images" or "arrays": .npy / .npz) the folder holds."""
    from edgepipe.array_folder import ARRAY_SUFFIXES

    def files(paths, suffixes):
        return [p for p in paths if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")]

    entries = sorted(p for p in folder.iterdir() if not p.name.startswith((".", "__")))
    class_dirs = [p for p in entries if p.is_dir()]
    below = [sorted(d.rglob("*")) for d in map(checked_subfolder, class_dirs)]
    found = {kind: (files(entries, suffixes), [files(paths, suffixes) for paths in below])
             for kind, suffixes in (("images", IMAGE_SUFFIXES), ("arrays", ARRAY_SUFFIXES), ("audio", AUDIO_SUFFIXES))}
    present = [kind for kind, (flat, per_class) in found.items() if flat or any(per_class)]
    if len(present) > 1:
        kinds = " and ".join({"images": "images", "arrays": ".npy/.npz files", "audio": ".wav files"}[k] for k in present)
        raise UserError(f"{folder}: holds {'both ' if len(present) == 2 else ''}{kinds}; keep one kind of sample "
                        "file per folder")
    if not present:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}), .npy/.npz or .wav files found; put "
                        "samples in the folder (calibration) or in one subfolder per class (evaluation)")
    kind = present[0]
    flat, per_class = found[kind]
    if flat and any(per_class):
        raise UserError(f"{folder}: mixes sample files and class subfolders; put all files directly in "
                        "the folder (unlabeled) or all in one subfolder per class (labeled)")
    if flat:
        return flat, None, None, kind
    paths = [p for group in per_class for p in group]
    labels = np.concatenate([np.full(len(group), index, np.int64) for index, group in enumerate(per_class)])
    return paths, labels, [d.name for d in class_dirs], kind
