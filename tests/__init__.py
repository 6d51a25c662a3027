"""Test suite; a package so helpers import as `tests.strategies`, `tests.tolerances`."""
