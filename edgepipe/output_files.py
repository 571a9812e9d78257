"""Files a user names for a command's output (`--out`, `--junit`, `report -o`), checked before any work.

Named by mistake, an output path replaces the command's own input (`regress --junit baseline.json`
wrote the JUnit XML over the release baseline), a file of a bundle (`compare --out B/model.tflite`
left a bundle that fails verify; `report -o B` added files verify refuses) or a user's file of
another kind (`compare --out calib.npz`). Like `pack -o`, an existing output must be one this kind
of command writes; the write itself is a new file renamed over the path (never through a link).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import Callable

from edgepipe.errors import UserError

# what an existing file must start with (after blanks) to be one this kind of output replaces
_KINDS = {"json": ("a JSON file", b"{"), "xml": ("an XML file", b"<")}


def _place(path: Path) -> Path:
    """Where `path` itself lies (its folder resolved, not a link at the path: that is replaced)."""
    absolute = Path(os.path.abspath(path))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def bundle_holding(path: str | Path) -> Path | None:
    """The bundle folder (manifest.json and SHA256SUMS) that `path` lies in, if any."""
    place = _place(Path(path))
    for folder in (place, *place.parents):
        if (folder / "manifest.json").is_file() and (folder / "SHA256SUMS").is_file():
            return folder
    return None


def _check_outside_bundles(path: Path, option: str, named: Path | None = None) -> None:
    bundle = bundle_holding(path)
    if bundle is not None and bundle / "report" not in (_place(path), *_place(path).parents):
        raise UserError(f"{named or path}: {option} is inside the bundle {bundle}, whose files verify checks; "
                        f"write it outside the bundle or under {bundle / 'report'}")


def _same_file(place: Path, other: str | Path) -> bool:
    """True when writing `place` replaces `other` (a link at `place` is replaced, not its target)."""
    if place == Path(os.path.realpath(other)):
        return True
    try:
        mine, theirs = os.lstat(place), os.stat(other)
    except (OSError, ValueError):
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _is_kind(path: Path, kind: str) -> bool:
    if kind == "torch":  # torch.save's zip: '<name>/data.pkl'
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") for name in archive.namelist())
        except (OSError, zipfile.BadZipFile, ValueError):
            return False
    with open(path, "rb") as handle:
        return handle.read(4096).lstrip().startswith(_KINDS[kind][1])


def check_output_file(path: str | Path, option: str, kind: str, reads: dict[str, object] | None = None) -> Path:
    """Refuse, before any work, an output file `option` that would replace something else: one of
    the command's inputs (`reads`: role -> path), a file inside a bundle (but its report/), a folder
    or special file, or an existing non-empty file that is not `kind` ('json', 'xml', 'torch')."""
    path = Path(path)
    place = _place(path)
    for role, other in (reads or {}).items():
        if other is not None and _same_file(place, other):
            raise UserError(f"{path}: {option} names the {role} this command reads; pass a new file for {option}")
    _check_outside_bundles(path, option)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(info.st_mode):
        return path  # the link itself is replaced, never its target
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: {option} exists and is not a regular file (a folder, device or FIFO); "
                        f"pass a file path for {option}")
    if info.st_size and not _is_kind(path, kind):
        described = _KINDS[kind][0] if kind in _KINDS else "a torch.save file"
        raise UserError(f"{path}: {option} exists and is not {described}; refusing to replace it, "
                        f"pass a new path for {option}")
    return path


def check_output_folder(folder: str | Path, option: str) -> None:
    """A folder for written reports: a folder (or missing), and not a bundle's own files."""
    folder = Path(folder)
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; pass a folder for {option}")
    _check_outside_bundles(folder / "report.html", option, named=folder)
    check_report_files(folder)


# what `edgepipe report` writes starts its title with this (report.md's first line, report.html's <title>)
_REPORT_MARKS = {"report.md": b"# edgepipe report:", "report.html": b"<title>edgepipe report:"}


def check_report_files(folder: str | Path) -> None:
    """Refuse a report.html / report.md in `folder` that edgepipe did not write: `edgepipe report
    results.json` (no -o) writes beside the results file and replaced a user's own report.md there
    silently. A report edgepipe wrote (rerun), an empty file or a link (replaced, never followed)
    is fine."""
    for name, mark in _REPORT_MARKS.items():
        path = Path(folder) / name
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISREG(info.st_mode) or not info.st_size:
            continue  # a link is replaced; a folder or FIFO is refused when written
        with open(path, "rb") as handle:
            head = handle.read(4096)
        if mark not in (head.lstrip()[:len(mark)] if name == "report.md" else head):
            raise UserError(f"{path}: exists and is not a report edgepipe wrote; refusing to replace it, "
                            "move it or pass another folder with -o DIR")


def save_replacing(write: Callable[[Path], object], path: Path) -> Path:
    """Let `write` fill a temp file beside `path`, then rename it over `path` (a link there is
    replaced, never written through; a failed write leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
