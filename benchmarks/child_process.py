"""Measure a benchmark step in a fresh child process: its own peak memory, median of repeats.

Why: `ru_maxrss` of a child is not its own peak. Linux keeps the address space's high-water mark
across fork and exec (exec stores it in the process's `maxrss`), so a worker started from a
260 MB parent reports >= 260 MB whatever it does, and "growth" of a small worker comes out 0.
`VmHWM` in /proc/self/status belongs to the current address space, which exec replaces: it is
the child's own peak. Timings on a shared 2-core host vary run to run, so every figure is the
median of at least 3 runs, each in a new process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def own_peak_mb() -> float:
    """Peak resident memory of this process's own address space (VmHWM), MB."""
    return _status_mb("VmHWM")


def current_mb() -> float:
    """Resident memory now (VmRSS), MB."""
    return _status_mb("VmRSS")


def run_child(args: list[str], repeats: int = 3, python: str = sys.executable,
              keys: tuple[str, ...] = ("wall_s", "peak_mb", "growth_mb")) -> dict:
    """Run `python args...` `repeats` times (each prints one JSON object as its last line); returns
    the last run's row with each of `keys` replaced by its median and the raw values kept under
    `repeats`."""
    rows = []
    for _ in range(max(repeats, 1)):
        proc = subprocess.run([python, *args], capture_output=True, text=True)
        if proc.returncode:
            lines = proc.stderr.strip().splitlines() or ["no output"]
            return {"error": lines[-1][:300]}
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = dict(rows[-1])
    for key in keys:
        if all(key in r for r in rows):
            result[key] = statistics.median(r[key] for r in rows)
    result["repeats"] = [{k: r[k] for k in keys if k in r} for r in rows]
    return result
