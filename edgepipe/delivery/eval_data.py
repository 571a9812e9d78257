"""Eval samples streamed into the bundle's eval/eval.npz, one sample at a time.

Why its own writer: np.savez needs every array in memory; this appends each sample to a raw temp
file per array and then writes the zip members with fixed metadata, so memory does not grow with
the number of samples and the same samples give the same bytes.
"""

from __future__ import annotations

import io as iolib
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

EVAL_FILE = "eval/eval.npz"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


@dataclass
class EvalSamples:
    """Eval samples to stream into the bundle, one at a time (never all in memory).

    `rows()` yields (inputs {onnx input name: [1, ...]}, reference {onnx output name: [n, ...]},
    label int or None) `count` times; `info` is merged into the manifest's eval entry (where the
    samples came from, how many were kept of how many, the budget).
    """

    count: int
    rows: Callable[[], Iterator[tuple[dict, dict, int | None]]]
    labels: bool
    info: dict = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, eval_data: dict) -> "EvalSamples":
        """The in-memory form {"inputs": {name: [N, ...]}, "reference": {...}, "labels": [N] | None}."""
        inputs = {k: np.asarray(v) for k, v in (eval_data.get("inputs") or {}).items()}
        reference = {k: np.asarray(v) for k, v in (eval_data.get("reference") or {}).items()}
        labels = eval_data.get("labels")
        if not inputs:
            raise ValueError("eval_data needs at least one input array")
        counts = {len(a) for a in [*inputs.values(), *reference.values()]}
        if labels is not None:
            counts.add(len(labels))
        if len(counts) != 1:
            raise ValueError(f"eval arrays disagree on the number of samples: {sorted(counts)}")
        count = counts.pop()

        def rows():
            for i in range(count):
                yield ({k: v[i:i + 1] for k, v in inputs.items()}, {k: v[i:i + 1] for k, v in reference.items()},
                       None if labels is None else int(labels[i]))

        return cls(count, rows, labels is not None)


class _Column:
    """One array of eval.npz, appended row block by row block to a raw temp file."""

    def __init__(self, path: Path, first: np.ndarray):
        self.path, self.shape, self.dtype, self.rows = path, first.shape[1:], first.dtype, 0
        self.handle = open(path, "wb")

    def append(self, key: str, value: np.ndarray) -> None:
        if value.shape[1:] != self.shape or value.dtype != self.dtype:
            raise ValueError(f"eval '{key}': a sample has {value.dtype} {value.shape[1:]}, the first had "
                             f"{self.dtype} {self.shape}")
        self.handle.write(np.ascontiguousarray(value).tobytes())
        self.rows += len(value)

    def write_member(self, archive: zipfile.ZipFile, name: str) -> None:
        self.handle.close()
        header = iolib.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (self.rows, *self.shape)})
        info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3
        info.external_attr = 0o644 << 16
        info.file_size = len(header.getvalue()) + self.path.stat().st_size  # picks zip64 up front if needed
        with archive.open(info, "w") as member, open(self.path, "rb") as data:
            member.write(header.getvalue())
            shutil.copyfileobj(data, member, _CHUNK)


def write_eval_npz(path: Path, eval_data: "EvalSamples | dict") -> dict:
    """Stream eval samples into a deterministic .npz that np.load reads; returns its manifest entry.

    Keys in the file: `input:<name>`, `reference:<name>`, `labels`. Each array goes to a raw temp
    file row by row, then into its zip member in chunks: memory does not grow with the samples.
    """
    samples = eval_data if isinstance(eval_data, EvalSamples) else EvalSamples.from_arrays(eval_data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=path.parent) as tmp:
        columns: dict[str, _Column] = {}
        try:
            count = 0
            for inputs, reference, label in samples.rows():
                row = {**{f"input:{k}": v for k, v in inputs.items()},
                       **{f"reference:{k}": v for k, v in reference.items()}}
                if samples.labels:
                    row["labels"] = np.asarray([label], dtype=np.int64)
                for key, value in row.items():
                    value = np.asarray(value)
                    value = value[None] if value.ndim == 0 else value
                    if key not in columns:
                        if count:
                            raise ValueError(f"eval '{key}' is missing from the first {count} samples")
                        columns[key] = _Column(Path(tmp) / f"{len(columns)}.raw", value)
                    columns[key].append(key, value)
                count += 1
            if not any(k.startswith("input:") for k in columns):
                raise ValueError("eval_data needs at least one input array")
            rows = {key: column.rows for key, column in columns.items()}
            if len(set(rows.values())) != 1:
                raise ValueError(f"eval arrays disagree on the number of samples: {sorted(set(rows.values()))}")
            with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
                for key in sorted(columns):
                    columns[key].write_member(archive, key + ".npy")
        finally:
            for column in columns.values():
                column.handle.close()
    names = lambda prefix: sorted(k[len(prefix):] for k in columns if k.startswith(prefix))  # noqa: E731
    return {
        **samples.info,
        "file": EVAL_FILE,
        "samples": next(iter(rows.values())),
        "labels": "labels" in columns,
        "inputs": names("input:"),
        "reference": names("reference:"),
    }
