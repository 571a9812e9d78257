"""Timing on a shared host: alternating rounds, medians with their spread, and the host record.

Why: one long loop per model lets a burst of other work land on one model only, and a single run
cannot say how much of a difference is noise. Models timed in alternating rounds see the same
host; each round's median drops outliers inside the round; the median over rounds is the figure
and the spread of the round medians says how far to trust it. A latency ratio depends on the
CPU's int8 dot-product instructions and on what else ran, so every timing result records the CPU
features and the load average next to the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

MIN_ROUNDS = 3
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def cpu_features() -> dict:
    """CPU model, cores and the int8-relevant flags from /proc/cpuinfo (x86 and arm64 names)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
        if key.strip() in ("model name", "Model name") and not model:
            model = value.strip()
    dot_product = bool({"avx512_vnni", "avx_vnni", "asimddp"} & flags)
    cores = sum(line.startswith("processor") for line in text.splitlines())
    return {"machine": platform.machine(), "cpu": model, "flags": {f: f in flags for f in CPU_FLAGS},
            "int8_dot_product": dot_product, "cores": cores}


def host_record() -> dict:
    """`cpu_features`, Python version and the load average now."""
    return {**cpu_features(), "python": platform.python_version(), "loadavg": load_average()}


def spread(values: list[float]) -> float:
    """(max - min) / median: 0.1 means the runs span 10% of the reported median."""
    middle = statistics.median(values)
    return round((max(values) - min(values)) / middle, 3) if middle else 0.0


def summary(values: list[float], digits: int = 4) -> dict:
    """The median of `values` with the raw values and their spread."""
    return {"median": round(statistics.median(values), digits), "runs": [round(v, digits) for v in values],
            "spread": spread(values)}


def check_rounds(rounds: int) -> int:
    if rounds < MIN_ROUNDS:
        raise ValueError(f"at least {MIN_ROUNDS} rounds are needed for a median with a spread, got {rounds}")
    return rounds


def rounds_argument(text: str) -> int:
    """argparse `type=` for a --rounds/--repeats option: an integer of at least MIN_ROUNDS."""
    try:
        return check_rounds(int(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def alternating_rounds(invokers: dict[str, Callable[[], object]], rounds: int, iterations: int,
                       warmup: int = 5) -> dict[str, dict]:
    """Per key: `ms` = median over `rounds` of that round's median call time (ms), `round_ms` the
    round medians, `spread` their (max - min) / median. Keys alternate within every round."""
    check_rounds(rounds)
    for invoke in invokers.values():
        for _ in range(warmup):
            invoke()
    per_round: dict[str, list[float]] = {key: [] for key in invokers}
    for _ in range(rounds):
        for key, invoke in invokers.items():
            samples = []
            for _ in range(iterations):
                start = time.perf_counter()
                invoke()
                samples.append((time.perf_counter() - start) * 1000.0)
            per_round[key].append(statistics.median(samples))
    return {key: {"ms": round(statistics.median(medians), 5), "round_ms": [round(m, 5) for m in medians],
                  "spread": spread(medians)} for key, medians in per_round.items()}


def repeated_seconds(action: Callable[[], object], repeats: int = MIN_ROUNDS) -> dict:
    """Wall seconds of `action` run `repeats` times in this process (median, runs, spread)."""
    check_rounds(repeats)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return summary(seconds, 3)
