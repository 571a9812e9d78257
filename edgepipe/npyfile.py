"""Read [N, ...] arrays from .npy files and .npz members a few samples at a time.

`np.load(mmap_mode=...)` cannot map a member inside a zip, and `np.load(npz)[key]` reads the whole
member: both make a build's memory grow with the number of samples. This reader parses the .npy
header itself and reads only the samples asked for.
"""

from __future__ import annotations

import copy
import io
import math
import os
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgepipe.errors import UserError

_PIECE = 1 << 20


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


MAX_HEADER_BYTES = 1 << 15  # numpy writes headers of 64..4096 bytes and refuses over 10,000 when parsing


def read_header(stream) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream positioned at its magic string.

    The header length is checked before the header is read: numpy reads all the bytes a header
    declares (up to 4 GB for format 2/3) and checks its own limit only afterwards."""
    version = np.lib.format.read_magic(stream)
    width = 2 if version == (1, 0) else 4
    prefix = stream.read(width)
    if len(prefix) != width:
        raise ValueError("the .npy header is truncated")
    length = int.from_bytes(prefix, "little")
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"its .npy header declares {length} bytes (numpy writes at most a few thousand)")
    header = io.BytesIO(prefix + stream.read(length))
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        return read(header)
    except (tokenize.TokenError, SyntaxError, RecursionError) as exc:  # numpy re-tokenizes a header it cannot parse
        raise ValueError(f"its .npy header is not a Python literal ({first_line(exc)})") from None


def _check_declared(where, shape: tuple, dtype: np.dtype, available: int) -> None:
    """A Fortran-order array is read whole, and numpy allocates what its header declares before it
    reads (a 3 kB file declaring 768 TB was 'out of memory'): the bytes must be in the file first."""
    if any(isinstance(dim, bool) or not isinstance(dim, int) or dim < 0 for dim in shape):
        return  # ArrayFile names a malformed shape
    declared = np.dtype(dtype).itemsize * math.prod(shape)
    if declared > available:
        raise UserError(f"{where}: its .npy header declares shape {tuple(shape)} ({declared} bytes) but only "
                        f"{available} bytes follow (truncated); save the array again with numpy.save")


class ArrayFile:
    """One [N, ...] array of a .npy file or .npz member, read a few samples at a time.

    Nothing is held in memory between reads, so memory does not grow with N. Stored (uncompressed)
    data, what numpy.save / numpy.savez write, is read with positioned reads at its offset in the
    file: not memory-mapped, because mapped pages count in the process's resident memory. Deflated
    members (numpy.savez_compressed) are decompressed as a forward stream, reopened only when a
    read goes backwards (samples are read in order). Fortran-order arrays are read whole (rare).
    """

    def __init__(self, path: Path, shape: tuple, dtype: np.dtype, offset: int, member: str | None = None,
                 whole: np.ndarray | None = None, available: int | None = None):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        if any(isinstance(dim, bool) or not isinstance(dim, int) or dim < 0 for dim in self.shape):
            where = f"{self.path} (member {member})" if member else str(self.path)
            raise UserError(f"{where}: its .npy header declares shape {self.shape!r}; dims must be non-negative "
                            "integers, save the array again with numpy.save")
        self.ndim = len(self.shape)
        self._offset, self._member, self._whole = offset, member, whole
        self._stream = None  # (ZipFile, member stream) of a deflated member
        self._last = None  # (position, bytes) of the last small read of a deflated member
        self._sample_bytes = self.dtype.itemsize * math.prod(self.shape[1:])  # Python ints: a header may claim 10**20
        self._available = available  # data bytes the file or member holds (None: unknown)

    @classmethod
    def open_npy(cls, path: Path) -> "ArrayFile":
        with open(path, "rb") as handle:
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
            available = os.fstat(handle.fileno()).st_size - offset
        if fortran and len(shape) > 1:  # read whole: first the bytes its header declares must be there
            _check_declared(path, shape, dtype, available)
        whole = np.load(path, allow_pickle=False) if fortran and len(shape) > 1 else None
        return cls(path, shape, dtype, offset, whole=whole, available=available)

    @classmethod
    def open_member(cls, path: Path, archive: zipfile.ZipFile, name: str) -> "ArrayFile":
        info = archive.getinfo(name)
        with archive.open(info) as member:
            shape, fortran, dtype = read_header(member)
            header_bytes = member.tell()
            if fortran and len(shape) > 1:
                _check_declared(f"{path} (member {name})", shape, dtype, info.file_size - header_bytes)
                member.seek(0)
                return cls(path, shape, dtype, 0, whole=np.lib.format.read_array(member, allow_pickle=False))
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            with open(path, "rb") as handle:  # data starts after the local header and its own extra field
                handle.seek(info.header_offset)
                local = handle.read(30)
            if local[:4] == b"PK\x03\x04":
                name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
                return cls(path, shape, dtype, info.header_offset + 30 + name_len + extra_len + header_bytes,
                           available=info.file_size - header_bytes)
        return cls(path, shape, dtype, header_bytes, member=name, available=info.file_size - header_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if self._whole is not None:
            return self._whole[key]
        if isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and key[1] == 0 \
                and self.ndim > 1 and self.shape[1] == 1:
            return self.without_axis1()
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ArrayFile reads contiguous ranges only")
            return self._read(start, max(0, stop - start))
        index = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {key} out of range for {len(self)} samples")
        return self._read(index, 1)[0]

    def without_axis1(self) -> "ArrayFile":
        """`array[:, 0]` of an [N, 1, ...] array (samples stored with a batch dim), still lazy."""
        view = copy.copy(self)
        view.shape = (self.shape[0], *self.shape[2:])
        view.ndim = len(view.shape)
        view._stream, view._last = None, None
        return view

    def _read(self, start: int, count: int) -> np.ndarray:
        size = count * self._sample_bytes
        position = self._offset + start * self._sample_bytes
        if self._available is not None and (start + count) * self._sample_bytes > self._available:
            raise UserError(f"{self.path}: ends before sample {start + count - 1} (truncated); save it again")
        try:
            data = self._read_member(position, size) if self._member else self._read_file(position, size)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError) as exc:
            raise UserError(f"{self.path}: cannot read samples {start}..{start + count - 1} ({first_line(exc)}); "
                            "the file is damaged, save it again") from exc
        if len(data) != size:
            raise UserError(f"{self.path}: ends before sample {start + count - 1} (truncated); save it again")
        return np.frombuffer(data, self.dtype).reshape((count, *self.shape[1:]))

    def _read_file(self, position: int, size: int) -> bytearray:
        data = bytearray(size)
        with open(self.path, "rb") as handle:
            handle.seek(position)
            got = handle.readinto(data)
        return data if got == size else data[:got]

    def _read_member(self, position: int, size: int) -> bytearray:
        if self._last is not None and self._last[0] == position and len(self._last[1]) == size:
            return bytearray(self._last[1])  # the same samples again (a caller peeking at sample 0)
        if self._stream is None or self._stream[1].tell() > position:
            self.close()
            archive = zipfile.ZipFile(self.path)
            self._stream = (archive, archive.open(self._member))
        stream = self._stream[1]
        skip = position - stream.tell()
        while skip > 0:  # forward: decompress and drop what lies between, a piece at a time
            piece = stream.read(min(_PIECE, skip))
            if not piece:
                break
            skip -= len(piece)
        data, filled = bytearray(size), 0
        while filled < size:  # small reads: zipfile reads as much compressed data as it is asked for
            piece = stream.read(min(_PIECE, size - filled))
            if not piece:
                return data[:filled]
            data[filled:filled + len(piece)] = piece
            filled += len(piece)
        self._last = (position, bytes(data)) if size <= _PIECE else None
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream[0].close()
            self._stream = None

    def __getstate__(self):
        return {**self.__dict__, "_stream": None, "_last": None}
