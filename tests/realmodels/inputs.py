"""Synthetic but realistic inputs for the corpus, rendered with PIL and preprocessed the way each
package does it (no data set download).

Text lines on varied backgrounds for the recognizer/classifier, document pages for the detectors
and the orientation classifier, scenes with skin-coloured shapes for YOLO, drawn faces for MTCNN,
voiced speech-like audio (and its log-mel frames and speech embeddings, computed with the shipped
openWakeWord front models in ONNX Runtime, as the package chains them) for the audio models, and
text, code, markup and binary-header bytes for Magika.
The same generator with different seeds gives calibration and held-out evaluation sets.
"""

from __future__ import annotations

import functools

import numpy as np

from tests.realmodels.corpus import MODELS

WORDS = ("invoice total amount date number order customer address street city phone email price qty "
         "item description tax subtotal balance due paid account bank reference code shipping "
         "delivery receipt store cash card change thank you visit again www example com").split()
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
SKIN = [(224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (241, 194, 125)]


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def random_text(rng: np.random.Generator) -> str:
    kind = rng.integers(4)
    if kind == 0:
        return " ".join(rng.choice(WORDS, rng.integers(1, 4)))
    if kind == 1:
        return f"{rng.choice(WORDS).capitalize()}: {rng.integers(1, 99999)}.{rng.integers(0, 99):02d}"
    if kind == 2:
        return f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/{rng.integers(1990, 2030)} {rng.choice(WORDS).upper()}"
    return "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-"), rng.integers(4, 14)))


def _background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 background (flat, gradient or noisy) and a contrasting ink level."""
    h, w = size
    base = rng.uniform(150, 255) if rng.random() < 0.8 else rng.uniform(0, 90)
    image = np.full((h, w, 3), base, np.float32) + rng.uniform(-20, 20, 3)
    if rng.random() < 0.5:
        image += np.linspace(0, rng.uniform(-40, 40), w)[None, :, None]
    image += rng.normal(0, rng.uniform(0, 10), image.shape)
    ink = int(rng.uniform(0, 70)) if base > 120 else int(rng.uniform(190, 255))
    return np.clip(image, 0, 255).astype(np.uint8), ink


def _chw(image, scale: str) -> np.ndarray:
    """PIL RGB image -> CHW float32 with a package's normalisation."""
    x = np.asarray(image.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
    if scale == "paddle_ocr":
        return (x - 0.5) / 0.5
    if scale == "imagenet":
        return (x - IMAGENET_MEAN) / IMAGENET_STD
    if scale == "mtcnn":
        return (x * 255.0 - 127.5) * 0.0078125
    return x


def text_line(rng: np.random.Generator, height: int, width: int, flip: bool = False) -> tuple[np.ndarray, str]:
    """A text line as rapidocr feeds its recognizer: resized to `height`, left-aligned, zero-padded
    (after normalisation) to `width`. Returns (CHW float32 in [-1, 1], text)."""
    from PIL import Image, ImageDraw

    text = random_text(rng)
    font = _font(int(rng.integers(22, 34)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 8))
    canvas, ink = _background(rng, (bottom - top + 2 * pad, right - left + 2 * pad))
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=(ink, ink, ink), font=font)
    if flip:
        image = image.rotate(180)
    resized_w = min(width, int(np.ceil(height * image.width / image.height)))
    image = image.resize((resized_w, height), Image.BILINEAR)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = _chw(image, "paddle_ocr")
    return out, text


def document_image(rng: np.random.Generator, height: int, width: int):
    """A synthetic document page (text lines, rules, a table-like box, a dark figure block) as a PIL image."""
    from PIL import Image, ImageDraw

    canvas, ink = _background(rng, (height, width))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(4, 30))
    while y < height - 20:
        font_size = int(rng.integers(12, 28))
        roll = rng.random()
        if roll < 0.08 and y < height - 80:  # figure
            h = int(rng.integers(40, min(160, height - y - 10)))
            x0 = int(rng.integers(10, width // 3))
            draw.rectangle((x0, y, x0 + int(rng.integers(width // 4, width // 2)), y + h),
                           fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
            y += h + 10
            continue
        if roll < 0.14 and y < height - 60:  # table
            h = int(rng.integers(30, min(120, height - y - 10)))
            draw.rectangle((10, y, width - 10, y + h), outline=(ink, ink, ink), width=1)
            for x in np.linspace(10, width - 10, int(rng.integers(3, 6)))[1:-1]:
                draw.line((int(x), y, int(x), y + h), fill=(ink, ink, ink), width=1)
            y += h + 10
            continue
        x = int(rng.integers(4, max(5, width // 3)))
        draw.text((x, y), random_text(rng), fill=(ink, ink, ink), font=_font(font_size))
        if rng.random() < 0.15:
            draw.line((4, y + font_size + 4, width - 4, y + font_size + 4), fill=(ink, ink, ink), width=1)
        y += font_size + int(rng.integers(6, 30))
    return image


def scene_image(rng: np.random.Generator, height: int, width: int, faces: bool = False):
    """A synthetic scene (gradient sky, ellipses and boxes of skin-like and other colours)."""
    from PIL import Image, ImageDraw

    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, height)[:, None, None]
    canvas = (top * (1 - t) + bottom * t) * np.ones((1, width, 1))
    image = Image.fromarray(np.clip(canvas + rng.normal(0, 6, canvas.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 9))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(20, max(21, width // 2))), y0 + int(rng.integers(20, max(21, height // 2)))
        colour = tuple(int(c) for c in (SKIN[rng.integers(len(SKIN))] if rng.random() < 0.6 else rng.integers(0, 255, 3)))
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    if faces:
        for _ in range(int(rng.integers(1, 4))):
            size = int(rng.integers(min(height, width) // 4, min(height, width) // 2))
            x0, y0 = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
            draw_face(draw, rng, (x0, y0, x0 + size, y0 + size))
    return image


def draw_face(draw, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """A frontal face: skin ellipse, hair, eyes, nose, mouth, placed in `box`."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    skin = SKIN[rng.integers(len(SKIN))]
    hair = tuple(int(c) for c in rng.integers(0, 90, 3))
    draw.ellipse((x0, y0, x1, y1 + h // 8), fill=hair)
    draw.ellipse((x0 + w // 10, y0 + h // 8, x1 - w // 10, y1), fill=skin)
    eye_y = y0 + int(h * rng.uniform(0.38, 0.46))
    for ex in (x0 + int(w * 0.33), x0 + int(w * 0.67)):
        r = max(1, w // 14)
        draw.ellipse((ex - 2 * r, eye_y - r, ex + 2 * r, eye_y + r), fill=(245, 245, 245))
        draw.ellipse((ex - r, eye_y - r, ex + r, eye_y + r), fill=(40, 30, 20))
    nose = (x0 + w // 2, y0 + int(h * 0.6))
    draw.line((nose[0], eye_y + h // 10, nose[0] - w // 20, nose[1]), fill=tuple(max(0, c - 60) for c in skin), width=2)
    mouth_y = y0 + int(h * 0.75)
    draw.arc((x0 + int(w * 0.32), mouth_y - h // 12, x0 + int(w * 0.68), mouth_y + h // 12), 10, 170,
             fill=(150, 40, 50), width=max(1, h // 30))


def face_crop(rng: np.random.Generator, height: int, width: int):
    """What RNet/ONet see: a square crop around a face proposal (jittered, sometimes a non-face)."""
    from PIL import Image, ImageDraw

    size = 96
    image = scene_image(rng, size, size)
    if rng.random() < 0.75:
        jitter = rng.integers(-12, 13, 2)
        margin = int(rng.integers(4, 16))
        draw_face(ImageDraw.Draw(image), rng, (margin + int(jitter[0]), margin + int(jitter[1]),
                                               size - margin + int(jitter[0]), size - margin + int(jitter[1])))
    return image.resize((width, height), Image.BILINEAR)


CAPTCHA_GLYPHS = list("abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ")


def _glyph(rng: np.random.Generator, char: str, size: int, colour: tuple) -> "Image.Image":
    """One rotated character on a transparent tile."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGBA", (size + size // 2, size + size // 2), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((size // 6, size // 8), char, fill=colour + (255,), font=_font(size))
    return tile.rotate(float(rng.uniform(-30, 30)), resample=Image.BICUBIC)


def captcha(rng: np.random.Generator, out_height: int, out_width: int) -> np.ndarray:
    """A text captcha as ddddocr 1.6 feeds its recognizers: 4-6 rotated, jittered characters of
    random colours on a light background with interference lines and dots, rendered at a common
    captcha size of the output's aspect (100x40 to 160x64), resized to height `out_height`
    (LANCZOS), grayscale, divided by 255 ([1, out_height, out_width])."""
    from PIL import Image, ImageDraw

    scale = float(rng.choice([0.625, 0.75, 0.875, 1.0]))
    height, width = int(round(out_height * scale)), int(round(out_width * scale))
    text = "".join(rng.choice(CAPTCHA_GLYPHS, int(rng.integers(4, 7))))
    image = Image.fromarray(_background(rng, (height, width))[0] if rng.random() < 0.3 else
                            np.full((height, width, 3), rng.integers(170, 256, 3), np.uint8))
    draw = ImageDraw.Draw(image)
    x = int(rng.integers(2, 14))
    step = (width - x - 16) / len(text)
    for char in text:
        colour = tuple(int(c) for c in rng.integers(0, 130, 3))
        tile = _glyph(rng, char, int(rng.integers(height // 2 - 4, height // 2 + 8)), colour)
        image.paste(tile, (x, int(rng.integers(-height // 10, height // 6))), tile)
        x += int(step * rng.uniform(0.8, 1.05))
    for _ in range(int(rng.integers(1, 4))):
        draw.line([tuple(int(v) for v in rng.integers(0, [width, height])) for _ in range(2)],
                  fill=tuple(int(c) for c in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(20, 120))):
        draw.point(tuple(int(v) for v in rng.integers(0, [width, height])), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image = image.resize((out_width, out_height), Image.LANCZOS).convert("L")
    return (np.asarray(image, np.float32) / 255.0)[None]


def click_captcha(rng: np.random.Generator, size: int) -> np.ndarray:
    """A click captcha as ddddocr's detector gets it: a scene photo-like background with 3-6
    outlined characters, letterboxed into `size` x `size` (linear resize, pad value 114), BGR
    channels as cv2 decodes them, 0-255 floats (no normalisation), CHW."""
    from PIL import Image

    height, width = (int(v) for v in rng.choice([(160, 320), (200, 300), (344, 344), (155, 310)]))
    image = scene_image(rng, height, width).convert("RGB")
    for _ in range(int(rng.integers(3, 7))):
        glyph_size = int(rng.integers(24, 44))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        tile = _glyph(rng, str(rng.choice(CAPTCHA_GLYPHS)), glyph_size, colour)
        outline = Image.new("RGBA", tile.size, (0, 0, 0, 0))
        alpha = np.asarray(tile)[..., 3]
        halo = np.zeros_like(alpha)
        for dy in (-2, 0, 2):
            for dx in (-2, 0, 2):
                halo = np.maximum(halo, np.roll(np.roll(alpha, dy, 0), dx, 1))
        outline.putalpha(Image.fromarray(halo))
        x, y = int(rng.integers(0, width - tile.width)), int(rng.integers(0, height - tile.height))
        image.paste(outline, (x, y), outline)
        image.paste(tile, (x, y), tile)
    ratio = min(size / height, size / width)
    resized = image.resize((int(width * ratio), int(height * ratio)), Image.BILINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.height, : resized.width] = np.asarray(resized)[..., ::-1]  # RGB -> BGR
    return canvas.transpose(2, 0, 1).astype(np.float32)


SAMPLE_RATE = 16000
MEL_HOP, MEL_WINDOW, EMBED_FRAMES, EMBED_STEP = 160, 512, 76, 8  # openWakeWord's framing


def speech_audio(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Voiced, speech-like audio at 16 kHz in int16 units (what openWakeWord feeds its melspectrogram
    model): syllables of a harmonic source with a gliding pitch shaped by two formant resonances,
    pauses, breath noise and room hum, at a random level."""
    t = np.arange(samples) / SAMPLE_RATE
    audio = np.zeros(samples)
    start = int(rng.integers(0, SAMPLE_RATE // 10))
    while start < samples:
        length = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)
        seg = slice(start, min(samples, start + length))
        n = seg.stop - seg.start
        f0 = rng.uniform(90, 250) * (1 + rng.uniform(-0.2, 0.2) * np.linspace(0, 1, n))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        formants = rng.uniform([300, 900], [900, 2600])
        voiced = sum(np.cos(k * phase) * sum(1 / (1 + ((k * f0 - f) / 120) ** 2) for f in formants)
                     for k in range(1, 24))
        audio[seg] += voiced * np.hanning(n) ** 0.5 * rng.uniform(0.3, 1.0)
        start += length + int(rng.uniform(0.0, 0.15) * SAMPLE_RATE)
    audio /= max(float(np.max(np.abs(audio))), 1e-9)
    audio += rng.normal(0, rng.uniform(0.002, 0.03), samples) + 0.01 * np.sin(2 * np.pi * 50 * t)
    return (audio * rng.uniform(1500, 20000)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _oww_session(member: str):
    import onnxruntime as ort

    from tests.realmodels.corpus import member_path

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(member_path("openwakeword", "openwakeword/resources/models/" + member)),
                                options, providers=["CPUExecutionProvider"])


def speech_melspec(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames, 32] log-mel features as openWakeWord makes them: its shipped melspectrogram model
    (ONNX Runtime) on speech-like audio, then `x / 10 + 2`."""
    audio = speech_audio(rng, MEL_WINDOW + (frames - 1) * MEL_HOP)
    mel = _oww_session("melspectrogram.onnx").run(None, {"input": audio[None]})[0]
    return (mel.reshape(-1, 32)[:frames] / 10 + 2).astype(np.float32)


def speech_embeddings(rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, 96] speech embeddings: the shipped embedding model on sliding 76-frame windows."""
    mel = speech_melspec(rng, EMBED_FRAMES + (count - 1) * EMBED_STEP)
    windows = np.stack([mel[k * EMBED_STEP : k * EMBED_STEP + EMBED_FRAMES] for k in range(count)])[..., None]
    return _oww_session("embedding_model.onnx").run(None, {"input_1": windows})[0].reshape(count, 96)


@functools.lru_cache(maxsize=None)
def _pipecat_whisper_features():
    """pipecat's own Whisper log-mel features (its vendored numpy module, loaded from the wheel:
    the package itself needs pipecat's dependencies)."""
    import importlib.util

    from tests.realmodels.corpus import member_path

    path = member_path("pipecat-ai", "pipecat/audio/turn/smart_turn/_whisper_features.py")
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_whisper_log_mel_features


def whisper_features(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[80, frames] as pipecat's Smart Turn v3 feeds its model: the last 8 s of speech-like audio
    (0.5-8 s of it, left-padded with zeros), in [-1, 1], through pipecat's Whisper log-mel code."""
    samples = frames * 160
    voiced = speech_audio(rng, int(rng.uniform(0.5, 1.0) * samples)) / 32768.0
    audio = np.concatenate([np.zeros(samples - len(voiced), np.float32), voiced]).astype(np.float32)
    features = _pipecat_whisper_features()(audio, do_normalize=True)
    return np.asarray(features, np.float32)[:, :frames]


FILE_SNIPPETS = (b"#!/usr/bin/env python3\nimport os\n\ndef main(argv):\n    return len(argv)\n",
                 b"<!DOCTYPE html>\n<html><head><title>Report</title></head><body><p>",
                 b'{"id": 17, "name": "sensor", "values": [0.5, 1.25, 3.0], "ok": true}\n',
                 b"id,name,price,qty\n1,widget,3.50,10\n2,gadget,12.00,3\n",
                 b"#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }\n",
                 b"[server]\nport = 8080\nhost = \"0.0.0.0\"\n")
BINARY_HEADERS = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
                  b"\x7fELF\x02\x01\x01\x00", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", b"\xff\xd8\xff\xe0\x00\x10JFIF")


def file_content(rng: np.random.Generator) -> bytes:
    """A small file: prose, code, markup, CSV or JSON text, or a binary header with compressed-looking data."""
    if rng.random() < 0.35:
        body = rng.integers(0, 256, int(rng.integers(200, 6000)), dtype=np.uint8).tobytes()
        return BINARY_HEADERS[rng.integers(len(BINARY_HEADERS))] + body
    parts = []
    for _ in range(int(rng.integers(2, 80))):
        parts.append(FILE_SNIPPETS[rng.integers(len(FILE_SNIPPETS))] if rng.random() < 0.5
                     else (random_text(rng) + "\n").encode())
    return b"".join(parts)


def magika_features(content: bytes, size: int = 512, padding: int = 256) -> np.ndarray:
    """Magika v0.5's features of a small file: the stripped content's first, middle and last `size`
    bytes, padded with token 256 (end padded on the left)."""
    data = np.frombuffer(content.strip(), np.uint8).astype(np.float32)
    beg = np.full(size, padding, np.float32)
    beg[: min(size, len(data))] = data[:size]
    end = np.full(size, padding, np.float32)
    tail = data[-size:]
    end[size - len(tail):] = tail
    mid = np.full(size, padding, np.float32)
    cut = data[max(0, (len(data) - size) // 2):][:size]
    left = (size - len(cut)) // 2
    mid[left : left + len(cut)] = cut
    return np.concatenate([beg, mid, end])


def speech_chunks(name: str, rng: np.random.Generator, count: int) -> dict:
    """Silero VAD streaming inputs: `input` [seq, 576] = seq consecutive 512-sample chunks, each
    with the previous 64 samples as context, and the LSTM state the shipped model (ONNX Runtime)
    carries into that window after 0-3 earlier windows of the same recording: `h`, `c` of the
    sequence model, `state` (h and c stacked) and the pinned `sr` of the If model."""
    import onnxruntime as ort

    from tests.realmodels.corpus import model_path

    spec = MODELS[name]
    seq, width = spec.shape
    chunk, context = 512, width - 512
    pinned = {key: np.array(value, np.int64) for key, value in spec.input_values}
    session = ort.InferenceSession(str(model_path(name)), providers=["CPUExecutionProvider"])
    state_names = [i.name for i in session.get_inputs() if i.name != spec.input_name and i.name not in pinned]
    zero_state = {n: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                  for n, i in ((i.name, i) for i in session.get_inputs()) if n in state_names}
    inputs: dict[str, list] = {n: [] for n in [spec.input_name, *state_names, *pinned]}
    for _ in range(count):
        warmup = int(rng.integers(0, 4))
        audio = speech_audio(rng, (warmup + 1) * seq * chunk + context) / 32768.0  # int16 units -> [-1, 1]
        state = dict(zero_state)
        for window in range(warmup + 1):
            start = window * seq * chunk
            frames = np.stack([audio[start + k * chunk: start + (k + 1) * chunk + context] for k in range(seq)])
            if window == warmup:
                break
            outputs = session.run(None, {spec.input_name: frames, **state, **pinned})
            state = dict(zip(state_names, outputs[1:]))  # the outputs after the first carry the state
        for key, value in {spec.input_name: frames, **state, **pinned}.items():
            inputs[key].append(value)
    return {"x": {key: np.stack(values) for key, values in inputs.items()}}


def _audio_kinds() -> dict:
    from tests.realmodels import audio_inputs as audio

    return {
        "degraded_speech": lambda rng, count, shape: np.stack([audio.degraded_speech(rng, shape[1]) for _ in range(count)]),
        "speaker_mels": lambda rng, count, shape: np.stack([audio.resemblyzer_mels(rng, shape[1]) for _ in range(count)]),
        "music": lambda rng, count, shape: np.stack([audio.music_audio(rng, shape[1]) for _ in range(count)]),
        "crepe_frames": audio.crepe_frames,
        "aecmos_features": audio.aecmos_features,
    }


def arabic_chars(rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """Character ids of undiacritized Arabic text (words of 2-7 letters and spaces, cut to `length`)
    through the vocabulary text2tashkeel ships next to its Rawi model (unknown characters -> <UNK>)."""
    import json

    from tests.realmodels.corpus import member_path

    vocab = json.loads(member_path("text2tashkeel", "text2tashkeel/models/rawi.vocab.json").read_text("utf-8"))
    char_to_id = vocab["char_to_idx"]
    letters = [c for c in char_to_id if "\u0621" <= c <= "\u064a"]
    rows = []
    for _ in range(count):
        text = ""
        while len(text) < length:
            text += "".join(rng.choice(letters, int(rng.integers(2, 8)))) + " "
        rows.append([char_to_id.get(c, char_to_id["<UNK>"]) for c in text[:length]])
    return np.asarray(rows, np.int64)


def make_inputs(name: str, count: int, seed: int) -> dict:
    """{"x": [count, *shape[1:]] float32, plus "texts"/"labels" where the inputs have them}; a
    model with several inputs gets {"x": {input name: [count, *sample shape]}}."""
    spec = MODELS[name]
    rng = np.random.default_rng(seed)
    kind = spec.inputs
    audio_kinds = _audio_kinds()
    if kind == "speech_chunks":
        return speech_chunks(name, rng, count)
    if kind == "speech_audio":
        return {"x": np.stack([speech_audio(rng, spec.shape[1]) for _ in range(count)])}
    if kind == "speech_melspec":
        return {"x": np.stack([speech_melspec(rng, spec.shape[1])[..., None] for _ in range(count)])}
    if kind == "speech_embeddings":
        return {"x": np.stack([speech_embeddings(rng, spec.shape[1]) for _ in range(count)])}
    if kind == "whisper_features":
        return {"x": np.stack([whisper_features(rng, spec.shape[2]) for _ in range(count)])}
    if kind == "pitch_audio":
        from tests.realmodels.audio_inputs import pitch_audio

        return pitch_audio(rng, count, spec.shape)
    if kind in audio_kinds:
        return {"x": audio_kinds[kind](rng, count, spec.shape)}
    if kind == "arabic_chars":
        return {"x": arabic_chars(rng, count, spec.shape[1])}
    if kind == "file_bytes":
        return {"x": np.stack([magika_features(file_content(rng)) for _ in range(count)])}
    _, _, h, w = spec.shape
    if kind == "captcha":
        return {"x": np.stack([captcha(rng, h, w) for _ in range(count)])}
    if kind == "click_captcha":
        return {"x": np.stack([click_captcha(rng, h) for _ in range(count)])}
    if kind == "text_line":
        pairs = [text_line(rng, h, w) for _ in range(count)]
        return {"x": np.stack([p[0] for p in pairs]), "texts": [p[1] for p in pairs]}
    if kind == "flipped_text_line":
        labels = rng.integers(0, 2, count)
        return {"x": np.stack([text_line(rng, h, w, flip=bool(f))[0] for f in labels]), "labels": labels}
    if kind == "rotated_document":
        labels = rng.integers(0, 4, count)
        images = [document_image(rng, 320, 320).rotate(90 * int(k), expand=True).resize((w, h)) for k in labels]
        return {"x": np.stack([_chw(i, "imagenet") for i in images]), "labels": labels}
    if kind == "document":
        return {"x": np.stack([_chw(document_image(rng, h, w), "paddle_ocr") for _ in range(count)])}
    if kind == "layout_page":
        return {"x": np.stack([_chw(document_image(rng, h, w), "imagenet") for _ in range(count)])}
    if kind == "scene":
        return {"x": np.stack([_chw(scene_image(rng, h, w), "unit") for _ in range(count)])}
    if kind == "imagenet_scene":
        return {"x": np.stack([_chw(scene_image(rng, h, w, faces=True), "imagenet") for _ in range(count)])}
    if kind == "face_scene":
        return {"x": np.stack([_chw(scene_image(rng, h, w, faces=True), "mtcnn") for _ in range(count)])}
    if kind == "face_scene_255":
        return {"x": np.stack([_chw(scene_image(rng, h, w, faces=True), "unit") * 255.0 for _ in range(count)])}
    if kind == "face_crop":
        return {"x": np.stack([_chw(face_crop(rng, h, w), "mtcnn") for _ in range(count)])}
    raise ValueError(f"{name}: no input generator '{kind}'")
