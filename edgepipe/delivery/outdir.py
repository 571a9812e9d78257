"""Where a bundle lands: temp folders that name their owner, a crash-safe swap, and recovery.

Split from bundle.py (what a bundle holds) because this part is about the file system: the new
bundle replaces the old one in one atomic exchange where Linux offers it (renameat2), else by two
renames that the next build undoes if the process died between them. Temp folders carry the pid
of the run that made them, so a later run removes only what dead runs left behind. Deploy
results (report/<host>/, report/fleet.json) are carried into the new bundle.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

REPORT_DIR = "report"
STAGING_TAG, BACKUP_TAG = "tmp", "old"  # .<out>.tmp-<pid>-xxxx and .<out>.old-<pid>-xxxx next to --out
BACKEND_TMP_PREFIX = ".edgepipe-backend-"  # + <pid>-xxxx in the system temp folder


ANONYMOUS_TEMP_MAX_AGE_S = 24 * 3600  # a temp folder without a pid (another edgepipe version) is stale after this


def _temp_owner_alive(path: Path, prefix: str) -> bool:
    """Temp names carry their creator's pid: `<prefix><pid>-xxxx`. A name without one (written by
    another edgepipe version, maybe running right now) counts as alive until it is a day old."""
    pid_text = path.name[len(prefix):].split("-", 1)[0]
    if not pid_text.isdigit():
        try:
            return time.time() - path.stat().st_mtime < ANONYMOUS_TEMP_MAX_AGE_S
        except OSError:
            return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(folder: Path, prefix: str) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.name.startswith(prefix) and not p.is_symlink() and p.is_dir()
                  and not _temp_owner_alive(p, prefix))


def recover_interrupted_swap(out_dir: Path, is_bundle: Callable[[Path], bool]) -> None:
    """A run killed between the two renames of a swap left the previous bundle in .<out>.old-*:
    put it back (when --out is missing), then remove what dead runs left behind."""
    parent, name = out_dir.parent, out_dir.name
    backups = [p for p in _stale(parent, f".{name}.{BACKUP_TAG}-") if is_bundle(p)]
    if backups and not out_dir.exists() and not out_dir.is_symlink():
        os.rename(backups[-1], out_dir)
    for path in _stale(parent, f".{name}.{STAGING_TAG}-") + _stale(parent, f".{name}.{BACKUP_TAG}-"):
        shutil.rmtree(path, ignore_errors=True)
    for path in _stale(Path(tempfile.gettempdir()), BACKEND_TMP_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder named <prefix><pid>-xxxx, so a later run can tell whether its owner died."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def carry_deploy_results(old_bundle: Path, staging: Path) -> None:
    """Keep what `deploy --run` fetched (report/<host>/, report/fleet.json) across a rebuild; the
    host report files (report/results.json, report.html, report.md) belong to the old build."""
    old_report = old_bundle / REPORT_DIR
    if not old_report.is_dir() or old_report.is_symlink():
        return
    host_files = {"results.json", "report.html", "report.md"}
    for entry in sorted(old_report.iterdir()):
        if entry.name in host_files or entry.is_symlink():
            continue
        dest = staging / REPORT_DIR / entry.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, ignore=_links_and_special_files)
        elif entry.is_file():
            shutil.copy2(entry, dest)


def _links_and_special_files(folder: str, names: list[str]) -> list[str]:
    """copytree filter: results are regular files and folders; links and FIFOs stay behind."""
    return [n for n in names if os.path.islink(os.path.join(folder, n))
            or not (os.path.isfile(os.path.join(folder, n)) or os.path.isdir(os.path.join(folder, n)))]


def swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `staging`. With an atomic exchange there is never a moment without a
    bundle at `out_dir`; otherwise the old bundle waits in .<out>.old-<pid>-* until the second
    rename, and `recover_interrupted_swap` restores it if this process dies in between."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    carry_deploy_results(out_dir, staging)
    if _exchange(staging, out_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous bundle
        return
    backup = temp_dir(out_dir.parent, f".{out_dir.name}.{BACKUP_TAG}-")
    os.rmdir(backup)
    os.rename(out_dir, backup)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)
