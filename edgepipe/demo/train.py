"""Re-train the demo model and regenerate the shipped demo data: `python -m edgepipe.demo.train`.

Why a synthetic RGB task: the pipeline folds per-channel normalization and ZCA whitening into
the first conv, which is only tested if the three channels are genuinely correlated and have
different statistics. scikit-learn's 8x8 digits (shipped with sklearn, no download) are
upsampled to 32x32 and colourized deterministically: a dark and a bright colour per image that
share a luminance component (so R, G, B correlate like natural images do), a per-channel tint
(so channel means differ), some inverted digits and small shifts.

Everything is seeded and runs on CPU in well under two minutes. Outputs: the state_dict
(`edgepipe/demo/demo_cnn.pt`), `calib/` (flat PNGs, no labels), `eval/<class>/*.png`
(ImageFolder layout) and `eval.npz` (the same eval images, preprocessed, with labels).
scikit-learn is needed only here, never at run time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgepipe.demo import DEMO_INPUT_NAME, DEMO_PREPROCESS, demo_data_dir
from edgepipe.demo.model import WEIGHTS_FILE, DemoNet

SEED = 20240611
EVAL_COUNT = 300
CALIB_COUNT = 200
MAX_SHIFT = 2
BATCH_SIZE = 32
CHANNEL_TINT = np.array([1.0, 0.9, 0.75])
MAX_STAT_DRIFT = 0.01  # DEMO_PREPROCESS mean/std must match the rendered training set this well


def load_digits_split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic train/calib/eval split of sklearn's digits; images in [0, 1], 8x8."""
    from sklearn.datasets import load_digits  # re-training only

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = {
        "eval": order[:EVAL_COUNT],
        "calib": order[EVAL_COUNT:EVAL_COUNT + CALIB_COUNT],
        "train": order[EVAL_COUNT + CALIB_COUNT:],
    }
    return {name: (images[idx], labels[idx]) for name, idx in parts.items()}


def _draw_colours(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground/background RGB per image: shared luminance + small chroma, 30% inverted."""
    dark = rng.uniform(0.0, 0.4, size=(count, 1))
    bright = rng.uniform(0.6, 1.0, size=(count, 1))
    inverted = rng.random((count, 1)) < 0.3
    fg = np.where(inverted, dark, bright) + rng.uniform(-0.2, 0.2, size=(count, 3))
    bg = np.where(inverted, bright, dark) + rng.uniform(-0.2, 0.2, size=(count, 3))
    return np.clip(fg * CHANNEL_TINT, 0, 1), np.clip(bg * CHANNEL_TINT, 0, 1)


def render(images: np.ndarray, rng: np.random.Generator, shift: bool = True) -> np.ndarray:
    """8x8 digit intensities -> uint8 RGB images [N, 32, 32, 3] (what a PNG holds)."""
    count = len(images)
    intensity = F.interpolate(torch.from_numpy(images)[:, None], size=(32, 32), mode="bilinear",
                              align_corners=False).clamp(0, 1)[:, 0].numpy()
    if shift:
        padded = np.pad(intensity, ((0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT)))
        offsets = rng.integers(0, 2 * MAX_SHIFT + 1, size=(count, 2))
        intensity = np.stack([padded[i, dy:dy + 32, dx:dx + 32]
                              for i, (dy, dx) in enumerate(offsets)])
    fg, bg = _draw_colours(count, rng)
    rgb = bg[:, None, None, :] + (fg - bg)[:, None, None, :] * intensity[..., None]
    return np.round(rgb * 255).astype(np.uint8)


def preprocess(rgb_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 NCHW with DEMO_PREPROCESS (same math as edgepipe.data)."""
    mean = np.asarray(DEMO_PREPROCESS["mean"], dtype=np.float32)
    std = np.asarray(DEMO_PREPROCESS["std"], dtype=np.float32)
    x = rgb_uint8.astype(np.float32) * np.float32(DEMO_PREPROCESS["scale"])
    return ((x - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def check_channel_stats(train_rgb: np.ndarray) -> None:
    """Refuse to train if the shipped DEMO_PREPROCESS no longer matches the rendered data."""
    pixels = train_rgb.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    print(f"train channel mean {np.round(mean, 4).tolist()} std {np.round(std, 4).tolist()}")
    print(f"train channel correlation:\n{np.round(np.corrcoef(pixels.T), 3)}")
    drift = max(np.abs(mean - DEMO_PREPROCESS["mean"]).max(), np.abs(std - DEMO_PREPROCESS["std"]).max())
    if drift > MAX_STAT_DRIFT:
        raise SystemExit(f"DEMO_PREPROCESS mean/std are off by {drift:.4f}: update them in "
                         "edgepipe/demo/__init__.py to the values printed above")


def train(model: DemoNet, train_set: tuple[np.ndarray, np.ndarray], epochs: int, seed: int) -> None:
    """Adam + cosine schedule; each epoch re-renders colours and shifts (augmentation)."""
    images, labels = train_set
    rng = np.random.default_rng(seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    targets = torch.from_numpy(labels)
    for epoch in range(epochs):
        model.train()
        x = torch.from_numpy(preprocess(render(images, rng)))
        order = torch.from_numpy(rng.permutation(len(labels)))
        total_loss = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            loss = F.cross_entropy(model(x[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
        schedule.step()
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}/{epochs} loss {total_loss / len(labels):.4f}")


def top1(model: DemoNet, x: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def _save_png(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path, format="PNG", optimize=True)


def write_data(out_dir: Path, calib_rgb: np.ndarray, eval_rgb: np.ndarray, eval_labels: np.ndarray) -> None:
    """calib/ (flat), eval/<class>/ (sorted by class so folder order == npz order), eval.npz."""
    for stale in [*out_dir.glob("calib/*.png"), *out_dir.glob("eval/*/*.png")]:
        stale.unlink()
    for i, rgb in enumerate(calib_rgb):
        _save_png(rgb, out_dir / "calib" / f"calib_{i:03d}.png")
    order = np.argsort(eval_labels, kind="stable")
    eval_rgb, eval_labels = eval_rgb[order], eval_labels[order]
    for i, (rgb, label) in enumerate(zip(eval_rgb, eval_labels)):
        _save_png(rgb, out_dir / "eval" / str(label) / f"eval_{i:03d}.png")
    np.savez_compressed(out_dir / "eval.npz", **{DEMO_INPUT_NAME: preprocess(eval_rgb)},
                        labels=eval_labels.astype(np.int64))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--weights", type=Path, default=Path(__file__).with_name(WEIGHTS_FILE))
    parser.add_argument("--data-dir", type=Path, default=demo_data_dir())
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    split = load_digits_split(args.seed)
    data_rng = np.random.default_rng(args.seed)
    rendered = {name: render(images, data_rng) for name, (images, _) in split.items()}
    check_channel_stats(rendered["train"])

    model = DemoNet()
    train(model, split["train"], args.epochs, args.seed)
    accuracy = top1(model, preprocess(rendered["eval"]), split["eval"][1])
    print(f"eval top-1 {accuracy:.4f} on {EVAL_COUNT} images; "
          f"{sum(p.numel() for p in model.parameters())} parameters; "
          f"{time.perf_counter() - started:.1f} s")

    args.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.weights)
    write_data(args.data_dir, rendered["calib"], rendered["eval"], split["eval"][1])
    print(f"wrote {args.weights} and {args.data_dir}")


if __name__ == "__main__":
    main()
