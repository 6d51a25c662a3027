"""The numeric bridge (`theory.numeric`) against slow float64 references, and thm4.1 on random batches.

Routes to the BatchNorm Jacobian dz/dy of one group y (shape (m,)), all float64:

- the bridge: `numeric.jacobian('batchnorm', ...)`, lambdified from the symbolic-m derivation;
- torch: `torch.func.jacrev` of `F.batch_norm(training=True)` (input reshaped (m, 1): one channel,
  m samples) -- only for eps > 0, since torch refuses eps = 0 in training mode -- and of a
  hand-written torch forward gamma (y - mean) / sqrt(mean((y - mean)^2) + eps), which covers eps = 0;
- NumPy: the closed form (gamma/sigma)(I - 11^T/m - yhat yhat^T/m) with a two-pass variance.

The left side of thm4.1, ||dL-hat/dy||^2, is always taken from torch autograd through the
hand-written forward (never from the closed form under test); its right side from the bridge.
Tolerances and their reasons: `tests.tolerances`.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, find, given, settings
from hypothesis import strategies as st

from tests.strategies import (
    batches_with_eps,
    batches_with_grads,
    batches_with_grads_and_eps,
    gammas,
    positive_eps,
)
from tests.tolerances import (
    assert_at_most,
    assert_close,
    centring_condition,
    grad_sq_norm_tolerance,
    jacobian_entry_tolerance,
)
from theory import numeric

# A Jacobian by jacrev costs milliseconds; cap those properties so the `thorough` profile's 100k
# examples go to the bound checks, which are what it is for.
JACOBIAN_ROUTES = settings(max_examples=min(settings().max_examples, 2_000))
# Edge cases named in the house style, as explicit (y, g) pairs.
M2_BATCH = np.array([0.0, 1.0])
HUGE_OFFSET_BATCH = 1e3 + 1e-3 * np.array([-1.0, 1.0, 0.3])  # mean/spread ~ 1e6: ill-conditioned centring
HUGE_SCALE_BATCH = 1e3 * np.array([-1.0, 1.0, 0.25, -0.5])
CONSTANT_BATCH = np.full(3, -999.9)  # a dead/saturated channel: var = 0, defined only for eps > 0




# --- float64 references ---------------------------------------------------------------------------


def _sigma_and_yhat(batch: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
    """Two-pass biased statistics: sigma = sqrt(mean((y - mean)^2) + eps), yhat = (y - mean)/sigma."""
    centred = batch - batch.mean()
    sigma = float(np.sqrt(np.mean(centred**2) + eps))
    return sigma, centred / sigma


def _closed_form_jacobian(batch: np.ndarray, gamma: float, eps: float) -> np.ndarray:
    """(gamma/sigma)(I - 11^T/m - yhat yhat^T/m), shape (m, m), entry [l, k] = dz_l/dy_k."""
    size = batch.shape[0]
    sigma, yhat = _sigma_and_yhat(batch, eps)
    return gamma / sigma * (np.eye(size) - np.ones((size, size)) / size - np.outer(yhat, yhat) / size)


def _handwritten_forward(x: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    centred = x - x.mean()
    return gamma * centred / torch.sqrt((centred**2).mean() + eps)


def _torch_batch_norm_forward(x: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    weight = torch.tensor([gamma], dtype=torch.float64)
    return F.batch_norm(x.reshape(-1, 1), None, None, weight=weight, bias=None, training=True, eps=eps).reshape(-1)


def _jacrev(forward, batch: np.ndarray, gamma: float, eps: float) -> np.ndarray:
    x = torch.from_numpy(np.array(batch, dtype=np.float64))
    return torch.func.jacrev(lambda v: forward(v, gamma, eps))(x).numpy()


def _reference_grad(batch: np.ndarray, grad: np.ndarray, gamma: float, eps: float) -> np.ndarray:
    """dL-hat/dy = J^T g by torch autograd through the hand-written forward (valid wherever var + eps > 0)."""
    x = torch.from_numpy(np.array(batch, dtype=np.float64)).requires_grad_(True)
    (dy,) = torch.autograd.grad(_handwritten_forward(x, gamma, eps), x, torch.from_numpy(np.array(grad)))
    return dy.numpy()


def _invariants(batch: np.ndarray, grad: np.ndarray, gamma: float, eps: float) -> tuple:
    """(g_sq, g_sum, g_yhat, m, gamma, sigma): the bridge's argument order, eps appended by callers."""
    sigma, yhat = _sigma_and_yhat(batch, eps)
    return float(grad @ grad), float(grad.sum()), float(grad @ yhat), batch.shape[0], gamma, sigma


def _norm_scale(batch, grad, gamma, eps) -> float:
    """gamma^2 ||g||^2 / sigma^2: the size of every term of thm4.1, the scale of its tolerance."""
    sigma, _ = _sigma_and_yhat(batch, eps)
    return gamma**2 * float(grad @ grad) / sigma**2


def _thm41_sides(batch, grad, gamma, eps, claim_id="thm4.1"):
    """(LHS from torch autograd, RHS from the bridge, tolerance, scale) at one point."""
    lhs = float(np.sum(_reference_grad(batch, grad, gamma, eps) ** 2))
    rhs = float(numeric.activation_bound(claim_id)(*_invariants(batch, grad, gamma, eps)))
    tolerance = grad_sq_norm_tolerance(batch.shape[0], centring_condition(batch, eps))
    return lhs, rhs, tolerance, _norm_scale(batch, grad, gamma, eps)


# --- three routes to the Jacobian -------------------------------------------------------------------


@JACOBIAN_ROUTES
@given(case=batches_with_eps(), gamma=gammas())
@example(case=(M2_BATCH, 0.0), gamma=1.0)
@example(case=(CONSTANT_BATCH, 1e-5), gamma=-2.0)
@example(case=(HUGE_SCALE_BATCH, 1e-12), gamma=1e6)
@example(case=(HUGE_OFFSET_BATCH, 0.0), gamma=1.0)
def test_torch_jacobians_equal_fact_c1_closed_form(case, gamma):
    """jacrev(F.batch_norm) (eps > 0) and jacrev(hand-written forward) equal (gamma/sigma) P, entrywise."""
    batch, eps = case
    expected = _closed_form_jacobian(batch, gamma, eps)
    sigma, _ = _sigma_and_yhat(batch, eps)
    tolerance = jacobian_entry_tolerance(batch.shape[0], centring_condition(batch, eps))
    routes = {"jacrev(hand-written forward)": _jacrev(_handwritten_forward, batch, gamma, eps)}
    if eps > 0:  # recent torch (2.13 here) raises for eps = 0 in training mode
        routes["jacrev(F.batch_norm)"] = _jacrev(_torch_batch_norm_forward, batch, gamma, eps)
    for name, jacobian in routes.items():
        assert_close(jacobian, expected, tolerance, abs(gamma) / sigma, context=f"{name} vs NumPy closed form")


@JACOBIAN_ROUTES
@given(case=batches_with_eps(), gamma=gammas())
@example(case=(M2_BATCH, 0.0), gamma=1.0)
@example(case=(CONSTANT_BATCH, 1e-12), gamma=1.0)
@example(case=(np.full(6, -999.9), 1e-12), gamma=1.0)  # raw moments give var = -1.2e-10 < -eps here
@example(case=(HUGE_SCALE_BATCH, 1e-12), gamma=1e6)
@example(case=(HUGE_OFFSET_BATCH, 0.0), gamma=1.0)
def test_numeric_bridge_jacobian_equals_torch_and_closed_form(case, gamma):
    """numeric.jacobian('batchnorm') agrees with jacrev of the hand-written forward and with (gamma/sigma) P."""
    batch, eps = case
    bridge = numeric.jacobian("batchnorm", batch, gamma, eps)
    sigma, _ = _sigma_and_yhat(batch, eps)
    tolerance = jacobian_entry_tolerance(batch.shape[0], centring_condition(batch, eps))
    scale = abs(gamma) / sigma
    assert_close(bridge, _closed_form_jacobian(batch, gamma, eps), tolerance, scale, context="bridge vs NumPy closed form")
    assert_close(bridge, _jacrev(_handwritten_forward, batch, gamma, eps), tolerance, scale,
                 context="bridge vs jacrev(hand-written forward)")


# --- the closed form of ||J^T g||^2 -------------------------------------------------------------------


@given(case=batches_with_grads_and_eps(), gamma=gammas())
@example(case=(M2_BATCH, np.array([1.0, 0.0]), 0.0), gamma=1.0)
@example(case=(CONSTANT_BATCH, np.array([1.0, -2.0, 0.5]), 1e-5), gamma=1.0)
@example(case=(HUGE_OFFSET_BATCH, np.array([1.0, -2.0, 0.5]), 0.0), gamma=-3.0)
def test_derived_grad_sq_norm_equals_squared_norm_of_autograd_gradient(case, gamma):
    """numeric.grad_sq_norm('batchnorm')(invariants) == ||dL-hat/dy||^2 from torch autograd."""
    batch, grad, eps = case
    closed = numeric.grad_sq_norm("batchnorm")(*_invariants(batch, grad, gamma, eps), eps)
    direct = float(np.sum(_reference_grad(batch, grad, gamma, eps) ** 2))
    tolerance = grad_sq_norm_tolerance(batch.shape[0], centring_condition(batch, eps))
    assert_close(closed, direct, tolerance, _norm_scale(batch, grad, gamma, eps), context="closed form vs autograd")


# --- thm4.1: soundness and tightness ------------------------------------------------------------------


@given(case=batches_with_grads_and_eps(), gamma=gammas())
@example(case=(M2_BATCH, np.array([1.0, 0.0]), 0.0), gamma=1.0)
@example(case=(CONSTANT_BATCH, np.array([1.0, -2.0, 0.5]), 1e-5), gamma=1.0)
@example(case=(HUGE_SCALE_BATCH, np.array([3.0, -1.0, 0.5, 2.0]), 1e-12), gamma=1e6)
@example(case=(HUGE_OFFSET_BATCH, np.array([1.0, -2.0, 0.5]), 1e-12), gamma=-1e-6)
def test_thm41_bound_holds_on_every_sampled_batch(case, gamma):
    batch, grad, eps = case
    lhs, rhs, tolerance, scale = _thm41_sides(batch, grad, gamma, eps)
    assert_at_most(lhs, rhs, tolerance, scale, context=f"thm4.1 at m={batch.shape[0]}, eps={eps:g}")


@given(case=batches_with_grads(), gamma=gammas())
@example(case=(M2_BATCH, np.array([1.0, 0.0])), gamma=1.0)
@example(case=(HUGE_OFFSET_BATCH, np.array([1.0, -2.0, 0.5])), gamma=1.0)
def test_thm41_is_tight_at_zero_eps(case, gamma):
    """eps = 0: ||dL-hat/dy||^2 equals the bound for every g (J is gamma/sigma times a projector)."""
    batch, grad = case
    lhs, rhs, tolerance, scale = _thm41_sides(batch, grad, gamma, 0.0)
    assert_close(lhs, rhs, tolerance, scale, context=f"thm4.1 equality at eps=0, m={batch.shape[0]}")


@given(case=batches_with_grads(allow_constant=True), eps=positive_eps(), gamma=gammas())
@example(case=(np.array([-1.0, 1.0, 0.5]), np.array([1.0, -2.0, 0.5])), eps=1.0, gamma=1.0)
@example(case=(CONSTANT_BATCH, np.array([1.0, -2.0, 0.5])), eps=1e-12, gamma=1.0)
def test_thm41_gap_equals_derived_eps_slack(case, eps, gamma):
    """eps > 0: RHS - LHS = gamma^2 <g,yhat>^2 eps / (m sigma^4), the slack derived symbolically."""
    batch, grad = case
    lhs, rhs, tolerance, scale = _thm41_sides(batch, grad, gamma, eps)
    sigma, yhat = _sigma_and_yhat(batch, eps)
    predicted = gamma**2 * float(grad @ yhat) ** 2 * eps / (batch.shape[0] * sigma**4)
    assert_close(rhs - lhs, predicted, tolerance, scale, context="thm4.1 gap vs derived slack")


@pytest.mark.parametrize("size", [2, 3, 8, 32])
def test_thm41_bound_is_twice_the_gradient_norm_when_eps_equals_var_and_g_is_yhat(size):
    """Worked case of the slack: eps = var, g = yhat gives LHS = RHS / 2 (the bound is 2x loose)."""
    batch = np.linspace(-1.0, 1.0, size)
    eps = float(np.var(batch))
    _, yhat = _sigma_and_yhat(batch, eps)
    lhs, rhs, tolerance, scale = _thm41_sides(batch, yhat, 1.0, eps)
    assert_close(lhs / rhs, 0.5, tolerance, 1.0, context="measured / bound")


# --- the printed variant (c = 1/sqrt(m)) is false ---------------------------------------------------


@given(case=batches_with_grads(), gamma=gammas())
@example(case=(M2_BATCH, np.array([1.0, 0.0])), gamma=1.0)
def test_printed_thm41_is_violated_by_the_predicted_amount_at_zero_eps(case, gamma):
    """LHS - RHS_printed = (gamma^2/sigma^2) <g,yhat>^2 (1/sqrt(m) - 1/m) > 0 whenever <g,yhat> != 0."""
    batch, grad = case
    lhs, rhs, tolerance, scale = _thm41_sides(batch, grad, gamma, 0.0, claim_id="thm4.1-printed")
    sigma, yhat = _sigma_and_yhat(batch, 0.0)
    size = batch.shape[0]
    predicted = gamma**2 / sigma**2 * float(grad @ yhat) ** 2 * (1 / np.sqrt(size) - 1 / size)
    assert_close(lhs - rhs, predicted, tolerance, scale, context="printed thm4.1 violation vs prediction")


def _printed_violation_beyond_tolerance(case_and_gamma) -> bool:
    (batch, grad), gamma = case_and_gamma
    lhs, rhs, tolerance, scale = _thm41_sides(batch, grad, gamma, 0.0, claim_id="thm4.1-printed")
    return lhs - rhs > float(tolerance.allowed(scale))


def test_search_finds_a_numeric_violation_of_printed_thm41():
    """Hypothesis' `find`, over the same strategies as the soundness test, reaches LHS > RHS_printed."""
    (batch, grad), gamma = find(
        st.tuples(batches_with_grads(), gammas()),
        _printed_violation_beyond_tolerance,
        settings=settings(max_examples=500, database=None),
        random=random.Random(0),
    )
    lhs, rhs, _, _ = _thm41_sides(batch, grad, gamma, 0.0, claim_id="thm4.1-printed")
    assert lhs > rhs, f"y={batch}, g={grad}, gamma={gamma}: LHS={lhs}, RHS_printed={rhs}"


# --- assumptions ---------------------------------------------------------------------------------------


def _thm41_violation_with_negative_eps(case) -> bool:
    (batch, grad), fraction, gamma = case
    eps = -fraction * float(np.var(batch))  # var + eps = (1 - fraction) var > 0: sigma stays real
    lhs, rhs, tolerance, scale = _thm41_sides(batch, grad, gamma, eps)
    return lhs - rhs > float(tolerance.allowed(scale))


def test_search_finds_thm41_violation_when_eps_is_negative():
    """Drop eps >= 0 (keep var + eps > 0): the gap gamma^2 <g,yhat>^2 eps/(m sigma^4) turns negative and is found."""
    case = find(
        st.tuples(batches_with_grads(), st.floats(0.1, 0.9), gammas()),
        _thm41_violation_with_negative_eps,
        settings=settings(max_examples=500, database=None),
        random=random.Random(0),
    )
    (batch, grad), fraction, gamma = case
    lhs, rhs, _, _ = _thm41_sides(batch, grad, gamma, -fraction * float(np.var(batch)))
    assert lhs > rhs


def test_torch_refuses_a_single_value_channel_in_training_mode():
    """Drop m >= 2: with m = 1 the batch statistics are degenerate (var = 0, yhat = 0); torch rejects it.

    The exact tests (test_theory_batchnorm) show that for eps > 0 both sides of thm4.1 are then 0.
    """
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        _torch_batch_norm_forward(torch.ones(1, dtype=torch.float64), 1.0, 1e-5)
