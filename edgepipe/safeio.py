"""Reading files users hand us as hostile: regular files only, bounded size, bounded structure.

Every reader here refuses in one line (a UserError naming the file) instead of blocking on a
FIFO, reading `/dev/zero` whole, expanding YAML aliases (billion laughs) or recursing through a
document nested thousands of levels deep. Other modules call these small checks at their own
entry points (data loaders, archive extraction) so the limits live in one place.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
from pathlib import Path

import yaml

from edgepipe.errors import UserError

MiB = 1 << 20
CONFIG_MAX_BYTES = 1 * MiB  # edgepipe.yaml, target profiles, inventories
JSON_MAX_BYTES = 64 * MiB  # manifests, results.json
# calibration.json holds a histogram per activation tensor, so it grows with the graph: an LSTM
# unrolled over 599 time steps (an EEG seizure model) has ~40,000 tensors and a 115 MB file.
CALIBRATION_JSON_MAX_BYTES = 256 * MiB
MAX_NESTING = 64  # deeper documents are refused: nothing we read nests more than a few levels
IMAGE_MAX_BYTES = 256 * MiB  # one calibration image file; pixel count is bounded by Pillow's own limit


def ensure_regular_file(path: str | Path, max_bytes: int | None = None, what: str = "file") -> Path:
    """`path` if it is a regular file (not a FIFO, device, socket or directory) within `max_bytes`.

    Uses stat only, so a FIFO is refused without ever being opened (opening it would block)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: is a directory, expected a {what if what.endswith('file') else what + ' file'}")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: is not a regular file (a FIFO, device or socket); pass the {what} as a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UserError(f"{path}: {what} is {info.st_size} bytes, more than the {max_bytes} byte limit; "
                        f"is this the right file?")
    return path


def ensure_regular_or_dir(path: str | Path, what: str) -> None:
    """Refuse special files (FIFOs, devices) given where a file or a folder is expected."""
    try:
        info = os.stat(path)
    except OSError:
        return  # missing paths are reported by the reader with its own hint
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise UserError(f"{path}: is not a regular file or folder (a FIFO, device or socket); pass a real {what}")


def read_bytes_bounded(path: str | Path, max_bytes: int, what: str) -> bytes:
    """The file's bytes; refuses special files and files over `max_bytes` (also if it grows)."""
    path = ensure_regular_file(path, max_bytes, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise UserError(f"{path}: {what} is larger than the {max_bytes} byte limit")
    return data


def read_text_bounded(path: str | Path, max_bytes: int, what: str, marked_unicode: bool = False) -> str:
    """UTF-8 text; with `marked_unicode` (a file the user writes: edgepipe.yaml, a profile, an
    inventory) also UTF-16/32 with a byte-order mark, which YAML reads and Windows PowerShell 5's `>`
    and Out-File write (it was refused as 'not UTF-8 text (byte 0)')."""
    data = read_bytes_bounded(path, max_bytes, what)
    boms = _BOMS if marked_unicode else ()
    encoding = next((name for bom, name in boms if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not {encoding.upper().replace('-SIG', '')} text (byte {exc.start}); "
                        "save it as UTF-8") from None


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def check_depth(data, where: str, limit: int = MAX_NESTING) -> None:
    """UserError when lists/dicts nest deeper than `limit` (checked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise UserError(f"{where}: nested more than {limit} levels deep; this is not a file edgepipe wrote")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def _unique_keys(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} is given twice")
    return dict(pairs)


def parse_json(text: str | bytes, where: str):
    """json.loads with the nesting bound and each key once per object (json keeps the last copy,
    a reader sees the first); NaN/Infinity are read (callers decide if they are allowed)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to be an edgepipe file") from None
    check_depth(data, where)
    escapes = (b"\\ud", b"\\uD") if isinstance(text, bytes) else ("\\ud", "\\uD")
    if any(escape in text for escape in escapes):  # only a \uD800-style escape can make a surrogate
        _check_surrogates(data, where, "regenerate the file")
    return data


def _check_surrogates(data, where: str, fix: str) -> None:
    """JSON may escape half of a UTF-16 pair (`\\ud800`) alone; Python reads it as a string that cannot be
    written as UTF-8, and a report or JUnit file naming it was an internal error (UnicodeEncodeError)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"{where}: holds a lone UTF-16 surrogate ({ascii(value)[:60]}), which is not text; "
                                f"{fix}") from None


def read_json_file(path: str | Path, what: str, max_bytes: int = JSON_MAX_BYTES):
    """Parsed JSON of a regular file of at most `max_bytes`, nesting bounded."""
    text = read_text_bounded(path, max_bytes, what)
    try:
        return parse_json(text, str(path))
    except ValueError as exc:
        raise UserError(f"{path}: {what} is not valid JSON ({exc})") from None


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases (alias expansion bombs, recursive aliases) and
    nesting deeper than MAX_NESTING while composing, before any big object exists, and a key
    given twice in one mapping (PyYAML keeps the last: a reviewer reads the first)."""

    _depth = 0

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key '{key_node.value}' is given twice",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not supported; "
                                              "write the values out", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_NESTING} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str, where: str):
    """yaml.safe_load without aliases and with bounded nesting; errors name line and column."""
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise UserError(f"{where}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{where}: not valid YAML{at}: {problem}") from None
    if "\\u" in text or "\\U" in text:  # a "\ud800" escape: a profile name with one failed writing the bundle
        _check_surrogates(data, where, "write the value without that escape")
    return data


def read_yaml_file(path: str | Path, what: str, max_bytes: int = CONFIG_MAX_BYTES):
    return parse_yaml(read_text_bounded(path, max_bytes, what, marked_unicode=True), str(path))


def available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


BOMB_RATIO, BOMB_MIN_BYTES = 200, 64 * MiB  # real tensors compress far less than 200:1


def _bomb_problem(info, read_whole: bool, limit: int | None) -> str:
    """Why one zip member must not be inflated ('' when it may): read from the zip directory."""
    size = info.file_size
    if read_whole and limit is not None and size > limit:
        return f"unpacks to {size} bytes, more than the {limit} bytes of free memory here"
    if size > BOMB_MIN_BYTES and size > BOMB_RATIO * max(info.compress_size, 1):
        return f"unpacks from {info.compress_size} to {size} bytes (over {BOMB_RATIO}:1): a zip bomb or constant data"
    return ""


def check_npz_members(path: str | Path, names, what: str = "array", read_whole: bool = True) -> None:
    """Refuse .npz members that would be inflated whole into more than this machine's free
    memory (`read_whole`: members read a few samples at a time need no such limit), or that
    unpack to over 64 MB at more than 200:1 (a zip bomb; data that uniform calibrates nothing).
    Read from the zip directory alone, before anything is inflated."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # np.load reports damaged archives with its own message
    limit = available_memory_bytes()
    for name in names:
        info = infos.get(f"{name}.npy")
        problem = _bomb_problem(info, read_whole, limit) if info is not None else ""
        if problem.startswith("unpacks to"):
            raise UserError(f"{path}: {what} '{name}' {problem}; pass fewer samples (split the file or set "
                            f"calibration.max_samples)")
        if problem:
            raise UserError(f"{path}: {what} '{name}' {problem}; save real samples")


def check_zip_members(path: str | Path, what: str) -> None:
    """Refuse a zip archive (a TorchScript file, a .pt2 program) with a member that unpacks at over
    200:1, before a reader that inflates every member whole opens it. torch writes its archives
    uncompressed, so such a member is never one torch wrote; a stored member costs no more memory
    than the file's own size on disk."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # the reader reports damaged archives with its own message
    for info in infos:
        problem = _bomb_problem(info, False, None)
        if problem:
            raise UserError(f"{path}: {what} member '{info.filename}' {problem}; re-save it with torch")


def make_real_folders(folder: str | Path, inside: str | Path, for_what: str) -> None:
    """Make `folder` below `inside`, refusing a link (or a file) on the way: a bundle's `report`
    link would carry what edgepipe writes there out of the bundle."""
    current = Path(inside)
    for part in Path(folder).relative_to(inside).parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise UserError(f"{current}: is a link or not a folder; refusing to write {for_what} through it "
                            "(results stay inside the bundle), remove it")
        current.mkdir(exist_ok=True)


def write_text_replacing(path: str | Path, text: str, inside: str | Path | None = None) -> Path:
    """Write `text` to `path` as a new file renamed over it: a link planted at `path` (a bundle's
    `report/compare.json -> ~/.bashrc`) is replaced, never written through. With `inside` (the
    bundle a path belongs to), every folder from there down to the file must be a real folder, so
    a `report` link cannot carry the file out of the bundle; missing folders are made."""
    path = Path(path)
    if inside is not None:
        make_real_folders(path.parent, inside, path.name)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        if inside is not None or stat.S_ISDIR(mode):
            raise UserError(f"{path}: is a folder, device or FIFO; refusing to replace it, remove it")
        with open(path, "w", encoding="utf-8") as handle:  # the user's own `--out /dev/null`: written, never replaced
            handle.write(text)
        return path
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
