"""Checking is a pure function of (claim, rows): sound on real float32 captures, sensitive to real errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from empirics.capture import BoundCapture
from empirics.config import ModelConfig, Norm
from empirics.models import build_model
from verify import checks, training


@pytest.fixture(scope="module")
def captured_rows():
    """Rows captured from one float32 forward/backward of a small BN net on random data."""
    generator = torch.Generator().manual_seed(0)
    model = build_model(ModelConfig(channels=(8, 8, 16, 16), hidden=32), Norm.BATCHNORM, 1e-5, generator=generator)
    x = torch.randn(64, 1, 40, generator=generator)
    labels = torch.randint(0, 10, (64,), generator=generator)
    capture = BoundCapture(model)
    with capture.active():
        torch.nn.functional.cross_entropy(model(x), labels).backward()
    return capture.collect(step=0)


def test_thm41_has_no_violation_on_float32_captures(captured_rows):
    evaluated = checks.check_rows(checks.activation_bound_claim("thm4.1"), captured_rows, "float32")
    summary = checks.summarise(evaluated)
    assert summary["n_checked"] == len(captured_rows["lhs"]) > 0
    assert summary["n_violations"] == 0
    # At eps = 1e-5 the bound is tight up to rounding: the ratio sits at 1 within float32 accuracy.
    assert abs(summary["median_ratio"] - 1) < 1e-4


def test_printed_thm41_is_violated_on_the_same_captures(captured_rows):
    evaluated = checks.check_rows(checks.activation_bound_claim("thm4.1-printed"), captured_rows, "float32")
    assert checks.summarise(evaluated)["n_violations"] > 0


def test_a_measured_gradient_one_percent_too_large_is_a_violation(captured_rows):
    """The tolerance is far below 1% of the bound here, so a 1% error in dL/dy cannot hide in it."""
    inflated = {**captured_rows, "lhs": captured_rows["lhs"] * 1.01**2}
    evaluated = checks.check_rows(checks.activation_bound_claim("thm4.1"), inflated, "float32")
    summary = checks.summarise(evaluated)
    assert summary["n_violations"] == summary["n_checked"]


def test_tolerance_scales_with_the_dtype(captured_rows):
    claim = checks.activation_bound_claim("thm4.1")
    rhs = claim.bound(captured_rows)
    tol32 = checks.float_rounding_tolerance(captured_rows, rhs, "float32")
    tol64 = checks.float_rounding_tolerance(captured_rows, rhs, "float64")
    assert np.all(tol64 < tol32 * 1e-8)


def test_rows_violating_an_assumption_are_not_counted_as_checked(captured_rows):
    rows = {**captured_rows, "eps": captured_rows["eps"].copy()}
    rows["eps"][:3] = -1.0
    summary = checks.summarise(checks.check_rows(checks.activation_bound_claim("thm4.1"), rows, "float32"))
    assert summary["n_assumptions_failed"] == 3
    assert summary["n_checked"] == len(rows["lhs"]) - 3


def _history(accuracies: list[float]) -> dict:
    steps = list(range(0, 10 * len(accuracies), 10))
    return {"train": {"step": steps, "loss": [1.0] * len(steps), "acc": accuracies}}


def test_steps_to_threshold_uses_a_running_mean_not_one_lucky_batch():
    lucky = [0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1]
    assert training.steps_to_threshold(_history(lucky), threshold=0.8) is None
    steady = [0.1, 0.5, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert training.steps_to_threshold(_history(steady), threshold=0.8) == 60


def test_steps_to_threshold_ignores_non_finite_points():
    assert training.steps_to_threshold(_history([None] * 4 + [0.9] * 5), threshold=0.8) == 80
