"""Why the recognizer's per-step budget needs so many float groups: are int8's flipped time steps
near-ties in FP32?

`precision.budget: 0.002` on the PP-OCRv4 recognizer budgets the per-step argmax agreement with
FP32 (benchmarks/precision_search.py). If int8 flipped mostly steps where FP32 itself hesitates
(top-1 vs top-2 log-probability margin near 0), the budget would be spent on noise that no
reading sees, and a margin-aware metric would be the fix. This script measures it: the default
int8 build of each target (`edgepipe build`, the data of benchmarks/accuracy_goals.py: 64
calibration lines, 200 eval lines) against FP32 (ONNX Runtime on the original file), and per
flipped step FP32's margin (log p1 - log p2, natural log), what it flipped between (blank, space,
characters), whether it sits after FP32's last character, and whether the line's CTC reading
changed at all, and whether int8 only moved the edge of a span (took the class FP32 gives the
step before or after: a character or blank one step longer or shorter, which the CTC reading
merges away unless it splits or joins a repeat).

Run by hand:  python benchmarks/flip_margins.py [--targets arm-cpu,jetson]
Writes benchmarks/results/flip_margins.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_goals as goals  # noqa: E402
import real_models  # noqa: E402
from calibration_real_models import ctc_decode  # noqa: E402

NAME = "ocr_rec"
BLANK = 0
MARGIN_BINS = (0.25, 0.5, 1.0, 2.0, 4.0)  # nats: e^1 = FP32's top-1 2.7x as likely as its top-2


def log_margin(probs: np.ndarray) -> np.ndarray:
    """log p1 - log p2 per step (the logit margin: the softmax cancels out)."""
    top = np.sort(probs.astype(np.float64), axis=-1)[..., -2:]
    return np.log(np.maximum(top[..., 1], 1e-30)) - np.log(np.maximum(top[..., 0], 1e-30))


def flip_kind(fp32_class: int, int8_class: int, space: int) -> str:
    def kind(k: int) -> str:
        return "blank" if k == BLANK else ("space" if k == space else "char")
    return "->".join((kind(fp32_class), kind(int8_class)))


def analyse(fp32: np.ndarray, out: np.ndarray, chars: list[str]) -> dict:
    space = len(chars) - 1  # the dictionary's ' ' is appended last (accuracy_goals: CTC decoding)
    assert chars[space] == " "
    ref, got = fp32.argmax(-1), out.argmax(-1)
    margin = log_margin(fp32)
    flipped = ref != got
    lines_changed = np.array([a != b for a, b in zip(ctc_decode(fp32, chars), ctc_decode(out, chars))])
    last_char = np.array([max([t for t, k in enumerate(row) if k != BLANK], default=-1) for row in ref])
    steps = np.arange(ref.shape[1])[None, :]
    before = np.concatenate([np.full((ref.shape[0], 1), -1), ref[:, :-1]], axis=1)
    after = np.concatenate([ref[:, 1:], np.full((ref.shape[0], 1), -1)], axis=1)
    edge = flipped & ((got == before) | (got == after))  # int8 takes a neighbour step's FP32 class
    kinds: dict[str, int] = {}
    for a, b in zip(ref[flipped], got[flipped]):
        key = flip_kind(int(a), int(b), space)
        kinds[key] = kinds.get(key, 0) + 1
    flipped_margins = margin[flipped]
    per_line_flips = flipped.sum(axis=1)

    def share(mask: np.ndarray) -> float:
        return float(mask.mean()) if mask.size else 0.0

    return {
        "steps": int(ref.size), "flipped_steps": int(flipped.sum()), "step_agreement": float(1 - flipped.mean()),
        "lines": int(ref.shape[0]), "lines_with_flips": int((per_line_flips > 0).sum()),
        "lines_reading_changed": int(lines_changed.sum()),
        "flips_in_lines_whose_reading_is_unchanged": int(per_line_flips[~lines_changed].sum()),
        "margin_percentiles_flipped": {str(p): float(np.percentile(flipped_margins, p)) for p in (10, 25, 50, 75, 90)}
        if flipped_margins.size else {},
        "margin_percentiles_all_steps": {str(p): float(np.percentile(margin, p)) for p in (10, 25, 50, 75, 90)},
        "share_of_flips_below_margin": {str(m): share(flipped_margins < m) for m in MARGIN_BINS},
        "share_of_steps_below_margin": {str(m): share(margin < m) for m in MARGIN_BINS},
        "flip_rate_by_margin": {f"<{m}": share(flipped[margin < m]) for m in MARGIN_BINS}
        | {f">={MARGIN_BINS[-1]}": share(flipped[margin >= MARGIN_BINS[-1]])},
        "flips_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "flips_after_last_fp32_char": int((flipped & (steps > last_char[:, None])).sum()),
        "span_edge_flips": int(edge.sum()),
        "margin_percentiles_span_edge_flips": {str(p): float(np.percentile(margin[edge], p)) for p in (25, 50, 75)}
        if edge.any() else {},
        "margin_percentiles_other_flips": {str(p): float(np.percentile(margin[flipped & ~edge], p)) for p in (25, 50, 75)}
        if (flipped & ~edge).any() else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default="arm-cpu,jetson")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/flip_margins.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    work = Path(tempfile.mkdtemp(prefix="flip_margins_"))
    try:
        data, fp32, report = goals.recognizer_study(
            NAME, "rec_arm", work, margin="log p1 - log p2 of FP32 (nats) at each time step")
        chars = real_models.characters(NAME)
        for target in args.targets.split(","):
            bundle, _ = goals.cli_build(NAME, target, work, "default", None)
            out = goals.deployed_output(target, bundle, NAME, data["x"])
            report["targets"][target] = analyse(fp32, out, chars)
            print(target, json.dumps({k: report["targets"][target][k] for k in
                                      ("flipped_steps", "margin_percentiles_flipped", "flips_by_kind")}), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print("wrote", args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
