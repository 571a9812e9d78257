"""Image files as model input samples: decode, resize / crop, scale, normalize, lay out.

Why apart from data.py: this is the one place that touches pixels (Pillow), and what a user's
preprocessing must match (layout, channel order, scale, mean / std) is decided here, from the
`preprocess` settings or, where they are left out, from the model input itself.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe.errors import UserError
from edgepipe.isolation import native_stderr_silenced
from edgepipe.npyfile import first_line
from edgepipe.safeio import IMAGE_MAX_BYTES, ensure_regular_file

MAX_RESIZED_PIXELS = 1 << 26  # an 8192x8192 image (192 MB as RGB bytes): past any model input or photo


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu" and np.asarray(array).dtype.kind == "f":
        info = np.iinfo(dtype)
        array = np.clip(np.round(array), info.min, info.max)
    return np.asarray(array).astype(dtype, copy=False)


@dataclass(frozen=True)
class ImageTransform:
    """Decode one image file and turn it into one model input sample (no batch dim)."""

    size: tuple[int, int] | None
    stretch: bool
    scale: float
    mean: np.ndarray | None
    std: np.ndarray | None
    bgr: bool
    grayscale: bool
    channels_first: bool
    dtype: np.dtype

    @classmethod
    def from_preprocess(cls, source: Path, preprocess: dict, shape: tuple, dtype: np.dtype) -> "ImageTransform":
        """Validate the preprocess dict against the model input (shape incl. batch, dtype)."""
        layout = str(preprocess.get("layout") or _guess_layout(shape)).upper()  # None: from the input
        if layout not in ("NCHW", "NHWC"):
            raise UserError(f"{source}: preprocess layout '{layout}' is not NCHW or NHWC")
        static = lambda d: d if isinstance(d, int) and d > 0 else None  # noqa: E731
        dims = [static(d) for d in shape] + [None] * (4 - len(shape))
        channels, height, width = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        grayscale = bool(channels == 1 if preprocess.get("grayscale") is None else preprocess["grayscale"])
        if channels is not None and channels != (1 if grayscale else 3):
            raise UserError(f"{source}: the model input has {channels} channels but preprocessing gives "
                            f"{1 if grayscale else 3}; set preprocess grayscale/layout to match")
        size = preprocess.get("size") or ([height, width] if height and width else None)
        if size is not None:
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise UserError(f"{source}: preprocess size must be [height, width], got {size}")
            size = (int(size[0]), int(size[1]))
            if height and width and size != (height, width):  # checked before any image is decoded
                raise UserError(f"{source}: preprocess size {list(size)} is not the model input's [height, width] "
                                f"[{height}, {width}]; set size to [{height}, {width}] or leave it out")
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                raise UserError(f"{source}: preprocess size {list(size)} is {size[0] * size[1]} pixels, more than "
                                f"{MAX_RESIZED_PIXELS}; give the size the model takes")
        order = str(preprocess.get("channel_order", "RGB")).upper()
        if order not in ("RGB", "BGR"):
            raise UserError(f"{source}: preprocess channel_order '{order}' is not RGB or BGR")
        resize = str(preprocess.get("resize", "crop")).lower()
        if resize not in ("crop", "stretch"):
            raise UserError(f"{source}: preprocess resize '{resize}' is not crop or stretch")
        default_scale = 1.0 if dtype.kind in "iu" else 1 / 255
        mean, std = (_channel_values(source, preprocess, key, 1 if grayscale else 3) for key in ("mean", "std"))
        if std is not None and not np.all(std != 0):
            raise UserError(f"{source}: preprocess std contains 0; use the per-channel standard deviations")
        return cls(size, resize == "stretch", float(default_scale if preprocess.get("scale") is None else preprocess["scale"]), mean, std,
                   order == "BGR", grayscale, layout == "NCHW", dtype)

    def __call__(self, path: Path) -> np.ndarray:
        pixels = self._resized(_open_image(path, self.grayscale), path)
        x = np.asarray(pixels, dtype=np.float32)
        x = x[..., None] if x.ndim == 2 else x[..., ::-1] if self.bgr else x
        x = x * np.float32(self.scale)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return _cast(np.ascontiguousarray(x.transpose(2, 0, 1) if self.channels_first else x), self.dtype)

    def _resized(self, image, path: Path):
        from PIL import Image

        if self.size is None or image.size == (self.size[1], self.size[0]):
            return image
        height, width = self.size
        if self.stretch:
            return image.resize((width, height), Image.Resampling.BILINEAR)
        factor = max(height / image.height, width / image.width)
        new_w, new_h = max(width, round(image.width * factor)), max(height, round(image.height * factor))
        if new_w * new_h > MAX_RESIZED_PIXELS:  # a 300-byte 1x60000 PNG made a 224x13440000 image (3 GB)
            raise UserError(f"{path}: {image.width}x{image.height} pixels; scaling its shorter side to the "
                            f"model's {width}x{height} makes {new_w}x{new_h} before the crop; an image this thin is "
                            "not a photo: crop it or drop it")
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return image.crop((left, top, left + width, top + height))


def _guess_layout(shape: tuple) -> str:
    last, second = (shape[-1], shape[1]) if len(shape) == 4 else (None, None)
    return "NHWC" if last in (1, 3) and second not in (1, 3) else "NCHW"


def _channel_values(source: Path, preprocess: dict, key: str, channels: int) -> np.ndarray | None:
    values = preprocess.get(key)
    if values is None:
        return None
    values = [values] if isinstance(values, (int, float)) else list(values)
    if len(values) not in (1, channels) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise UserError(f"{source}: preprocess {key} must be 1 or {channels} numbers (one per channel), got {values}")
    return np.asarray(values, dtype=np.float32)


def _eight_bit(image, path: Path | None = None):
    """16-bit and 32-bit grayscale (PNG 'I;16', 'I') and float ('F') images scaled to 8 bits:
    Pillow's convert('RGB') would clip every value above 255 to white. A float image (TIFF 'F')
    is scaled by its own convention: values in 0..1 are x255 (they became 0 or 1 of 255: black),
    values in 0..255 are kept; any other range (negative, past 255, NaN) has no one reading and is
    refused."""
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if values.size and not np.isfinite(values).all():  # min/max of a NaN pixel: 'values from nan to nan'
            raise UserError(f"{path or 'image'}: a float image holding NaN or infinite pixels; edgepipe reads "
                            "float images in 0..1 or 0..255 only: save it without them, or pass the preprocessed "
                            "arrays as .npy/.npz")
        if not (low >= 0 and high <= 255):
            raise UserError(f"{path or 'image'}: a float image with values from {low:g} to {high:g}; edgepipe reads "
                            "float images in 0..1 or 0..255 only: save it in one of those ranges (or as an 8/16-bit "
                            "image), or pass the preprocessed arrays as .npy/.npz")
        if high <= 1.0:
            values = values * 255.0  # 0..1 -> 0..255
    elif image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _open_image(path: Path, grayscale: bool):
    from PIL import Image

    ensure_regular_file(path, IMAGE_MAX_BYTES, "image")
    try:
        with _decoder_messages_silenced(), Image.open(path) as image:
            image.load()
            return _eight_bit(image, path).convert("L" if grayscale else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot read image ({first_line(exc)}); replace or delete the file") from exc


@contextlib.contextmanager
def _decoder_messages_silenced():
    """A damaged TIFF made libtiff print lines straight to file descriptor 2 ('LZWDecode: ...') and
    PIL warn through `warnings` (with its source line) before edgepipe's one error line: both are
    parked while an image decodes. Main thread only: fd 2 is the process's, not one thread's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings(), native_stderr_silenced():
        warnings.simplefilter("ignore")
        yield
