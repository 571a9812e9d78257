"""Reading the JSON files users hand us (manifests, results, reports) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from edgepipe.errors import UserError


def read_json(path: str | Path, what: str, missing_hint: str):
    """Parsed JSON of `path`; a missing or malformed file is a UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found; {missing_hint}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: {what} is not valid JSON ({exc})") from None
