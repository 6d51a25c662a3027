"""Derive: symbolic gradient-norm bounds of normalisers, proved or refuted by SymPy."""
