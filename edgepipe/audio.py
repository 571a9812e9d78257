"""Calibration / eval data as .wav files: a file, or a folder of them (class subfolders give labels).

Why: audio models are calibrated on recordings, and asking users to decode and pack them into
arrays first is a step a tool should not need. The RIFF/WAVE header is parsed here, not by the
stdlib `wave` module (which reads integer PCM only, not the IEEE-float or WAVE_FORMAT_EXTENSIBLE
files most audio tools write): every declared size is checked against the file's real size
before anything is read, and samples are read one window at a time, so a hostile header (a 4 GB
data chunk in a 1 kB file, a chunk past the end, a zero block size) is one error line, never a
large allocation.

Samples: 8-bit unsigned, 16/24/32-bit signed integer PCM and 32/64-bit float, any channel count.
Values are floats in [-1, 1) (what soundfile, librosa and torchaudio give), or in int16 units with
`preprocess.audio_scale: int16` (models fed raw 16-bit values, e.g. openWakeWord). The model input's
last dim is time: a file is cut into consecutive windows of that many frames (the tail that does not
fill a window is left out), a `[N, C, T]` input takes C channels, a `[N, T]` input takes mono (a
stereo file is mixed down to the channels' mean). Sample rates are not converted: every file must
have `preprocess.sample_rate`, or, when it is not set, the rate of the first file.
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe import data
from edgepipe.errors import UserError
from edgepipe.safeio import ensure_regular_file

AUDIO_SUFFIXES = data.AUDIO_SUFFIXES
MAX_CHUNKS = 1024  # a real file has a handful (fmt, data, LIST, fact, ...)
MAX_CHANNELS = 64
MAX_FMT_BYTES = 1024
PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
AUDIO_SCALES = ("unit", "int16")


@dataclass(frozen=True)
class WavInfo:
    path: Path
    format: int  # PCM or IEEE_FLOAT (an EXTENSIBLE file's sub-format)
    channels: int
    rate: int
    bits: int
    data_offset: int
    frames: int

    @property
    def block(self) -> int:
        return self.channels * self.bits // 8


def read_wav_info(path: str | os.PathLike) -> WavInfo:
    """The header of a .wav file, every size checked against the file; `UserError` if it is not one."""
    path = ensure_regular_file(path, what=".wav")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise UserError(f"{path}: not a RIFF/WAVE file; save the recording as .wav (PCM or float)")
        fmt, position = None, 12
        for _ in range(MAX_CHUNKS):
            header = handle.read(8)
            if len(header) < 8:
                break
            chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
            body = position + 8
            if chunk == b"data":
                if fmt is None:
                    raise UserError(f"{path}: the data chunk comes before the fmt chunk; re-save the file")
                available = size - body
                if length > available:
                    raise UserError(f"{path}: the data chunk declares {length} bytes but only {available} follow "
                                    "(a truncated or streamed file); re-save it")
                return WavInfo(path, *fmt, data_offset=body, frames=length // (fmt[1] * fmt[3] // 8))
            if length > size - body:
                raise UserError(f"{path}: chunk {chunk!r} declares {length} bytes, past the end of the "
                                f"{size}-byte file; re-save it")
            if chunk == b"fmt ":
                if length > MAX_FMT_BYTES:
                    raise UserError(f"{path}: fmt chunk declares {length} bytes (a real one has 16-40); re-save it")
                fmt = _parse_fmt(path, handle.read(length))
                if length % 2:
                    handle.seek(1, os.SEEK_CUR)
            else:
                handle.seek(length + length % 2, os.SEEK_CUR)
            position = body + length + length % 2
    raise UserError(f"{path}: no data chunk found; not a playable .wav file")


def _parse_fmt(path: Path, body: bytes) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise UserError(f"{path}: fmt chunk of {len(body)} bytes is too short (16 needed); re-save the file")
    tag, channels, rate, _, block, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == EXTENSIBLE:
        if len(body) < 40:
            raise UserError(f"{path}: WAVE_FORMAT_EXTENSIBLE fmt chunk of {len(body)} bytes (40 needed)")
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format code
    supported = (tag == PCM and bits in (8, 16, 24, 32)) or (tag == IEEE_FLOAT and bits in (32, 64))
    if not supported:
        raise UserError(f"{path}: sample format {tag:#06x} with {bits} bits is not read; save as 8/16/24/32-bit "
                        "integer PCM or 32/64-bit float")
    if not 1 <= channels <= MAX_CHANNELS or not 1 <= rate <= 10_000_000 or block != channels * bits // 8:
        raise UserError(f"{path}: inconsistent fmt chunk ({channels} channels, {rate} Hz, {bits} bits, "
                        f"block {block} bytes); re-save the file")
    return tag, channels, rate, bits


def read_frames(info: WavInfo, start: int, count: int) -> np.ndarray:
    """Frames [start, start + count) as float64 [channels, count], in [-1, 1) for integer PCM."""
    with open(info.path, "rb") as handle:
        handle.seek(info.data_offset + start * info.block)
        raw = handle.read(count * info.block)
    if len(raw) != count * info.block:
        raise UserError(f"{info.path}: shorter than its header says (changed while reading?)")
    width = info.bits // 8
    if info.format == IEEE_FLOAT:
        values = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float64)
        if not np.isfinite(values).all():
            raise UserError(f"{info.path}: holds NaN or infinite samples (frames {start}..{start + count - 1}); "
                            "clean the recording")
    elif width == 1:
        values = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width == 3:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        signed = (triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)) << 8 >> 8
        values = signed / float(1 << 23)
    else:
        values = np.frombuffer(raw, f"<i{width}").astype(np.float64) / float(1 << (info.bits - 1))
    return values.reshape(count, info.channels).T


def _layout(name: str, shape: tuple, path: Path) -> tuple[int | None, int | None]:
    """(channels the input takes or None for mono [N, T], window frames or None if dynamic)."""
    sample = tuple(shape)[1:] if data.has_batch_axis(shape) else tuple(shape)
    if len(sample) not in (1, 2):
        raise UserError(f"{path}: .wav data feeds an input of shape [N, T] or [N, C, T] (time last), but "
                        f"'{name}' is {data._format_shape(tuple(shape))}; pack the features as .npy/.npz")
    static = [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in sample]
    return (static[0] if len(sample) == 2 else None), static[-1]


def wav_dataset(source: Path, paths: list[Path], class_labels: np.ndarray | None, class_names: list[str] | None,
                specs: data.InputSpecs, preprocess: dict, limit: int | None) -> data.Dataset:
    """A Dataset of fixed-length windows over every .wav in `paths` (sorted), headers checked up front."""
    if len(specs) != 1:
        raise UserError(f"{source}: .wav data can feed a single-input model only, this one has inputs "
                        f"{list(specs)}; use an .npz with one array per input name")
    name, (shape, _) = next(iter(specs.items()))
    channels, window = _layout(name, shape, source)
    scale = preprocess.get("audio_scale") or "unit"
    if scale not in AUDIO_SCALES:
        raise UserError(f"preprocess.audio_scale {scale!r}: use one of {list(AUDIO_SCALES)}")
    gain = 32768.0 if scale == "int16" else 1.0
    infos = [read_wav_info(path) for path in paths]
    rate = preprocess.get("sample_rate") or infos[0].rate
    window = window or infos[0].frames
    counts = []
    for info in infos:
        if info.rate != rate:
            where = "preprocess.sample_rate" if preprocess.get("sample_rate") else f"{infos[0].path.name}'s rate"
            raise UserError(f"{info.path}: sampled at {info.rate} Hz, not {rate} Hz ({where}); resample it "
                            "(edgepipe does not convert rates)")
        if channels is not None and info.channels != channels:
            raise UserError(f"{info.path}: has {info.channels} channel(s) but input '{name}' takes {channels}")
        if info.frames < window:
            raise UserError(f"{info.path}: {info.frames} frames, shorter than one window of {window} frames "
                            f"(input '{name}'); use longer recordings or a smaller --input-shape")
        counts.append(info.frames // window)
    ends = np.cumsum(counts).tolist()

    def read(i: int) -> dict[str, np.ndarray]:
        index = bisect.bisect_right(ends, i)
        position = i - (ends[index - 1] if index else 0)
        frames = read_frames(infos[index], position * window, window) * gain
        return {name: (frames if channels is not None else frames.mean(axis=0)).astype(np.float32)}

    labels = None
    if class_labels is not None:
        labels = np.concatenate([np.full(count, label, np.int64) for count, label in zip(counts, class_labels)])
    return data.Dataset(source, "wav", specs, ends[-1], read, labels=labels, class_names=class_names, limit=limit)


def first_sample_shape(path: Path, input_name: str, declared: tuple | None) -> tuple:
    """The per-sample shape one window of the first file gives (its whole length when T is dynamic)."""
    info = read_wav_info(path)
    channels, window = _layout(input_name, declared, path) if declared else (None, None)
    frames = window or info.frames
    return (info.channels, frames) if declared is not None and len(declared) - data.has_batch_axis(declared) == 2 \
        else (frames,)
