"""The stage runner: times every stage, hashes its artifact, and caches what is expensive.

A stage's cache key is the hash of its input artifact plus the settings it reads, so a re-run
after changing only the target reuses export / simplify / fold / calibrate from the cache
(calibration records both symmetric and asymmetric ranges, so it is target independent).
Cache entries are written to a temp dir and renamed, so an interrupted build never leaves a
half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import onnx

from edgepipe import __version__


@dataclass
class StageRecord:
    name: str
    seconds: float
    artifact: str
    size: int
    hash: str
    cached: bool = False
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def bytes_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_hash(**parts) -> str:
    payload = json.dumps({"edgepipe": __version__, **parts}, sort_keys=True, default=str)
    return bytes_hash(payload.encode())


class Pipeline:
    """Runs stages in order, keeps a `StageRecord` per stage for the summary and the manifest."""

    def __init__(self, cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.records: list[StageRecord] = []
        self.log = log or (lambda message: None)

    # -- generic ---------------------------------------------------------------------------
    def run(self, name: str, compute: Callable[[], object], describe: Callable[[object], tuple[str, int, str]],
            note: Callable[[object], str] | None = None):
        """Run an uncached stage; `describe(result)` gives (artifact, size, hash)."""
        self.log(f"{name} ...")
        start = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - start
        artifact, size, digest = describe(result)
        self.records.append(StageRecord(name, seconds, artifact, size, digest, False, note(result) if note else ""))
        return result

    def cached(self, name: str, key: str, compute: Callable[[], object], save: Callable[[object, Path], None],
               load: Callable[[Path], object], describe: Callable[[object], tuple[str, int, str]],
               note: Callable[[object], str] | None = None):
        """Run a stage through the cache: `save(result, dir)` / `load(dir)` (de)serialize it."""
        entry = self.cache_dir / f"{name}-{key[:24]}" if self.cache_dir else None
        start = time.perf_counter()
        result, was_cached = None, False
        if entry is not None and (entry / "COMPLETE").exists():
            try:
                result, was_cached = load(entry), True
                self.log(f"{name}: cached")
            except Exception:
                result = None  # a corrupt cache entry is recomputed, never trusted
        if result is None:
            self.log(f"{name} ...")
            result = compute()
            if entry is not None:
                self._store(entry, result, save)
        seconds = time.perf_counter() - start
        artifact, size, digest = describe(result)
        self.records.append(StageRecord(name, seconds, artifact, size, digest, was_cached, note(result) if note else ""))
        return result

    def _store(self, entry: Path, result, save) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            save(result, staging)
            (staging / "COMPLETE").write_text("")
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(staging, entry)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.log(f"warning: could not write the stage cache {entry} ({exc}); continuing without it")

    # -- ONNX model stages -----------------------------------------------------------------
    def model_stage(self, name: str, key: str, compute: Callable[[], tuple[onnx.ModelProto, dict]]):
        """A stage producing (ModelProto, report dict); cached as model.onnx + report.json."""

        def save(result, directory: Path):
            model, report = result
            onnx.save(model, str(directory / "model.onnx"))
            (directory / "report.json").write_text(json.dumps(report, sort_keys=True, default=str))

        def load(directory: Path):
            model = onnx.load(str(directory / "model.onnx"))
            return model, json.loads((directory / "report.json").read_text())

        def describe(result):
            model, _ = result
            data = model.SerializeToString(deterministic=True)
            return f"{name}.onnx ({len(model.graph.node)} nodes)", len(data), bytes_hash(data)

        def note(result):
            return str(result[1].get("note", "")) if isinstance(result[1], dict) else ""

        return self.cached(name, key, compute, save, load, describe, note)

    @property
    def last_hash(self) -> str:
        """Content hash of the last stage's artifact (the next stage's cache key builds on it)."""
        return self.records[-1].hash

    def summary(self) -> list[dict]:
        return [r.to_json() for r in self.records]
