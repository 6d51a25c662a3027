"""BatchNorm theory, exactly: the derived objects against the paper, for symbolic and concrete m.

Symbolic identities are tested as "the difference simplifies to 0" (never against a printed form),
with exact rational spot checks beside them. Counterexamples are re-evaluated here by a route
written in this file (SymPy's Matrix.jacobian of the forward formula typed in below, then exact
rational arithmetic), so a wrong search or a wrong closed form in `theory` cannot vouch for itself.
"""

from __future__ import annotations

import random

import pytest
import sympy as sp

from theory.batch_algebra import g, k, l, m, mixed_sum, y
from theory.concrete import agreement_at_points, concrete_jacobian
from theory.counterexample import search_counterexample
from theory.derive import derive
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.normalisers import BATCHNORM
from theory.normalisers.batchnorm import mu, var
from theory.statements import CONCRETE_SIZES, Status, establish_all

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)  # <1, g>, ||g||^2


def _paper_bound(c: sp.Expr) -> sp.Expr:
    """thm4.1 as the paper types it: (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - c <g,yhat>^2).

    Typed here, not imported, so these tests check the paper's statement and not a restatement.
    """
    return gamma**2 / sigma**2 * (G2 - G1**2 / m - c * g_hat**2)


BOUNDS = {"thm4.1": _paper_bound(1 / m), "thm4.1-printed": _paper_bound(1 / sp.sqrt(m))}  # appendix; main text


@pytest.fixture(scope="module")
def derivation():
    return derive(BATCHNORM)


@pytest.fixture(scope="module")
def claims():
    """establish_all(BATCHNORM) once per module (~12 s: the concrete-m evidence and the search)."""
    return establish_all(BATCHNORM)


def _paper_jacobian_entry() -> sp.Expr:
    """Fact C.1: dz_l/dy_k = (gamma/sigma)(delta_lk - 1/m - yhat_l yhat_k / m), sigma = sqrt(var + eps)."""
    scale = sp.sqrt(var + eps)
    yhat_k, yhat_l = (y[k] - mu) / scale, (y[l] - mu) / scale
    return gamma / scale * (sp.KroneckerDelta(k, l) - 1 / m - yhat_l * yhat_k / m)


def _thm41_grad_sq_norm_with_slack() -> sp.Expr:
    """(gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - <g,yhat>^2/m) - gamma^2 <g,yhat>^2 eps / (m sigma^4)."""
    return gamma**2 / sigma**2 * (G2 - G1**2 / m - g_hat**2 / m) - gamma**2 * g_hat**2 * eps / (m * sigma**4)


def _rational_point(seed: int) -> dict:
    rng = random.Random(seed)
    fraction = lambda: sp.Rational(rng.randint(-9, 9), rng.randint(1, 5))
    return {y[k]: fraction(), y[l]: fraction(), mu: fraction(), var: sp.Rational(rng.randint(1, 9), rng.randint(1, 4)),
            eps: sp.Rational(rng.randint(0, 3), 7), gamma: fraction()}


# --- Fact C.1: the Jacobian and the backward map -------------------------------------------------


def test_batchnorm_jacobian_equals_scaled_projector_formula_for_symbolic_m(derivation):
    residual = sp.simplify(derivation.jacobian - _paper_jacobian_entry())
    assert residual == 0, f"derived Jacobian minus (gamma/sigma)(I - 11^T/m - yhat yhat^T/m) = {residual}"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("size", "row", "column"), [(5, 2, 2), (5, 2, 3), (2, 1, 2), (9, 9, 9)])
def test_batchnorm_jacobian_matches_fact_c1_at_exact_rational_points(derivation, seed, size, row, column):
    """Spot check beside the symbolic residual: both sides evaluated at rationals, KroneckerDelta resolved."""
    point = {**_rational_point(seed), m: size, l: row, k: column}
    derived = derivation.jacobian.subs(point)
    paper = _paper_jacobian_entry().subs(point)
    assert sp.simplify(derived - paper) == 0, f"at {point}: derived {derived} vs Fact C.1 {paper}"


def test_batchnorm_backward_map_equals_fact_c1_for_symbolic_m(derivation):
    """(J^T g)_k = (gamma/(m sigma)) (m g_k - <1,g> - yhat_k <g,yhat>)."""
    scale = sp.sqrt(var + eps)
    paper = gamma / (m * scale) * (m * g[k] - G1 - (y[k] - mu) / scale * g_hat)
    residual = sp.simplify(derivation.backward - paper)
    assert residual == 0, f"derived backward map minus Fact C.1 = {residual}"


# --- thm4.1: the closed form, its slack, and where it is tight --------------------------------------


def test_batchnorm_grad_sq_norm_is_thm41_rhs_minus_eps_slack_for_symbolic_m(derivation):
    """||J^T g||^2 = (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - <g,yhat>^2/m) - gamma^2 <g,yhat>^2 eps/(m sigma^4)."""
    residual = sp.simplify(derivation.in_sigma(derivation.grad_sq_norm) - _thm41_grad_sq_norm_with_slack())
    assert residual == 0, f"closed form minus expected = {residual}"


def test_thm41_slack_is_nonnegative_for_symbolic_m(derivation):
    slack = sp.simplify(BOUNDS["thm4.1"] - derivation.in_sigma(derivation.grad_sq_norm))
    assert slack.is_nonnegative is True, f"RHS - LHS = {slack} is not shown nonnegative under the assumptions"


def test_batchnorm_grad_identity_is_exact_at_zero_eps(derivation):
    """At eps = 0 thm4.1 (c = 1/m) is an identity: the slack simplifies to exactly 0 for every g."""
    slack = BOUNDS["thm4.1"] - derivation.in_sigma(derivation.grad_sq_norm)
    assert sp.simplify(slack.subs(eps, 0)) == 0


def test_printed_thm41_fails_by_exactly_the_missing_yhat_term_at_zero_eps(derivation):
    """At eps = 0, RHS_printed - LHS = -(gamma^2/sigma^2) <g,yhat>^2 (1/sqrt(m) - 1/m): < 0 whenever m >= 2, <g,yhat> != 0."""
    slack = BOUNDS["thm4.1-printed"] - derivation.in_sigma(derivation.grad_sq_norm)
    expected = -gamma**2 / sigma**2 * g_hat**2 * (1 / sp.sqrt(m) - 1 / m)
    assert sp.simplify(slack.subs(eps, 0) - expected) == 0
    for size in (2, 3, 4, 16, 64):
        assert (1 / sp.sqrt(size) - sp.Rational(1, size)).is_positive


# --- statuses established by the shared code ----------------------------------------------------


def test_establish_all_proves_thm41_for_general_m(claims):
    result = claims["thm4.1"]
    assert result.status is Status.PROVED, result.evidence
    assert result.general_m is True
    assert result.counterexample is None
    assert result.concrete_m_checked == CONCRETE_SIZES


def test_establish_all_refutes_printed_thm41_with_a_counterexample(claims):
    result = claims["thm4.1-printed"]
    assert result.status is Status.REFUTED, result.evidence
    assert result.counterexample is not None
    assert result.counterexample.m >= 2


def test_establish_all_proves_fact_c1(claims):
    result = claims["factC.1"]
    assert result.status is Status.PROVED, result.evidence
    assert result.general_m is True


# --- the stored counterexample, re-evaluated independently ----------------------------------------


def _exact_sides(batch, grad, epsilon, gamma_value):
    """Exact (LHS * sigma^2/gamma^2, ||g||^2 - <1,g>^2/m, <g,yhat>^2, LHS) by a route written here.

    LHS = ||J^T g||^2 with J = Matrix.jacobian of z_i = gamma (y_i - mean)/sqrt(mean((y - mean)^2) + eps)
    typed in below (not `theory.concrete`), evaluated at the rational point. Every returned quantity
    is rational: J^T g depends on sigma only through sigma^2 once multiplied out.
    """
    size = len(batch)
    ys = sp.Matrix(sp.symbols(f"x1:{size + 1}", real=True))
    mean = sum(ys) / size
    scale = sp.sqrt(sum((v - mean) ** 2 for v in ys) / size + epsilon)
    z = sp.Matrix([gamma_value * (v - mean) / scale for v in ys])
    point = dict(zip(ys, batch))
    jac = z.jacobian(ys).subs(point)
    grad_vec = sp.Matrix(grad)
    lhs = sp.nsimplify(sp.simplify(sum(v**2 for v in jac.T * grad_vec)))
    centred = [v - sum(batch) / size for v in batch]
    sigma_sq = sum(c**2 for c in centred) / size + epsilon
    g_sum = sum(grad)
    g_yhat_sq = sum(gv * c for gv, c in zip(grad, centred)) ** 2 / sigma_sq
    bracket = sum(gv**2 for gv in grad) - g_sum**2 / size
    return lhs * sigma_sq / gamma_value**2, bracket, g_yhat_sq, lhs, sigma_sq


def _printed_rhs_exceeded(lhs_scaled, bracket, g_yhat_sq, size) -> bool:
    """LHS > RHS_printed, decided in rational arithmetic: lhs_scaled > bracket - g_yhat_sq / sqrt(m).

    <=> g_yhat_sq / sqrt(m) > bracket - lhs_scaled =: d. If d < 0 it holds (left side >= 0);
    otherwise both sides are >= 0 and it holds iff g_yhat_sq^2 / m > d^2.
    """
    d = bracket - lhs_scaled
    if d < 0:
        return True
    return g_yhat_sq**2 / size > d**2


def test_stored_counterexample_violates_printed_thm41_in_exact_arithmetic(claims):
    found = claims["thm4.1-printed"].counterexample
    batch, grad = [sp.Rational(v) for v in found.y], [sp.Rational(v) for v in found.g]
    epsilon, gamma_value = sp.Rational(found.epsilon), sp.Rational(found.gamma)
    assert all(v.is_Rational for v in (*batch, *grad, epsilon, gamma_value)) and gamma_value != 0
    lhs_scaled, bracket, g_yhat_sq, lhs, sigma_sq = _exact_sides(batch, grad, epsilon, gamma_value)
    assert lhs.is_Rational, f"LHS {lhs} should be rational at a rational point"
    assert _printed_rhs_exceeded(lhs_scaled, bracket, g_yhat_sq, len(batch)), (
        f"not a counterexample: LHS = {lhs}, RHS_printed = {gamma_value**2 / sigma_sq} * "
        f"({bracket} - {g_yhat_sq}/sqrt({len(batch)}))")
    # the stored sides agree with the independent ones
    assert lhs == found.lhs
    printed_rhs = gamma_value**2 / sigma_sq * (bracket - g_yhat_sq / sp.sqrt(len(batch)))
    assert sp.simplify(printed_rhs - found.rhs) == 0


def test_stored_counterexample_satisfies_thm41_with_c_one_over_m(claims):
    """The same point obeys the appendix statement (c = 1/m), with equality when eps = 0."""
    found = claims["thm4.1-printed"].counterexample
    batch, grad = [sp.Rational(v) for v in found.y], [sp.Rational(v) for v in found.g]
    epsilon, gamma_value = sp.Rational(found.epsilon), sp.Rational(found.gamma)
    lhs_scaled, bracket, g_yhat_sq, lhs, sigma_sq = _exact_sides(batch, grad, epsilon, gamma_value)
    rhs = gamma_value**2 / sigma_sq * (bracket - g_yhat_sq / len(batch))
    assert rhs.is_Rational and lhs <= rhs, f"LHS = {lhs} > RHS_thm4.1 = {rhs}"
    if epsilon == 0:
        assert lhs == rhs


# --- the concrete-m route agrees with the symbolic-m one --------------------------------------------


@pytest.mark.parametrize("size", CONCRETE_SIZES)
def test_concrete_m_route_agrees_with_symbolic_m_at_every_exact_point(derivation, size):
    row = agreement_at_points(derivation, size)
    assert row["points"] > 0
    assert row["jacobian_agree"] == row["points"], row
    assert row["grad_sq_norm_agree"] == row["points"], row


# --- assumptions: what dropping each one does -------------------------------------------------------


def test_thm41_slack_is_negative_for_negative_eps_when_g_has_a_yhat_component(derivation):
    """Drop eps >= 0 (keep sigma^2 = var + eps > 0): the slack gamma^2 <g,yhat>^2 eps/(m sigma^4) turns negative."""
    slack = sp.simplify(BOUNDS["thm4.1"] - derivation.in_sigma(derivation.grad_sq_norm))
    delta = sp.Symbol("delta", positive=True)
    g_hat_nonzero = sp.Symbol("G_hat_nz", real=True, nonzero=True)
    gamma_nonzero = sp.Symbol("gamma_nz", real=True, nonzero=True)
    negative = slack.subs({eps: -delta, g_hat: g_hat_nonzero, gamma: gamma_nonzero})
    assert negative.is_negative is True, f"slack at eps = -delta: {negative}"


def test_counterexample_search_refutes_thm41_when_eps_is_negative(derivation):
    """The exact search, given eps = -1/8 at m = 2 (every candidate has var >= 1/4, so sigma^2 >= 1/8 > 0), finds a violation."""
    rhs = BOUNDS["thm4.1"].subs(sigma, BATCHNORM.scale)
    found = search_counterexample(derivation, rhs, sizes=(2,), epsilon=sp.Rational(-1, 8))
    assert found is not None, "no counterexample to thm4.1 with eps = -1/8"
    batch, grad = [sp.Rational(v) for v in found.y], [sp.Rational(v) for v in found.g]
    _, bracket, g_yhat_sq, lhs, sigma_sq = _exact_sides(batch, grad, found.epsilon, sp.Rational(found.gamma))
    assert sigma_sq > 0
    rhs_exact = sp.Rational(found.gamma) ** 2 / sigma_sq * (bracket - g_yhat_sq / len(batch))
    assert lhs > rhs_exact, f"re-evaluated: LHS = {lhs}, RHS = {rhs_exact}"


def test_search_finds_no_thm41_violation_for_positive_eps(derivation):
    """Control for the test above: the same search with eps = +1/8 finds nothing (the bound is sound there)."""
    rhs = BOUNDS["thm4.1"].subs(sigma, BATCHNORM.scale)
    assert search_counterexample(derivation, rhs, sizes=(2,), epsilon=sp.Rational(1, 8)) is None


def test_single_sample_batch_has_zero_jacobian_so_both_thm41_variants_hold_trivially():
    """Drop m >= 2: at m = 1 no counterexample appears -- the assumption is not needed for soundness.

    With one value, y_1 - mean = 0 identically, so z_1 = beta for every y_1 and every eps > 0: the
    Jacobian is the 1x1 zero matrix, ||J^T g||^2 = 0, and the right side is (gamma^2/eps)(g^2 - g^2
    - c * 0) = 0 for any c. So thm4.1 holds with equality, and the printed statement holds as well,
    because 1/sqrt(1) = 1/1: m >= 2 is exactly what makes the printed coefficient differ and fail.
    At eps = 0 the statement is undefined (sigma = 0, yhat = 0/0); the numeric tests show torch
    refuses a one-value channel in training mode.
    """
    x = sp.Symbol("x1", real=True)
    positive_eps = sp.Symbol("e", positive=True)
    z = gamma * (x - x) / sp.sqrt((x - x) ** 2 + positive_eps)
    assert sp.Matrix([z]).jacobian([x]) == sp.zeros(1, 1)
    assert concrete_jacobian(BATCHNORM, 1).subs(eps, positive_eps) == sp.zeros(1, 1)  # theory's own route agrees
    g1 = sp.Symbol("g1", real=True)
    at_one = {m: 1, G1: g1, G2: g1**2, g_hat: 0, sigma: sp.sqrt(positive_eps)}
    for claim_id in ("thm4.1", "thm4.1-printed"):
        assert sp.simplify(BOUNDS[claim_id].subs(at_one)) == 0, claim_id
    assert sp.simplify((BOUNDS["thm4.1"] - BOUNDS["thm4.1-printed"]).subs(m, 1)) == 0
