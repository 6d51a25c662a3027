"""The derivation cache serves a result only for identical inputs and code, and survives corruption."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from theory import cache


def _normaliser(name: str = "probe"):
    """Anything with a name and a `hat` defined in a file: the cache keys on that file's source."""
    return SimpleNamespace(name=name, hat=_normaliser)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NORMCHECK_NO_CACHE", raising=False)
    return tmp_path / "normcheck"


def test_second_call_is_served_from_disk(cache_home):
    calls = []
    compute = lambda: calls.append(1) or {"value": 42}
    assert cache.cached("kind", _normaliser(), compute) == {"value": 42}
    assert cache.cached("kind", _normaliser(), compute) == {"value": 42}
    assert len(calls) == 1
    assert len(list(cache_home.glob("kind-probe-*.pkl"))) == 1


def test_a_change_to_theory_source_changes_the_key(cache_home, monkeypatch):
    before = cache._source_digest(_normaliser())
    original = cache.Path.read_bytes

    def edited(path):
        data = original(path)
        return data + b"# edited" if path.name == "derive.py" else data

    monkeypatch.setattr(cache.Path, "read_bytes", edited)
    assert cache._source_digest(_normaliser()) != before


def test_names_are_part_of_the_key(cache_home):
    assert cache._source_digest(_normaliser("a")) != cache._source_digest(_normaliser("b"))


def test_a_corrupt_entry_is_recomputed_not_trusted(cache_home):
    cache.cached("kind", _normaliser(), lambda: 1)
    (entry,) = cache_home.glob("kind-probe-*.pkl")
    entry.write_bytes(pickle.dumps(1)[:3])  # truncated
    assert cache.cached("kind", _normaliser(), lambda: 2) == 2


def test_disabled_cache_always_computes(cache_home, monkeypatch):
    monkeypatch.setenv("NORMCHECK_NO_CACHE", "1")
    calls = []
    for _ in range(2):
        cache.cached("kind", _normaliser(), lambda: calls.append(1))
    assert len(calls) == 2 and not cache_home.exists()


def test_keyed_entries_are_served_for_the_same_key_only(cache_home):
    calls = []
    compute = lambda: calls.append(1) or None  # None (e.g. a formula mathtext cannot draw) is a result too
    assert cache.cached_by_key("text", "version 1\nx^2", compute) is None
    assert cache.cached_by_key("text", "version 1\nx^2", compute) is None
    assert len(calls) == 1
    assert cache.cached_by_key("text", "version 2\nx^2", lambda: "other") == "other"
    assert len(list(cache_home.glob("text-*.pkl"))) == 2


def test_report_formulas_are_drawn_once_across_processes(cache_home, monkeypatch):
    from verify import document

    drawn = []
    real = document._draw_math
    monkeypatch.setattr(document, "_draw_math", lambda source, size: drawn.append(source) or real(source, size))
    first = document.mathtext_svg(r"\frac{a}{b} \le 1", 12.0)
    document.mathtext_svg.cache_clear()  # a fresh process: only the disk remembers
    assert document.mathtext_svg(r"\frac{a}{b} \le 1", 12.0) == first is not None
    assert drawn == [r"\frac{a}{b} \leq 1"]
    document.mathtext_svg.cache_clear()
