"""Files that are never half-written: every result goes to a temp file, then is renamed into place.

A reader (a resumed run, the report stage) therefore sees either the old file or the new one.
JSON is strict: non-finite floats become null, so every file parses with any JSON reader.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def strict_json(value):
    """Replace non-finite floats by None, recursively, so the json is valid (allow_nan=False)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_atomic(path: Path, write) -> None:
    """Call write(binary file) on a temp file in path's directory, then rename it over path."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise


def write_json(path: Path, payload: dict) -> None:
    text = json.dumps(strict_json(payload), indent=1, allow_nan=False)
    write_atomic(path, lambda file: file.write(text.encode()))


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/normcheck (default ~/.cache/normcheck); the same place theory.cache uses."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "normcheck"
