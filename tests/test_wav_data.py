""".wav calibration data: every PCM width and IEEE float (plain and WAVE_FORMAT_EXTENSIBLE headers),
mono and stereo, read as the stdlib `wave` module and numpy read the same bytes; hostile headers are
one error line without large reads; a folder of recordings calibrates exactly like the same windows
packed in an .npz; openWakeWord's shipped melspectrogram model builds from .wav files as users have them."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepipe.audio import read_frames, read_wav_info
from edgepipe.data import load_dataset
from edgepipe.errors import UserError
from tests.helpers import run_cli

RATE = 16000


def _pcm(bits: int, channels: int, frames: int, seed: int = 0) -> np.ndarray:
    """Integer samples [frames, channels] spanning the full range of the width (its extremes included)."""
    rng = np.random.default_rng(seed)
    low, high = (0, 255) if bits == 8 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    values = rng.integers(low, high, (frames, channels), endpoint=True, dtype=np.int64)
    values[0, 0], values[1, 0] = low, high
    return values


def _pcm_bytes(values: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return values.astype(np.uint8).tobytes()
    if bits == 24:
        raw = values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        return raw.tobytes()
    return values.astype(f"<i{bits // 8}").tobytes()


def _write_with_wave(path: Path, values: np.ndarray, bits: int, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(values.shape[1])
        out.setsampwidth(bits // 8)
        out.setframerate(rate)
        out.writeframes(_pcm_bytes(values, bits))


def _write_float(path: Path, values: np.ndarray, extensible: bool, bits: int = 32, extra: bytes = b"") -> None:
    """An IEEE-float .wav written by hand (the `wave` module cannot), with a `fact` chunk as tools write."""
    channels = values.shape[1]
    payload = values.astype("<f4" if bits == 32 else "<f8").tobytes()
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else 3, channels, RATE, RATE * block, block, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", 3) + bytes.fromhex("000000001000800000aa00389b71")
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"fact" + struct.pack("<I", 4) + struct.pack("<I", len(values)) + extra
    chunks += b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("channels", [1, 2])
def test_integer_pcm_reads_as_wave_and_numpy_read_it(tmp_path, bits, channels):
    values = _pcm(bits, channels, 1001)
    path = tmp_path / "x.wav"
    _write_with_wave(path, values, bits)
    with wave.open(str(path)) as reference:
        assert reference.getnframes() == 1001
        stdlib_bytes = reference.readframes(1001)
    assert stdlib_bytes == _pcm_bytes(values, bits)  # the file is what `wave` reads back
    info = read_wav_info(path)
    assert (info.rate, info.channels, info.bits, info.frames) == (RATE, channels, bits, 1001)
    expected = (values - 128) / 128 if bits == 8 else values / float(1 << (bits - 1))
    got = read_frames(info, 0, 1001)
    np.testing.assert_array_equal(got, expected.T)
    np.testing.assert_array_equal(read_frames(info, 500, 10), expected[500:510].T)
    assert got.min() >= -1 and got.max() < 1


@pytest.mark.parametrize("extensible", [False, True])
@pytest.mark.parametrize("bits", [32, 64])
def test_float_wav_plain_and_extensible(tmp_path, extensible, bits):
    values = np.random.default_rng(1).uniform(-1, 1, (300, 2))
    path = tmp_path / "f.wav"
    _write_float(path, values, extensible, bits, extra=b"LIST" + struct.pack("<I", 3) + b"abc\0")  # odd chunk, padded
    info = read_wav_info(path)
    assert info.frames == 300 and info.channels == 2
    expected = values.astype(np.float32 if bits == 32 else np.float64).astype(np.float64)
    np.testing.assert_array_equal(read_frames(info, 0, 300), expected.T)


def _hostile_files(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    good = tmp_path / "good.wav"
    _write_with_wave(good, _pcm(16, 1, 64), 16)
    body = good.read_bytes()
    data_at = body.index(b"data")
    fmt_at = body.index(b"fmt ")

    def patched(offset, fmt, value):
        raw = bytearray(body)
        struct.pack_into(fmt, raw, offset, value)
        return bytes(raw)

    return {
        "truncated": (body[:-40], "declares 128 bytes but only 88 follow"),
        "huge-data": (patched(data_at + 4, "<I", 0xFFFFFFF0), "declares 4294967280 bytes"),
        "huge-chunk": (body[:12] + b"JUNK" + struct.pack("<I", 0x7FFFFFFF) + body[12:], "past the end"),
        "huge-fmt": (patched(fmt_at + 4, "<I", 100000), "declares 100000 bytes, past the end"),
        "big-fmt": (patched(fmt_at + 4, "<I", 2000) + bytes(4000), "fmt chunk declares 2000 bytes"),
        "zero-channels": (patched(fmt_at + 10, "<H", 0), "inconsistent fmt chunk"),
        "bad-block": (patched(fmt_at + 20, "<H", 3), "inconsistent fmt chunk"),
        "12-bit": (patched(fmt_at + 22, "<H", 12), "sample format 0x0001 with 12 bits is not read"),
        "a-law": (patched(fmt_at + 8, "<H", 6), "sample format 0x0006"),
        "not-riff": (b"RIFX" + body[4:], "not a RIFF/WAVE file"),
        "empty": (b"", "not a RIFF/WAVE file"),
        "no-data": (body[:data_at], "no data chunk"),
        "data-first": (body[:12] + body[data_at:] + body[12:data_at], "data chunk comes before the fmt chunk"),
        "many-chunks": (body[:12] + (b"JUNK" + struct.pack("<I", 0)) * 5000 + body[12:], "no data chunk"),
    }


def test_hostile_headers_are_one_error_line(tmp_path):
    spec = {"x": ((1, 16), np.dtype(np.float32))}
    for name, (raw, message) in _hostile_files(tmp_path).items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(raw)
        with pytest.raises(UserError) as caught:
            load_dataset(path, spec).sample(0)
        assert message in str(caught.value) and str(path) in str(caught.value), (name, str(caught.value))
    nan = tmp_path / "nan.wav"
    _write_float(nan, np.array([[0.1], [np.nan]] * 16), extensible=False)
    with pytest.raises(UserError, match="NaN or infinite"):
        load_dataset(nan, spec).sample(0)


def test_rates_channels_and_lengths_are_checked(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    _write_with_wave(folder / "a.wav", _pcm(16, 1, 100), 16)
    _write_with_wave(folder / "b.wav", _pcm(16, 1, 100), 16, rate=8000)
    spec = {"x": ((1, 16), np.dtype(np.float32))}
    with pytest.raises(UserError, match=r"b\.wav: sampled at 8000 Hz, not 16000 Hz \(a\.wav's rate\)"):
        load_dataset(folder, spec)
    with pytest.raises(UserError, match=r"a\.wav: sampled at 16000 Hz, not 8000 Hz \(preprocess\.sample_rate\)"):
        load_dataset(folder, spec, {"sample_rate": 8000})
    (folder / "b.wav").unlink()
    with pytest.raises(UserError, match="has 1 channel"):
        load_dataset(folder, {"x": ((1, 2, 16), np.dtype(np.float32))})
    with pytest.raises(UserError, match="100 frames, shorter than one window of 400"):
        load_dataset(folder, {"x": ((1, 400), np.dtype(np.float32))})
    _write_with_wave(folder / "s.wav", _pcm(16, 2, 40, seed=3), 16)
    data = load_dataset(folder, spec)
    assert len(data) == 100 // 16 + 40 // 16  # consecutive windows per file, tails left out
    stereo = _pcm(16, 2, 40, seed=3) / 32768.0
    np.testing.assert_allclose(data.sample(7)["x"][0], stereo[16:32].mean(axis=1).astype(np.float32))
    assert load_dataset(folder, spec, {"audio_scale": "int16"}).sample(7)["x"][0].tolist() == \
        (stereo[16:32].mean(axis=1) * 32768).astype(np.float32).tolist()


def _audio_model(path: Path, dynamic: bool = False) -> None:
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv1d(1, 8, 16, stride=8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, audio):
            return self.fc(torch.relu(self.conv(audio.unsqueeze(1))).mean(dim=2))

    torch.onnx.export(Net().eval(), (torch.zeros(1, 400),), str(path), input_names=["audio"], output_names=["y"],
                      opset_version=17, dynamo=False, dynamic_axes={"audio": {1: "samples"}} if dynamic else None)


def test_a_wav_folder_calibrates_like_the_same_windows_in_an_npz(tmp_path):
    _audio_model(tmp_path / "net.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    windows = []
    for index, frames in enumerate((1300, 900, 2000)):
        values = _pcm(16, 1, frames, seed=index)
        _write_with_wave(folder / f"take{index}.wav", values, 16)
        whole = values[:, 0] / 32768.0
        windows += [whole[i * 400:(i + 1) * 400] for i in range(frames // 400)]
    np.savez(tmp_path / "calib.npz", audio=np.stack(windows).astype(np.float32))
    for source, out in (("calib", "from_wav"), ("calib.npz", "from_npz")):
        result = run_cli("build", "--model", "net.onnx", "--calib", source, "--target", "arm-cpu", "--out", out,
                         "--no-host-report", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "from_wav" / "model.tflite").read_bytes() == (tmp_path / "from_npz" / "model.tflite").read_bytes()
    (folder / "bad.wav").write_bytes(b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff")
    result = run_cli("build", "--model", "net.onnx", "--calib", "calib", "--target", "arm-cpu", "--out", "bad",
                     "--no-host-report", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "bad.wav: the data chunk comes before the fmt chunk" in lines[0]


def test_a_dynamic_time_dim_takes_the_first_recordings_length(tmp_path):
    import json

    _audio_model(tmp_path / "net.onnx", dynamic=True)
    (tmp_path / "calib").mkdir()
    for index, frames in enumerate((800, 1700)):
        _write_with_wave(tmp_path / "calib" / f"{index}.wav", _pcm(24, 2, frames, seed=index), 24)
    result = run_cli("build", "--model", "net.onnx", "--calib", "calib", "--target", "arm-cpu", "--out", "out",
                     "--no-host-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    inputs = json.loads((tmp_path / "out" / "manifest.json").read_text())["io"]["inputs"]
    assert inputs[0]["shape"] == [1, 800]


@pytest.mark.slow
def test_openwakeword_melspectrogram_builds_from_wav_files(tmp_path):
    """The shipped frontend (dims batch_size x samples) fed 16 kHz int16 recordings in int16 units, as
    openWakeWord feeds it: the same int8 model as from an .npz of the windows the `wave` module reads,
    and int8 vs ONNX Runtime FP32 within the corpus' figure for this int8-hostile model (2.4 dB,
    benchmarks/results/real_model_corpus.json)."""
    from edgepipe import graph
    from tests.helpers import deployed_outputs, sqnr_db
    from tests.realmodels.corpus import member_path
    from tests.realmodels.inputs import speech_audio

    model = member_path("openwakeword", "openwakeword/resources/models/melspectrogram.onnx")
    rng = np.random.default_rng(0)
    folder = tmp_path / "speech"
    folder.mkdir()
    windows = []
    for index in range(6):
        audio = np.clip(speech_audio(rng, 12400 * 3), -32768, 32767).astype(np.int64)[:, None]
        _write_with_wave(folder / f"utt{index}.wav", audio, 16)
        with wave.open(str(folder / f"utt{index}.wav")) as recording:
            samples = np.frombuffer(recording.readframes(recording.getnframes()), "<i2").astype(np.float32)
        windows += [samples[i * 12400:(i + 1) * 12400] for i in range(3)]
    np.savez(tmp_path / "speech.npz", input=np.stack(windows))
    (tmp_path / "edgepipe.yaml").write_text("preprocess:\n  sample_rate: 16000\n  audio_scale: int16\n")
    for source, out in (("speech", "bundle"), ("speech.npz", "from_npz")):
        result = run_cli("build", "--model", str(model), "--calib", source, "--input-shape", "input:1x12400",
                         "--target", "arm-cpu", "--out", out, "--no-host-report", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "bundle" / "model.tflite").read_bytes() == (tmp_path / "from_npz" / "model.tflite").read_bytes()
    session = graph.make_session(onnx.load(str(model)))
    feed = {"input": np.stack(windows[-3:])[:1]}
    assert sqnr_db(session.run(None, feed)[0], deployed_outputs(tmp_path / "bundle", feed)[0]) > 2.0


def test_class_subfolders_label_every_window(tmp_path):
    for label, (name, frames) in enumerate((("no", 50), ("yes", 70))):
        (tmp_path / name).mkdir()
        _write_with_wave(tmp_path / name / "take.wav", _pcm(16, 1, frames, seed=label), 16)
    data = load_dataset(tmp_path, {"x": ((1, 16), np.dtype(np.float32))})
    assert data.class_names == ["no", "yes"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_array_equal(data.sample(4)["x"][0], (_pcm(16, 1, 70, seed=1)[16:32, 0] / 32768).astype(np.float32))


def test_data_path_messages_name_wav_among_the_forms(tmp_path):
    """Both readers (a whole dataset, and the first sample's shape for a dynamic dim) list .wav."""
    from edgepipe.data import infer_static_shape

    (tmp_path / "take.mp3").write_bytes(b"ID3")
    for path in (tmp_path / "missing.wav", tmp_path / "take.mp3"):
        for read in (lambda: load_dataset(path, {"x": ((1, 16000), np.dtype(np.float32))}),
                     lambda: infer_static_shape(path, "x", declared=(1, "time"))):
            with pytest.raises(UserError, match=r"\.npy or a \.wav file$") as info:
                read()
            assert str(path) in str(info.value) and "folder of images or .wav files" in str(info.value)
