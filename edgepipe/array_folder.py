"""Calibration / eval data as a folder of .npy or .npz files: one sample, or a stack of samples, per file.

Why: models that do not take images (audio, sequences, several inputs) are fed from arrays a
data loop dumped one file at a time (`numpy.save(f"calib/{i}.npy", batch)`), or from one file per
inference as Polygraphy and trtexec write them. Asking the user to pack them into one .npz first
is a step a tool should not need.

Each file holds, per model input, one sample (the input's shape, with or without its batch dim of
1) or a stack [N, sample] (a .npz: one array per input name, optional integer `labels` [N] or a
scalar for one sample). Files are read in sorted order; subfolders (one per class) give labels as
for images. Every file is checked (shapes, dtype, NaN/Inf) when the folder is opened, reading a few
samples at a time, and only one file is open while samples are read, so memory does not grow with
the number of files.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from edgepipe import data
from edgepipe.errors import UserError

ARRAY_SUFFIXES = (".npy", ".npz")


def _open(path: Path, specs: data.InputSpecs) -> tuple[dict, np.ndarray | None]:
    """Lazy readers of one file's samples, each [N, ...] as `data._check_arrays` wants, and its labels."""
    if path.suffix.lower() == ".npy":
        arrays, labels = {data._only_input(path, specs): data._read_npy(path)}, None
    else:
        arrays, labels, _ = data._read_npz(path, specs)
    for name, array in arrays.items():
        shape = tuple(specs[name][0])
        sample_rank = len(shape) - 1 if data.has_batch_axis(shape) else len(shape)
        # one sample without a stack axis: read it now (it is one sample); one of another dtype (a pickled
        # object: np.load refused it with a ValueError, an internal error) is named by _check_arrays
        if array.ndim == sample_rank and np.dtype(array.dtype).kind in "biuf":
            arrays[name] = np.asarray(array[:] if array.ndim else _scalar(path, name))[None]
    if labels is not None and labels.ndim == 0:
        labels = labels.reshape(1)
    return arrays, labels


def _scalar(path: Path, name: str) -> np.ndarray:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return loaded[name]


def _close(arrays: dict) -> None:
    for array in arrays.values():
        if hasattr(array, "close"):
            array.close()


def array_folder_dataset(folder: Path, paths: list[Path], class_labels: np.ndarray | None,
                         class_names: list[str] | None, specs: data.InputSpecs, limit: int | None) -> data.Dataset:
    """A Dataset over every sample of every file in `paths` (sorted), checked file by file."""
    counts, labels = [], []
    for path in paths:
        arrays, file_labels = _open(path, specs)
        try:
            count = data._check_arrays(path, arrays, specs)
        finally:
            _close(arrays)
        if file_labels is not None:
            data._check_labels(path, file_labels, count)
        counts.append(count)
        labels.append(file_labels)
    if any(lab is not None for lab in labels) and (class_labels is not None or any(lab is None for lab in labels)):
        where = next(p for p, lab in zip(paths, labels) if lab is None) if class_labels is None else folder
        raise UserError(f"{where}: some files carry '{data.LABELS_KEY}' and others do not (or class subfolders "
                        f"give labels too); give labels one way for the whole folder")
    if class_labels is not None:
        labels = [np.full(count, label, np.int64) for count, label in zip(counts, class_labels)]
    ends = np.cumsum(counts).tolist()
    opened: dict = {"index": -1, "arrays": {}}

    def read(i: int) -> dict[str, np.ndarray]:
        index = bisect.bisect_right(ends, i)
        if opened["index"] != index:  # samples are read in order: one file open at a time
            _close(opened["arrays"])
            arrays, _ = _open(paths[index], specs)
            # the same [N, sample] views as when the folder was opened; its values were checked then
            data._check_arrays(paths[index], arrays, specs, values=False)
            opened.update(index=index, arrays=arrays)
        position = i - (ends[index - 1] if index else 0)
        return {name: np.asarray(array[position]) for name, array in opened["arrays"].items()}

    all_labels = np.concatenate(labels) if labels and labels[0] is not None else None
    return data.Dataset(folder, "array folder", specs, ends[-1], read, labels=all_labels,
                        class_names=class_names, limit=limit)


def first_sample_shape(path: Path, input_name: str, declared: tuple | None) -> tuple:
    """The per-sample shape (no batch dim) of `input_name` in the folder's first file (headers only)."""
    from edgepipe.npyfile import ArrayFile

    if path.suffix.lower() == ".npy":
        shape = ArrayFile.open_npy(path).shape
    else:
        shape = data._first_sample_shape(path, input_name, None, whole=True)
    if declared is None:
        return tuple(shape[1:])
    batched = data.has_batch_axis(declared)
    stacked = len(shape) == len(declared) + (0 if batched else 1)
    return tuple(shape[1:]) if stacked else tuple(shape)
