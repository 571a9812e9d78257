"""The stage runner: times every stage, hashes its artifact, and caches what is expensive.

A stage's cache key is the hash of its input artifact plus the settings it reads plus the
versions of every library that computes it (and a digest of edgepipe's own source), so a re-run
after changing only the target reuses simplify / fold / calibrate from the cache (calibration
records both symmetric and asymmetric ranges, so it is target independent) and a cache hit is
byte-identical to a fresh run. Export is never cached: it is the first artifact, and the key of
everything after it. Cache entries are written to a temp dir and renamed, so an interrupted build
never leaves a half-written entry behind, and sealed with a per-user key (`cache_trust`), so an
entry this user's edgepipe did not write is recomputed, never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
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
from edgepipe.cache_trust import UntrustedCache, check_cache_dir, seal, seal_problem, user_key


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


CACHE_LIBRARIES = ("numpy", "onnx", "onnxruntime", "onnxsim", "ai-edge-litert")


@functools.lru_cache(maxsize=1)
def code_versions() -> dict:
    """Versions of the libraries a cached stage runs, plus a digest of edgepipe's own source (an
    editable install keeps its version number across code changes)."""
    versions = {"edgepipe": __version__}
    for name in CACHE_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    versions["edgepipe_source"] = digest.hexdigest()
    return versions


def settings_hash(**parts) -> str:
    payload = json.dumps({"code": code_versions(), **parts}, sort_keys=True, default=str)
    return bytes_hash(payload.encode())


def tag_stage(exc: BaseException, name: str) -> None:
    """Remember the innermost stage an unexpected exception came from (for the CLI's one line)."""
    if getattr(exc, "edgepipe_stage", None) is None:
        try:
            exc.edgepipe_stage = name
        except AttributeError:
            pass  # an exception type without __dict__: the CLI names the command instead


def stage_of(exc: BaseException) -> str | None:
    return getattr(exc, "edgepipe_stage", None)


class Pipeline:
    """Runs stages in order, keeps a `StageRecord` per stage for the summary and the manifest."""

    def __init__(self, cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.records: list[StageRecord] = []
        self.log = log or (lambda message: None)
        self.warnings: list[str] = []  # cache problems the build reports (it still runs, uncached)
        self.cache_dir, self._key = None, b""
        if cache_dir:
            try:
                check_cache_dir(Path(cache_dir))
                self.cache_dir, self._key = Path(cache_dir), user_key()
            except UntrustedCache as exc:
                self.cache_dir = None
                self.warnings.append(f"{exc}; building without the stage cache")

    # -- generic ---------------------------------------------------------------------------
    def run(self, name: str, compute: Callable[[], object], describe: Callable[[object], tuple[str, int, str]],
            note: Callable[[object], str] | None = None):
        """Run an uncached stage; `describe(result)` gives (artifact, size, hash)."""
        self.log(f"{name} ...")
        start = time.perf_counter()
        result = self._compute(name, compute)
        seconds = time.perf_counter() - start
        artifact, size, digest = describe(result)
        self.records.append(StageRecord(name, seconds, artifact, size, digest, False, note(result) if note else ""))
        return result

    def cached(self, name: str, key: str, compute: Callable[[], object], save: Callable[[object, Path], None],
               load: Callable[[Path], object], describe: Callable[[object], tuple[str, int, str]],
               note: Callable[[object], str] | None = None):
        """Run a stage through the cache: `save(result, dir)` / `load(dir)` (de)serialize it.

        `key` None runs the stage uncached (recorded like any other)."""
        entry = self.cache_dir / f"{name}-{key[:24]}" if self.cache_dir and key else None
        start = time.perf_counter()
        result, was_cached = None, False
        if entry is not None and os.path.lexists(entry):
            problem = seal_problem(entry, f"{name}-{key}", self._key)
            if problem:
                self.warnings.append(f"stage cache entry {entry} is not used: {problem}; {name} is recomputed")
            else:
                try:
                    result, was_cached = load(entry), True
                    self.log(f"{name}: cached")
                except Exception:
                    result = None  # a corrupt cache entry is recomputed, never trusted
        if result is None:
            self.log(f"{name} ...")
            result = self._compute(name, compute)
            if entry is not None:
                self._store(entry, f"{name}-{key}", result, save)
        seconds = time.perf_counter() - start
        artifact, size, digest = describe(result)
        self.records.append(StageRecord(name, seconds, artifact, size, digest, was_cached, note(result) if note else ""))
        return result

    @staticmethod
    def _compute(name: str, compute: Callable[[], object]):
        try:
            return compute()
        except Exception as exc:
            tag_stage(exc, name)
            raise

    def _store(self, entry: Path, stage_key: str, result, save) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            save(result, staging)
            seal(staging, stage_key, self._key)
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.exists():
                shutil.rmtree(entry)
            os.replace(staging, entry)
        except (OSError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.warnings.append(f"could not write the stage cache {entry} ({exc}); continuing without it")

    # -- ONNX model stages -----------------------------------------------------------------
    def model_stage(self, name: str, key: str | None, compute: Callable[[], tuple[onnx.ModelProto, dict]]):
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
