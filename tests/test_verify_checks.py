"""Checking is a pure function of (claim, rows): sound on real float32 captures, sensitive to real errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from empirics.capture import BoundCapture
from empirics.config import ModelConfig, Norm
from empirics.models import build_model
from verify import checks, measured_statements, training


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
    evaluated = checks.check_rows(checks.activation_bound_check("thm4.1"), captured_rows, "float32")
    summary = checks.summarise(evaluated)
    assert summary["n_checked"] == len(captured_rows["lhs"]) > 0
    assert summary["n_violations"] == 0
    # At eps = 1e-5 the bound is tight up to rounding: the ratio sits at 1 within float32 accuracy.
    assert abs(summary["median_ratio"] - 1) < 1e-4


def test_printed_thm41_is_violated_on_the_same_captures(captured_rows):
    evaluated = checks.check_rows(checks.activation_bound_check("thm4.1-printed"), captured_rows, "float32")
    assert checks.summarise(evaluated)["n_violations"] > 0


def test_a_measured_gradient_one_percent_too_large_is_a_violation(captured_rows):
    """The tolerance is far below 1% of the bound here, so a 1% error in dL/dy cannot hide in it."""
    inflated = {**captured_rows, "lhs": captured_rows["lhs"] * 1.01**2}
    evaluated = checks.check_rows(checks.activation_bound_check("thm4.1"), inflated, "float32")
    summary = checks.summarise(evaluated)
    assert summary["n_violations"] == summary["n_checked"]


def test_tolerance_scales_with_the_dtype(captured_rows):
    claim = checks.activation_bound_check("thm4.1")
    rhs = claim.bound(captured_rows)
    tol32 = checks.float_rounding_tolerance(captured_rows, rhs, "float32")
    tol64 = checks.float_rounding_tolerance(captured_rows, rhs, "float64")
    assert np.all(tol64 < tol32 * 1e-8)


def test_rows_violating_an_assumption_are_not_counted_as_checked(captured_rows):
    rows = {**captured_rows, "eps": captured_rows["eps"].copy()}
    rows["eps"][:3] = -1.0
    summary = checks.summarise(checks.check_rows(checks.activation_bound_check("thm4.1"), rows, "float32"))
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
    assert training.steps_to_threshold(_history([0.9] * 3), threshold=0.8) is None  # fewer points than a window


def test_smoothed_accuracy_is_the_running_mean_the_threshold_reads():
    steps, smooth = training.smoothed_accuracy(_history([0.1, 0.2, 0.3, 0.4, 0.5, None, 0.9]))
    assert steps.tolist() == [40, 50, 60]
    assert smooth[0] == pytest.approx(0.3) and np.isnan(smooth[1:]).all()  # a missing point spoils its windows


# --- thm4.2, obs4.3 and thm4.4 on real measurement tables -------------------------------------------


@pytest.fixture(scope="module")
def measured_run():
    """One float32 step of a small BN net: captures, thm4.2 curvature of BN layer 0, thm4.4 weight terms."""
    from empirics import curvature, weight_bounds
    from empirics.probes import _rows, _weight_layers

    generator = torch.Generator().manual_seed(1)
    model = build_model(ModelConfig(channels=(8, 8, 16, 16), hidden=32), Norm.BATCHNORM, 1e-5, generator=generator)
    x = torch.randn(32, 1, 40, generator=generator)
    labels = torch.randint(0, 10, (32,), generator=generator)
    loss_fn = torch.nn.functional.cross_entropy
    capture = BoundCapture(model)
    with capture.active():
        loss_fn(model(x), labels).backward()
    captures = capture.collect(step=0)
    probes = {}
    chunks = [_rows(0, 0, curvature.activation_curvature(model, 0, x, labels, loss_fn))]
    probes.update({f"curvature/{k}": v for k, v in chunks[0].items()})
    weights = [_rows(0, i, weight_bounds.weight_bound_terms(model, layer, x, labels, loss_fn))
               for i, layer in enumerate(_weight_layers(model))]
    probes.update({f"weights/{k}": np.concatenate([w[k] for w in weights]) for k in weights[0]})
    return checks.measurement_tables({"captures": captures, "probes": probes})


def _summary(claim, rows):
    return checks.summarise(checks.check_rows(claim, rows, "float32"))


def test_every_weight_row_finds_its_capture(measured_run):
    weights, captures = measured_run["weights"], measured_run["captures"]
    assert len(weights["step"]) == len(captures["step"])  # every conv feeds a BN: one row per BN channel
    assert np.all(np.isfinite(weights["g_sq"]))
    # the probe's dL/dy and the capture's are the same gradient, computed twice in float32
    np.testing.assert_allclose(weights["dy_sq"], weights["lhs"], rtol=1e-5)


def test_thm44_per_unit_holds_and_a_one_percent_excess_is_caught(measured_run):
    claim = measured_statements.weight_per_unit_check()
    rows = measured_run["weights"]
    summary = _summary(claim, rows)
    assert summary["n_checked"] == len(rows["step"]) and summary["n_violations"] == 0
    inflated = {**rows, "grad_w_sq": claim.bound(rows) * 1.01}
    assert _summary(claim, inflated)["n_violations"] == summary["n_checked"]


def test_thm44_minimax_reading_is_tight_and_the_printed_form_is_computed(measured_run):
    rows = measured_run["weights"]
    consistent = _summary(measured_statements.minimax_weight_check("thm4.4"), rows)
    assert consistent["n_violations"] == 0
    assert abs(consistent["median_ratio"] - 1) < 1e-4  # lambda^2 ||v||^2 = lambda^2 RHS_4.1 up to eps
    printed = _summary(measured_statements.minimax_weight_check("thm4.4-printed"), rows)
    assert printed["n_checked"] == consistent["n_checked"]


def test_obs43_matched_scale_gradient_is_never_larger(measured_run):
    summary = _summary(checks.matched_scale_check(), measured_run["captures"])
    assert summary["n_violations"] == 0 and summary["worst_ratio"] <= 1 + 1e-4


def test_thm42_first_form_is_an_identity_up_to_eps_and_rounding(measured_run):
    rows = measured_run["curvature"]
    summary = _summary(measured_statements.smoothness_check("thm4.2"), rows)
    assert summary["n_checked"] == len(rows["step"]) > 0
    assert summary["n_violations"] == 0
    assert set(summary["conditions_held"]) == {c.name for c in measured_statements.SMOOTHER_CONDITIONS}


def test_thm42b_violations_occur_only_where_reading_r1_fails(measured_run):
    """At eps ~ 0, LHS - RHS_b = (gamma^2/sigma^2)(v^T H v - g^T H g): R1 is the exact condition."""
    evaluated = checks.check_rows(measured_statements.smoothness_check("thm4.2b"), measured_run["curvature"], "float32")
    r1 = evaluated["condition:" + measured_statements.READING_R1.name]
    assert not np.any(evaluated["violated"] & r1)
