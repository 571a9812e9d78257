"""Audio inputs for the speech-quality, speaker and music corpus models, preprocessed the way each
package does it: DNSMOS gets 9.01 s of 16 kHz audio in [-1, 1]; Resemblyzer 160 frames of a 40-band power
mel spectrogram (librosa's Slaney filterbank, repeated here: librosa is not a dependency) of
audio normalized to -30 dBFS; Basic Pitch 43844 samples of 22.05 kHz music in [-1, 1].

Speech comes from inputs.speech_audio (voiced syllables, formants, pauses); quality varies the
way these models' users see it (added noise, clipping, dropped packets).
"""

from __future__ import annotations

import numpy as np

from tests.realmodels.inputs import SAMPLE_RATE, speech_audio


def degraded_speech(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Speech in [-1, 1] with the impairments a MOS model rates: background noise at a random SNR,
    sometimes clipping, sometimes zeroed 20 ms packets (what packet-loss concealment leaves)."""
    audio = speech_audio(rng, samples) / 32768.0
    audio = audio / max(float(np.max(np.abs(audio))), 1e-9) * rng.uniform(0.1, 0.9)
    snr_db = rng.uniform(0, 40)
    noise = rng.normal(0, 1, samples) * np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10))
    audio = audio + noise
    if rng.random() < 0.3:
        limit = rng.uniform(0.2, 0.6) * float(np.max(np.abs(audio)))
        audio = np.clip(audio, -limit, limit)
    if rng.random() < 0.5:
        packet = SAMPLE_RATE // 50
        for start in rng.choice(samples // packet, size=int(rng.integers(1, 12)), replace=False):
            audio[start * packet : (start + 1) * packet] = 0.0
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] like librosa.filters.mel (Slaney mel scale, area-normalized)."""
    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        linear = f / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log_part, linear)

    def mel_to_hz(m):
        m = np.asarray(m, np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    widths = np.diff(mel_freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_freqs[2 : n_mels + 2] - mel_freqs[:n_mels]))[:, None]


def resemblyzer_mels(rng: np.random.Generator, frames: int = 160) -> np.ndarray:
    """[frames, 40] as Resemblyzer's VoiceEncoder gets a partial utterance: audio normalized to
    -30 dBFS, librosa.feature.melspectrogram (n_fft 400, hop 160, Hann, centred, power 2), transposed."""
    n_fft, hop = 400, 160
    audio = speech_audio(rng, (frames - 1) * hop).astype(np.float64) / 32768.0
    audio *= 10 ** (-30 / 20) / max(np.sqrt(np.mean(audio**2)), 1e-9)
    padded = np.pad(audio, n_fft // 2, mode="constant")
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as librosa
    starts = np.arange(frames) * hop
    spectrum = np.abs(np.fft.rfft(np.stack([padded[s : s + n_fft] * window for s in starts]), axis=1)) ** 2
    return (spectrum @ _slaney_mel_filterbank(SAMPLE_RATE, n_fft, 40).T).astype(np.float32)


MUSIC_RATE = 22050


def music_audio(rng: np.random.Generator, samples: int) -> np.ndarray:
    """[samples, 1] at 22.05 kHz in [-1, 1], as Basic Pitch windows its input: notes and chords of
    a plucked/piano-like harmonic tone (decaying partials, slight inharmonicity) over a quiet floor."""
    t = np.arange(samples) / MUSIC_RATE
    audio = np.zeros(samples)
    start = 0
    while start < samples:
        length = int(rng.uniform(0.15, 0.8) * MUSIC_RATE)
        for midi in rng.integers(40, 84, size=int(rng.integers(1, 4))):
            f0 = 440.0 * 2 ** ((midi - 69) / 12)
            n = min(samples - start, length + int(0.3 * MUSIC_RATE))
            tt = t[:n]
            decay = np.exp(-tt * rng.uniform(2, 8))
            tone = sum(np.sin(2 * np.pi * k * f0 * np.sqrt(1 + 1e-4 * k * k) * tt) / k ** rng.uniform(1, 2)
                       for k in range(1, 12) if k * f0 < MUSIC_RATE / 2)
            audio[start : start + n] += tone * decay * (1 - np.exp(-tt * 400)) * rng.uniform(0.3, 1.0)
        start += length
    audio /= max(float(np.max(np.abs(audio))), 1e-9)
    audio = audio * rng.uniform(0.2, 0.95) + rng.normal(0, 1e-3, samples)
    return np.clip(audio, -1, 1).astype(np.float32)[:, None]


SWIFT_F0_RANGE = (46.875, 2093.75)  # swift_f0.core.FMIN / FMAX: the package's defaults and limits


def pitch_audio(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> dict:
    """SwiftF0's three inputs as its detector feeds them: `audio` [1, samples] at 16 kHz in [-1, 1]
    (speech, or music at 16 kHz), and the float32 scalars `fmin`/`fmax`: the package's defaults, or
    (every other sample) a band a user narrows to a voice's range."""
    samples = shape[1]
    audio, fmin, fmax = [], [], []
    for k in range(count):
        if k % 3 == 2:
            clip = music_audio(rng, samples)[:, 0]
        else:
            clip = speech_audio(rng, samples) / 32768.0
            clip = clip / max(float(np.max(np.abs(clip))), 1e-9) * rng.uniform(0.1, 0.9)
        audio.append(clip.astype(np.float32)[None, :])
        low, high = SWIFT_F0_RANGE
        if k % 2:
            low = float(rng.uniform(low, 120.0))
            high = float(rng.uniform(400.0, 1200.0))
        fmin.append(np.float32(low))
        fmax.append(np.float32(high))
    return {"x": {"audio": np.stack(audio), "fmin": np.array(fmin, np.float32), "fmax": np.array(fmax, np.float32)}}


def crepe_frames(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """[count, 1024] frames as torchcrepe.preprocess gives CREPE: 1024 samples at 16 kHz (speech,
    or music resampled by taking 16 kHz worth of samples), each made zero-mean and divided by its
    standard deviation (floored at 1e-10)."""
    frames = []
    for k in range(count):
        clip = music_audio(rng, shape[1])[:, 0] if k % 3 == 2 else speech_audio(rng, shape[1]) / 32768.0
        clip = clip - clip.mean()
        frames.append(clip / max(float(clip.std()), 1e-10))
    return np.stack(frames).astype(np.float32)


AECMOS_DFT, AECMOS_MELS, AECMOS_MARKER_ROWS = 512, 160, 20


def _aecmos_mel(signal: np.ndarray) -> np.ndarray:
    """[frames, 160] as speechmos's AECMOS transforms a clip: librosa.feature.melspectrogram (n_fft
    513, hop 256, Hann, centred with zero padding, power 2, Slaney mel), power_to_db(ref=max,
    top_db=80), then (dB + 40) / 40."""
    n_fft, hop = AECMOS_DFT + 1, AECMOS_DFT // 2
    padded = np.pad(signal, n_fft // 2)
    frames = 1 + (len(padded) - n_fft) // hop
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as scipy.signal.get_window("hann", n_fft)
    stack = np.stack([padded[k * hop : k * hop + n_fft] * window for k in range(frames)])
    power = np.abs(np.fft.rfft(stack, axis=1)) ** 2
    mel = power @ _slaney_mel_filterbank(SAMPLE_RATE, n_fft, AECMOS_MELS).T
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db - db.max(), -80.0)
    return (db + 40) / 40


def aecmos_features(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> dict:
    """AECMOS's two inputs as speechmos feeds its 16 kHz scenario model: `input` [1, 3, frames,
    160], the far-end loopback, the microphone (its echo, near-end speech or both, and noise) and
    the echo canceller's output as log-mel frames, each followed by the talk-type marker rows; and
    `h0` [4, 1, 64], the GRU state, zeros. `frames` = shape[2] (clip frames + 40 marker rows)."""
    samples = (shape[2] - 2 * AECMOS_MARKER_ROWS - 1) * (AECMOS_DFT // 2) + 1
    features = []
    for k in range(count):
        far = speech_audio(rng, samples) / 32768.0
        near = speech_audio(rng, samples) / 32768.0 * (k % 3 != 1)  # single talk (far end only) every third clip
        echo = np.convolve(far, rng.normal(0, 1, 400) * np.exp(-np.arange(400) / 80.0), mode="same") * 0.1
        mic = echo * (k % 3 != 0) + near + rng.normal(0, 0.003, samples)
        enh = mic - echo * rng.uniform(0.7, 1.0) * (k % 3 != 0)
        talk = ("nst", "st", "dt")[k % 3]  # near-end single talk, far-end single talk, double talk
        near_end, far_end = talk == "nst", talk == "st"
        rows = []
        for signal, marker in ((far, 1 - near_end), (mic, 1 - far_end), (enh, 1)):
            mel = _aecmos_mel(signal)
            rows.append(np.concatenate([mel, np.full((AECMOS_MARKER_ROWS, AECMOS_MELS), float(marker)),
                                        np.zeros((AECMOS_MARKER_ROWS, AECMOS_MELS))]))
        features.append(np.stack(rows)[None])
    return {"input": np.stack(features).astype(np.float32), "h0": np.zeros((count, 4, 1, 64), np.float32)}
