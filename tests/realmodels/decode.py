"""What users read off the corpus's sequence and detection heads, to compare int8 with FP32 the
way the packages' own post-processing sees them (tests/realmodels/evaluate.py gives the outputs).

- CTC recognizers: greedy readings (argmax per step, repeats merged, blank 0 dropped), as
  ddddocr's `_ctc_decode_indices` and PP-OCR's decoder do; agreement is
  quantmath.ctc_sequence_agreement (1 - edit distance / longer reading, mean over samples).
- YOLOX detectors (ddddocr's click-captcha model): boxes decoded and NMS'd as ddddocr's
  `demo_postprocess` / `multiclass_nms` do (strides 8/16/32, score = objectness x class, score
  threshold 0.1, NMS IoU 0.45); agreement is the F1 of one set of boxes against the other at IoU 0.5.
- Pitch trackers (SwiftF0: pitch and confidence per 16 ms frame): of the frames FP32 calls voiced
  (confidence >= 0.5, swift_f0's default threshold), the share the int8 model also calls voiced
  with a pitch within 50 cents (a quarter tone) of FP32's.
"""

from __future__ import annotations

import numpy as np

from edgepipe import quantmath

YOLOX_STRIDES = (8, 16, 32)
SCORE_THRESHOLD, NMS_IOU, MATCH_IOU = 0.1, 0.45, 0.5


def head_agreement(name: str, reference: list[np.ndarray], test: list[np.ndarray]) -> float | None:
    """The corpus model's own agreement measure on its first output: reading agreement for CTC
    heads, box F1 for detectors; None for models without a `head`."""
    from tests.realmodels.corpus import MODELS

    spec = MODELS[name]
    if spec.head == "ctc_tbc":
        steps = spec.shape[3] // 8  # ddddocr: one step per 8 input columns
        assert len(reference[0]) % steps == 0, f"{len(reference[0])} rows are not samples of {steps} steps"
        return reading_agreement(reference[0], test[0], len(reference[0]) // steps, "TBC")
    if spec.head == "yolox":
        return box_agreement(reference[0], test[0], spec.shape[2:])["f1"]
    if spec.head == "pitch":
        return pitch_agreement(reference, test)
    return None


VOICED, CENTS = 0.5, 50.0


def pitch_agreement(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """[pitch, confidence] outputs: share of FP32-voiced frames also voiced in `test` within CENTS."""
    (pitch, confidence), (test_pitch, test_confidence) = reference[:2], test[:2]
    voiced = confidence >= VOICED
    if not voiced.any():
        return 1.0
    cents = 1200.0 * np.abs(np.log2(np.maximum(test_pitch, 1e-6) / np.maximum(pitch, 1e-6)))
    return float(np.mean((cents < CENTS) & (test_confidence >= VOICED), where=voiced))


def sequences(output: np.ndarray, samples: int, layout: str) -> np.ndarray:
    """[N, T, C] from the concatenated per-sample outputs of a sequence head: "TBC" heads (batch
    second, as ddddocr's [T, 1, C]) were concatenated along T, "BTC" heads along the batch."""
    if layout == "TBC":
        return output.reshape(samples, -1, output.shape[-1])
    return output.reshape(samples, -1, output.shape[-1]) if output.ndim != 3 else output


def reading_agreement(reference: np.ndarray, test: np.ndarray, samples: int, layout: str) -> float:
    """Mean per-sample agreement of the greedy CTC readings of `test` with FP32's."""
    return quantmath.ctc_sequence_agreement(sequences(reference, samples, layout), sequences(test, samples, layout))


def yolox_boxes(prediction: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [K, 4] x1 y1 x2 y2 in input pixels, scores [K]) after score threshold and NMS, for
    one sample's raw head [A, 5 + classes] (xy offsets, log wh, sigmoid objectness and classes)."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        h, w = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(w), np.arange(h))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((h * w, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    centre = (prediction[:, :2] + grid) * stride
    half = np.exp(prediction[:, 2:4]) * stride / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    scores = (prediction[:, 4:5] * prediction[:, 5:]).max(1)
    keep = scores > SCORE_THRESHOLD
    boxes, scores = boxes[keep], scores[keep]
    chosen = []
    for index in np.argsort(-scores):
        if all(iou(boxes[index], boxes[k]) <= NMS_IOU for k in chosen):
            chosen.append(index)
    return boxes[chosen], scores[chosen]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_agreement(reference: np.ndarray, test: np.ndarray, size: tuple[int, int]) -> dict:
    """F1 over the eval set of `test`'s boxes against FP32's (greedy one-to-one matching at IoU
    >= 0.5, best scores first), the box counts, and the mean |score difference| of matched boxes."""
    matched = ref_count = test_count = 0
    score_gaps = []
    for want, got in zip(reference, test):
        want_boxes, want_scores = yolox_boxes(want, size)
        got_boxes, got_scores = yolox_boxes(got, size)
        ref_count, test_count = ref_count + len(want_boxes), test_count + len(got_boxes)
        free = list(range(len(got_boxes)))
        for box, score in zip(want_boxes, want_scores):
            overlaps = [(iou(box, got_boxes[k]), k) for k in free]
            best = max(overlaps, default=(0.0, -1))
            if best[0] >= MATCH_IOU:
                matched += 1
                free.remove(best[1])
                score_gaps.append(abs(float(score - got_scores[best[1]])))
    f1 = 2 * matched / (ref_count + test_count) if ref_count + test_count else 1.0
    return {"f1": f1, "fp32_boxes": ref_count, "boxes": test_count,
            "score_gap": float(np.mean(score_gaps)) if score_gaps else None}
