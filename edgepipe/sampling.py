"""Which samples a build uses: a limit spread over the data, and the held-out evaluation split.

Why a module of its own: the same positions must come out of the data loader's limit, the
holdout and the bundle's eval budget, run after run, so they are one deterministic rule here.
"""

from __future__ import annotations

import numpy as np


def evenly_spaced(count: int, keep: int, centred: bool = True) -> np.ndarray:
    """`keep` positions of 0..count-1 spread evenly over the range, sorted; `centred` shifts them
    half a stride in (the eval budget), otherwise the first position is 0 (the loader's limit)."""
    keep = max(0, min(int(keep), count))
    if keep == 0:
        return np.zeros(0, dtype=np.int64)
    offset = (count // keep) // 2 if centred else 0
    return (np.arange(keep) * count) // keep + offset


def holdout_split(dataset, fraction: float, max_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(calibration positions, held-out positions) of `dataset`: disjoint, sorted, deterministic.

    Without an eval set the accuracy must be measured on samples the calibration never saw. With
    labels the split is stratified (each class gives its share, spread evenly over the class);
    `max_count` caps the held-out samples (the bundle keeps no more anyway); at least one is held
    out. Fewer than 2 samples or fraction 0: nothing is held out.
    """
    count = len(dataset)
    wanted = min(max(1, int(round(count * float(fraction)))), count - 1, max_count if max_count else count)
    if count < 2 or fraction <= 0 or wanted < 1:
        return np.arange(count), np.zeros(0, dtype=np.int64)
    if dataset.labels is None:
        held = evenly_spaced(count, wanted)
    else:
        classes, sizes = np.unique(dataset.labels, return_counts=True)
        shares = sizes * (wanted / count)
        per_class = np.floor(shares).astype(np.int64)
        # the remaining samples go to the classes with the largest remainders (largest-remainder rounding)
        extra = np.argsort(-(shares - per_class), kind="stable")[:wanted - int(per_class.sum())]
        per_class[extra] += 1
        held = np.concatenate([np.flatnonzero(dataset.labels == c)[evenly_spaced(int(n), int(k))]
                               for c, n, k in zip(classes, sizes, per_class)])
    held = np.sort(held)
    return np.setdiff1d(np.arange(count), held), held
