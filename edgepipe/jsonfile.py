"""Reading the JSON files users hand us (manifests, results, reports) with one-line errors."""

from __future__ import annotations

from pathlib import Path

from edgepipe.errors import UserError
from edgepipe.safeio import JSON_MAX_BYTES, read_json_file


def read_json(path: str | Path, what: str, missing_hint: str, max_bytes: int = JSON_MAX_BYTES):
    """Parsed JSON of `path` (a regular file, size and nesting bounded); problems are a UserError."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path}: {what} not found; {missing_hint}")
    return read_json_file(path, what, max_bytes)
