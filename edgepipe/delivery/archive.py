"""Bundle archives: a reproducible .tar.gz to ship, and an extraction that cannot escape.

`pack_bundle` writes the same bytes every time for the same bundle (sorted entries, mtime 0,
owner 0/0 with empty names, normalized modes, gzip header without name or time), so a release
archive's sha256 is stable and can be published. `safe_extract` treats every archive as hostile:
absolute paths, `..`, links of any kind, device files and members whose unpacked size
exceeds the limit or the free disk space are refused by name before anything is written.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from edgepipe.delivery.bundle import MANIFEST, SHA256SUMS, load_manifest, verify_bundle, VerificationError
from edgepipe.errors import UserError

_FILE_MODE, _EXEC_MODE, _DIR_MODE = 0o644, 0o755, 0o755
MAX_ARCHIVE_BYTES = 16 << 30  # unpacked; checked from the headers before anything is extracted
MAX_ARCHIVE_MEMBERS = 100_000
MAX_ARCHIVE_RATIO = 200  # unpacked / packed bytes; as for .npz members (safeio)
MIN_RATIO_CHECKED_BYTES = 64 << 20  # a small archive may unpack to this much whatever its ratio
MAX_MEMBER_DEPTH = 32  # a bundle nests 3 deep; 3000 empty folders made extraction recurse past Python's limit


def _tar_info(name: str, *, directory: bool = False, size: int = 0, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = _DIR_MODE if directory else (_EXEC_MODE if executable else _FILE_MODE)
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def packed_paths(bundle: Path) -> list[str]:
    """What goes into the archive: the manifest's files plus manifest.json and SHA256SUMS."""
    manifest = load_manifest(bundle)
    return sorted({entry["path"] for entry in manifest["files"]} | {MANIFEST, SHA256SUMS})


def _check_replaceable(out_path: Path) -> None:
    """The archive is renamed over `out_path`: only a link or an earlier .tar.gz may stand there.
    Renaming over a device (`-o /dev/null`, as root) or a user's file would replace it for good."""
    try:
        info = os.lstat(out_path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        return  # the link itself is replaced, never its target
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{out_path}: exists and is not a regular file (a folder, device or FIFO); "
                        "pass a new path for the archive")
    with open(out_path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            raise UserError(f"{out_path}: exists and is not a .tar.gz; refusing to replace it, "
                            "pass a new path for the archive")


def pack_bundle(bundle: Path, out_path: Path) -> Path:
    """Verify `bundle`, then write it as a deterministic .tar.gz under a top folder of its name."""
    bundle, out_path = Path(bundle), Path(out_path)
    resolved_out, resolved_bundle = out_path.absolute().resolve(), bundle.absolute().resolve()
    if resolved_out == resolved_bundle or resolved_bundle in resolved_out.parents:
        raise UserError(f"{out_path}: is inside the bundle {bundle}; write the archive outside it")
    _check_replaceable(out_path)
    problems = verify_bundle(bundle)
    if problems:
        raise VerificationError(f"{bundle}: refusing to pack a bundle that fails verification: {problems[0]}")
    top = bundle.resolve().name
    paths = packed_paths(bundle)
    directories = sorted({str(p) for path in paths for p in PurePosixPath(path).parents if str(p) != "."})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as zipped, \
                tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info(top, directory=True))
            for name in sorted([(d, True) for d in directories] + [(p, False) for p in paths]):
                rel, is_dir = name
                if is_dir:
                    tar.addfile(_tar_info(f"{top}/{rel}", directory=True))
                    continue
                source = bundle / rel
                with open(source, "rb", opener=_no_follow) as handle:  # a link swapped in after verify
                    status = os.fstat(handle.fileno())
                    if not stat.S_ISREG(status.st_mode):
                        raise UserError(f"{source}: not a regular file; refusing to pack it")
                    info = _tar_info(f"{top}/{rel}", size=status.st_size, executable=bool(status.st_mode & 0o111))
                    tar.addfile(info, handle)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path


def _no_follow(path, flags):
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))


def _member_problem(member: tarfile.TarInfo) -> str:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts or "\\" in name:
        return "path escapes the destination ('..')"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "device file or fifo"
    if member.issym() or member.islnk():
        return f"a link ({member.linkname}); bundle archives hold regular files and folders only"
    if not (member.isfile() or member.isdir()):
        return "unsupported member type"
    if member.size > MAX_ARCHIVE_BYTES:
        return f"{member.size} bytes, more than the {MAX_ARCHIVE_BYTES} byte limit"
    # surrogateescape: tarfile reads a name that is not UTF-8 (a bundle folder in Latin-1 bytes) that way
    if len(path.parts) > MAX_MEMBER_DEPTH or any(len(part.encode("utf-8", "surrogateescape")) > 255
                                                 for part in path.parts):
        return f"a path deeper than {MAX_MEMBER_DEPTH} folders or with a name over 255 bytes; a bundle has neither"
    return ""


def safe_extract(tar_path: Path, dest: Path) -> Path:
    """Extract `tar_path` into `dest` after checking every member; UserError names a bad one."""
    tar_path, dest = Path(tar_path), Path(dest)
    try:
        tar = tarfile.open(tar_path, mode="r:*")
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:  # gzip raises EOFError on a cut header
        raise UserError(f"{tar_path}: not a readable tar archive ({exc}); "
                        "pass the .tar.gz that edgepipe pack wrote") from None
    # headers are read one at a time and every limit checked before the next: a gzip stream of a
    # million empty headers, or one member of 16 GB of zeros (3 MB packed), is refused after its
    # header, never listed whole or decompressed to disk
    allowed = min(MAX_ARCHIVE_BYTES, max(MIN_RATIO_CHECKED_BYTES, MAX_ARCHIVE_RATIO * tar_path.stat().st_size))
    with tar:
        members, total = [], 0
        while True:
            try:
                member = tar.next()
            except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
                raise UserError(f"{tar_path}: damaged archive ({exc})") from None
            if member is None:
                break
            members.append(member)
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise UserError(f"{tar_path}: more than the {MAX_ARCHIVE_MEMBERS} members a bundle has")
            problem = _member_problem(member)
            if problem:
                shown = member.name if len(member.name) <= 120 else member.name[:100] + f"... ({len(member.name)} characters)"
                raise UserError(f"{tar_path}: refusing member '{shown}': {problem}")
            total += member.size
            if total > allowed:
                raise UserError(f"{tar_path}: members add up to more than {allowed} bytes unpacked (allowed: "
                                f"{MAX_ARCHIVE_RATIO}x the archive's size, at most {MAX_ARCHIVE_BYTES}); a "
                                "decompression bomb, not a bundle")
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if total > MAX_ARCHIVE_BYTES or total > free:
            raise UserError(f"{tar_path}: members add up to {total} bytes unpacked, more than "
                            f"{min(MAX_ARCHIVE_BYTES, free)} bytes allowed here (limit or free disk space)")
        try:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")  # second line of defence
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=members)
        except (tarfile.TarError, EOFError, zlib.error) as exc:  # headers fine, a member's data cut short
            raise UserError(f"{tar_path}: damaged archive ({exc})") from None
    return dest


def bundle_root(extracted: Path, archive: Path | None = None) -> Path:
    """The folder holding manifest.json in an extracted archive (top level or one folder down)."""
    if (extracted / MANIFEST).is_file():
        return extracted
    entries = sorted(extracted.iterdir())
    candidates = [p for p in entries if p.is_dir() and (p / MANIFEST).is_file()]
    if len(candidates) != 1:
        raise UserError(f"{archive or extracted}: the archive holds no single bundle folder with {MANIFEST}")
    # what lies beside the bundle folder is unpacked by `tar xf` too, and no manifest lists it
    others = [p.name for p in entries if p != candidates[0]]
    if others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise UserError(f"{archive or extracted}: the archive holds '{others[0]}'{more} beside the bundle folder "
                        f"'{candidates[0].name}'; a bundle archive holds that folder only, re-pack it with "
                        "edgepipe pack")
    return candidates[0]
