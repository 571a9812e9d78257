"""Which stage-cache entries a build may trust.

A cache hit replaces a stage's work with files read from disk, so whoever can put files there can
choose the build's result (a repository that ships `build/.cache`, a `cache_dir` pointed at a shared
folder). Two checks close that:

- the cache folder must be a real folder (not a symbolic link, nor under one inside the project),
  owned by the user and writable by nobody else; otherwise the build runs without the cache;
- every entry carries a seal: an HMAC-SHA256, keyed by a per-user secret (`stage-cache.key`, 32
  random bytes, mode 0600, in `$EDGEPIPE_CACHE`, default `~/.cache/edgepipe`), over the stage
  key and every file's name, size and SHA-256. An entry without a valid seal was not written by this
  user's edgepipe: it is recomputed (and rewritten), never loaded.

The seal holds two MACs: one over the listing (names and sizes) is checked before any file is read,
so a forged entry costs a few `stat` calls, not a read of whatever large file it brings.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from edgepipe.delivery.bundle import sha256_file

SEAL_NAME = "SEAL"
KEY_NAME = "stage-cache.key"
KEY_BYTES = 32
SEAL_VERSION = "edgepipe-stage-cache-v1"
MAX_SEAL_BYTES = 1 << 20  # a seal names a handful of files


def user_cache_root() -> Path:
    """Where edgepipe keeps per-user state (the arm64 rootfs, the stage-cache key)."""
    return Path(os.environ.get("EDGEPIPE_CACHE") or Path.home() / ".cache" / "edgepipe")


class UntrustedCache(Exception):
    """The cache folder or key cannot be trusted: the build runs without the cache."""


def _private_file_problem(info: os.stat_result) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return "is owned by another user"
    if info.st_mode & 0o077:
        return f"is readable or writable by other users (mode {stat.S_IMODE(info.st_mode):04o}; chmod 600 it)"
    if info.st_size != KEY_BYTES:
        return f"holds {info.st_size} bytes, not {KEY_BYTES} (delete it; a new one is made)"
    return None


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        problem = _private_file_problem(os.fstat(fd))
        if problem:
            raise UntrustedCache(f"the stage-cache key {path} {problem}")
        return os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)


def user_key() -> bytes:
    """The per-user secret, made on first use (written 0600 to a temp name, then hard-linked into
    place, so concurrent builds never read a half-written key)."""
    root = user_cache_root()
    path = root / KEY_NAME
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # ELOOP: the key is a symbolic link
        raise UntrustedCache(f"the stage-cache key {path} cannot be read safely ({exc.strerror or exc})") from exc
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = root / f".{KEY_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another build made it first: use theirs
        finally:
            temp.unlink(missing_ok=True)
        return _read_key(path)
    except OSError as exc:
        raise UntrustedCache(f"cannot make the stage-cache key {path} ({exc.strerror or exc})") from exc


def check_cache_dir(cache_dir: Path) -> None:
    """Raise `UntrustedCache` unless `cache_dir` is (or can be made) a folder only this user controls.

    A relative path is checked component by component below the current folder: a project's
    `build -> /tmp/shared` link is refused like a link at `build/.cache` itself."""
    parts = [cache_dir] if cache_dir.is_absolute() else [Path(*cache_dir.parts[:i + 1])
                                                         for i in range(len(cache_dir.parts))]
    for part in parts:
        if part.is_symlink():
            raise UntrustedCache(f"stage cache {cache_dir}: {part} is a symbolic link")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(cache_dir)
    except OSError as exc:
        raise UntrustedCache(f"stage cache {cache_dir}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UntrustedCache(f"stage cache {cache_dir} is not a folder")
    if info.st_uid != os.geteuid():
        raise UntrustedCache(f"stage cache {cache_dir} is owned by another user")
    if info.st_mode & 0o022:
        raise UntrustedCache(f"stage cache {cache_dir} is writable by other users "
                             f"(mode {stat.S_IMODE(info.st_mode):04o})")


def _listing(entry: Path) -> dict[str, int]:
    """name -> size of every file in the entry but the seal; links and special files are refused."""
    files = {}
    for path in sorted(entry.rglob("*")):
        info = os.lstat(path)
        name = path.relative_to(entry).as_posix()
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{name} is not a regular file")
        if name != SEAL_NAME:
            files[name] = info.st_size
    return files


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\0".join((SEAL_VERSION, *parts)).encode(), hashlib.sha256).hexdigest()


def seal(entry: Path, stage_key: str, key: bytes) -> None:
    """Write the entry's seal (called on the staging folder, before it is renamed into place)."""
    files = _listing(entry)
    listing = json.dumps(files, sort_keys=True)
    contents = json.dumps({name: sha256_file(entry / name) for name in files}, sort_keys=True)
    (entry / SEAL_NAME).write_text(json.dumps({
        "files": files,
        "listing_mac": _mac(key, stage_key, listing),
        "content_mac": _mac(key, stage_key, listing, contents),
    }))


def seal_problem(entry: Path, stage_key: str, key: bytes) -> str | None:
    """None if the entry holds exactly the files this user's edgepipe sealed under `stage_key`."""
    try:
        if not stat.S_ISDIR(os.lstat(entry).st_mode):
            return "not a folder"
        seal_path = entry / SEAL_NAME
        info = os.lstat(seal_path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SEAL_BYTES:
            return "its seal is not a small regular file"
        recorded = json.loads(seal_path.read_text())
        files = _listing(entry)
        listing = json.dumps(files, sort_keys=True)
        if not (isinstance(recorded, dict) and recorded.get("files") == files
                and hmac.compare_digest(str(recorded.get("listing_mac")), _mac(key, stage_key, listing))):
            return "no valid seal (not written by this user's edgepipe)"
        contents = json.dumps({name: sha256_file(entry / name) for name in files}, sort_keys=True)
        if not hmac.compare_digest(str(recorded.get("content_mac")), _mac(key, stage_key, listing, contents)):
            return "its files changed after it was written"
    except FileNotFoundError:
        return "no seal (not written by this user's edgepipe)"
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return None
