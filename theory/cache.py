"""On-disk cache of derivations, keyed by everything that could change their result.

key = sha256(SymPy version, the source of every module of the `theory` package, the source file of
the normaliser's definition, the normaliser's name). Editing a formula, a statement or the shared
derivation code changes the key, so a stale result can never be served. Location:
$XDG_CACHE_HOME/normcheck (default ~/.cache/normcheck); NORMCHECK_NO_CACHE=1 disables it.
An unreadable entry (truncated, corrupt, from another Python) is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import sympy

T = TypeVar("T")
_THEORY_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "normcheck"


def _source_digest(normaliser) -> str:
    digest = hashlib.sha256(sympy.__version__.encode())
    for path in sorted(_THEORY_DIR.rglob("*.py")):
        digest.update(path.relative_to(_THEORY_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    definition = Path(inspect.getfile(normaliser.hat))
    if definition.exists():
        digest.update(definition.read_bytes())
    digest.update(normaliser.name.encode())
    return digest.hexdigest()[:20]


def cached(kind: str, normaliser, compute: Callable[[], T]) -> T:
    """compute(), or its earlier result for the same inputs and code; stores new results atomically."""
    if os.environ.get("NORMCHECK_NO_CACHE") == "1":
        return compute()
    return _stored(cache_dir() / f"{kind}-{normaliser.name}-{_source_digest(normaliser)}.pkl", compute)


def cached_by_key(kind: str, key: str, compute: Callable[[], T]) -> T:
    """compute(), or its earlier result for the same `key`: a text naming everything the result depends on
    (e.g. a library version and the input), for results outside the theory package (the report's formulas)."""
    if os.environ.get("NORMCHECK_NO_CACHE") == "1":
        return compute()
    return _stored(cache_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pkl", compute)


def _stored(path: Path, compute: Callable[[], T]) -> T:
    if path.exists():
        try:
            with path.open("rb") as file:
                return pickle.load(file)
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
            pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic (temp file, then rename), like empirics.storage, which theory must not import (torch).
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            pickle.dump(value, file)
        os.replace(temp, path)
    except OSError:
        pass  # a read-only home costs speed, never correctness
    return value
