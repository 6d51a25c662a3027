"""Measure: train real networks and capture the quantities the theory bounds."""
