"""thm4.4 analogues beyond BatchNorm: per-sample groups, weight-space groups, no closed form.

- per-sample normalisers (LayerNorm, RMSNorm, GroupNorm): the whole-matrix bound
  ||X^T V||_F^2 <= ||X||_2^2 ||V||_F^2 <= ||X||_2^2 sum_k RHS_4.1(g_k), sound in float64 over wide
  inputs and tight (X X^T = I and eps = 0);
- WeightNorm: ||J^T X^T delta||^2 <= RHS_4.1 with ||g||^2 -> ||X||_2^2 ||delta||^2, tight for rank-one
  X, and the minimax value c lambda^2 ||delta||^2 attained by X^T delta orthogonal to vhat;
- the concrete-m fallback (for a normaliser with no closed form even on a smooth piece), exercised on l1 and
  l-inf: BatchNorm's typed right side with their own sigma, refuted only by a violation where it is positive,
  the inherited counterexample (X = I) re-evaluated by a forward typed in the tests, exactly (their own
  analogues are in `test_theory_lp_analogues`);
- dropping assumptions: eps < 0 breaks the per-sample bound; d < m breaks the minimax equality.

The numeric sides come from the bridge (`theory.numeric`); V, J^T g and X^T V are formed here.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import example, given
from hypothesis import strategies as st

from tests.strategies import gammas, nonnegative_eps, spread_batches, upstream_grads
from tests.test_theory_normalisers import _typed_lp_forward
from tests.tolerances import (
    ROUNDING_CHAIN_FACTOR,
    UNIT_ROUNDOFF,
    Tolerance,
    assert_at_most,
    assert_close,
)
from theory import numeric, weight_space_analogues
from theory.claims import Status
from theory.derive import derive
from theory.normalisers import REGISTRY
from theory.weight_space import GroupLayout, group_layout

NO_CONCRETE = ((), "concrete-m evidence not computed in this test")
ROW_NAMES = tuple(sorted(n for n, v in REGISTRY.items() if group_layout(v) is GroupLayout.ROW))
CONCRETE_ONLY = ("lp1", "lpinf")


@pytest.fixture(scope="module")
def analogues() -> dict:
    """weight_space_analogues for the shipped per-sample and weight-space normalisers (a few s each, cold)."""
    names = (*ROW_NAMES, "weightnorm")
    return {name: weight_space_analogues.establish(derive(REGISTRY[name]), NO_CONCRETE) for name in names}


@pytest.fixture(scope="module")
def concrete_analogues() -> dict:
    return {name: weight_space_analogues.establish_concrete(REGISTRY[name], "no closed form") for name in CONCRETE_ONLY}


# --- statuses ---------------------------------------------------------------------------------------------


def test_per_sample_normalisers_get_a_proved_layer_bound_and_a_conditional_minimax(analogues):
    for name in ROW_NAMES:
        per_layer, minimax = analogues[name]["thm4.4-per-layer"], analogues[name]["thm4.4"]
        assert per_layer.status is Status.PROVED and per_layer.general_m, (name, per_layer.evidence)
        assert minimax.status is Status.CONDITIONAL and any("held fixed" in c for c in minimax.conditions), name
        assert "thm4.4-per-unit" not in analogues[name]  # a column of dL/dW meets every group: no per-unit bound


def test_weightnorm_gets_a_proved_per_unit_bound_and_a_minimax_without_reduction(analogues):
    per_unit, minimax = analogues["weightnorm"]["thm4.4-per-unit"], analogues["weightnorm"]["thm4.4"]
    assert per_unit.status is Status.PROVED, per_unit.evidence
    assert minimax.status is Status.CONDITIONAL, minimax.evidence
    witness = minimax.extra["minimax_witness"]
    parse = lambda text: sp.sympify(text.replace("lambda", "lam"))
    assert sp.simplify(parse(witness["lhs"]) - parse(witness["rhs"])) == 0 and parse(witness["lhs"]) != 0


def test_concrete_fallback_inherits_the_thm41_counterexample_with_a_positive_right_side(concrete_analogues):
    for name in CONCRETE_ONLY:
        for claim in ("thm4.4-per-unit", "thm4.4"):
            result = concrete_analogues[name][claim]
            assert result.status is Status.REFUTED and result.general_m is False, (name, claim, result.evidence)
            assert result.extra["x_identity_transfer"]["violated"] is True
            assert sp.Rational(result.extra["x_identity_transfer"]["rhs"]) > 0  # not a number below zero


# --- per-sample groups: float64 soundness and tightness ----------------------------------------------------


def _layer_tolerance(size: int, width: int, samples: int, kappa: float) -> Tolerance:
    """Budget relative to ||X||_2^2 sum_k gamma^2 ||g_k||^2 / sigma_k^2, as `tests/test_theory_weight_space`
    budgets one unit: per group m^2 u kappa for ||J^T g||^2 plus the bridge's one-pass variance m u kappa^2,
    X^T V and the LAPACK spectral norm ~(m + d + samples) u; errors of groups add, as their scales do."""
    return Tolerance(
        name="LAYER_WEIGHT_GRAD_FLOAT64",
        rtol=ROUNDING_CHAIN_FACTOR * (size * size * kappa + size * kappa**2 + size + width + samples) * UNIT_ROUNDOFF,
        reason=(f"float64: per group m^2 u kappa + m u kappa^2 (m={size}, worst kappa={kappa:.3g}; conservative for "
                f"RMSNorm, which does not centre), X^T V and ||X||_2 ~(m + d + samples) u (d={width}, "
                f"samples={samples}), times {ROUNDING_CHAIN_FACTOR:g}; scale ||X||_2^2 sum_k gamma^2||g_k||^2/sigma_k^2"),
    )


def _kappa(group: np.ndarray, eps_value: float) -> float:
    centred = group - group.mean()
    return max(1.0, float(np.max(np.abs(group)) / np.sqrt(np.mean(centred**2) + eps_value)))


@st.composite
def layers(draw):
    """(groups (k, m), grads (k, m), X (samples, d)): samples rows of y, each split into 1 or 2 groups of m."""
    size, samples, per_row = draw(st.integers(2, 8)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    groups = np.stack([draw(spread_batches(size, size)) for _ in range(samples * per_row)])
    grads = np.stack([draw(upstream_grads(size)) for _ in range(samples * per_row)])
    width = draw(st.integers(1, 4))
    entries = draw(st.lists(st.integers(-1000, 1000), min_size=samples * width, max_size=samples * width))
    X = 10.0 ** draw(st.floats(-2.0, 2.0)) * np.asarray(entries, dtype=np.float64).reshape(samples, width) / 1000.0
    return groups, grads, X, per_row


def _layer_sides(name, groups, grads, X, per_row, eps_value, gamma_value):
    """(||X^T V||_F^2, ||X||_2^2 ||V||_F^2, the bridge's ||X||_2^2 sum_k RHS_4.1(g_k), scale)."""
    rows = [numeric.jacobian(name, group, gamma_value, eps_value).T @ grad for group, grad in zip(groups, grads)]
    V = np.stack(rows).reshape(X.shape[0], per_row * groups.shape[1])  # (samples, units): groups laid along rows
    x_op_sq = np.linalg.norm(X, 2) ** 2
    sigmas, hats = zip(*(numeric.scale_and_hat(name, group, eps_value) for group in groups))
    sigma_values = np.array([s[0] for s in sigmas])
    bound = numeric.layer_weight_grad_bound(name)(
        x_op_sq, np.einsum("km,km->k", grads, grads), grads.sum(axis=1),
        np.einsum("km,km->k", grads, np.stack(hats)), groups.shape[1], gamma_value, sigma_values)
    scale = x_op_sq * gamma_value**2 * float(np.sum(np.einsum("km,km->k", grads, grads) / sigma_values**2))
    return float(np.sum((X.T @ V) ** 2)), float(x_op_sq * np.sum(V**2)), float(bound), scale


@pytest.mark.parametrize("name", ROW_NAMES)
@given(layer=layers(), eps_value=nonnegative_eps(), gamma_value=gammas())
@example(layer=(np.array([[0.0, 1.0]]), np.array([[1.0, -1.0]]), np.eye(1), 1), eps_value=0.0, gamma_value=1.0)
def test_layer_weight_gradient_obeys_the_whole_matrix_bound(name, layer, eps_value, gamma_value):
    groups, grads, X, per_row = layer
    lhs, middle, bound, scale = _layer_sides(name, groups, grads, X, per_row, eps_value, gamma_value)
    kappa = max(_kappa(group, eps_value) for group in groups)
    tolerance = _layer_tolerance(groups.shape[1], X.shape[1], X.shape[0], kappa)
    assert_at_most(lhs, middle, tolerance, scale, "||X^T V||_F^2 <= ||X||_2^2 ||V||_F^2")
    assert_at_most(middle, bound, tolerance, scale, "||X||_2^2 ||V||_F^2 <= ||X||_2^2 sum_k RHS_4.1")


@pytest.mark.parametrize("name", ROW_NAMES)
@given(layer=layers(), gamma_value=gammas(), extra=st.integers(0, 2))
def test_layer_bound_is_attained_when_x_has_orthonormal_rows_and_eps_is_zero(name, layer, gamma_value, extra):
    """X = [I_samples 0] (X X^T = I, ||X||_2 = 1, d >= samples) and eps = 0: both steps are equalities."""
    groups, grads, X, per_row = layer
    samples = X.shape[0]
    X = np.eye(samples, samples + extra)
    lhs, middle, bound, scale = _layer_sides(name, groups, grads, X, per_row, 0.0, gamma_value)
    tolerance = _layer_tolerance(groups.shape[1], X.shape[1], samples, max(_kappa(g, 0.0) for g in groups))
    assert_close(lhs, middle, tolerance, scale, "X X^T = I: ||X^T V||_F^2 = ||V||_F^2")
    assert_close(middle, bound, tolerance, scale, "thm4.1 is an identity at eps = 0 in every group")


# --- weight-space groups (WeightNorm) -------------------------------------------------------------------


def _weightnorm_sides(v, delta, X, gamma_value):
    """(||dL/dv||^2, the bridge's per-unit bound, (gamma^2/||v||^2)||X||_2^2||delta||^2, scale), g = X^T delta."""
    g = X.T @ delta
    grad_v = numeric.jacobian("weightnorm", v, gamma_value, 0.0).T @ g
    norm, vhat = numeric.scale_and_hat("weightnorm", v, 0.0)
    x_op_sq = np.linalg.norm(X, 2) ** 2
    bound = numeric.weight_grad_bound("weightnorm")(x_op_sq, delta @ delta, g.sum(), g @ vhat, len(v), gamma_value, norm[0])
    minimax = gamma_value**2 / norm[0] ** 2 * x_op_sq * (delta @ delta)
    return float(grad_v @ grad_v), float(bound), float(minimax), float(minimax)


def _weightnorm_tolerance(size: int, samples: int) -> Tolerance:
    return Tolerance(
        name="WEIGHTNORM_GRAD_FLOAT64",
        rtol=ROUNDING_CHAIN_FACTOR * (size * size + samples + size) * UNIT_ROUNDOFF,
        reason=(f"float64: ||v|| and vhat have no cancellation (kappa = 1), so ||J^T g||^2 ~ m^2 u (m={size}); "
                f"X^T delta and ||X||_2 ~(samples + d) u (samples={samples}), times {ROUNDING_CHAIN_FACTOR:g}; "
                "scale (gamma^2/||v||^2) ||X||_2^2 ||delta||^2"),
    )


@st.composite
def weight_layers(draw):
    """(v (d,), delta (samples,), X (samples, d))."""
    v = draw(spread_batches(2, 8))
    samples = draw(st.integers(1, 4))
    delta = draw(upstream_grads(samples))
    entries = draw(st.lists(st.integers(-1000, 1000), min_size=samples * len(v), max_size=samples * len(v)))
    X = 10.0 ** draw(st.floats(-2.0, 2.0)) * np.asarray(entries, dtype=np.float64).reshape(samples, len(v)) / 1000.0
    return v, delta, X


@given(layer=weight_layers(), gamma_value=gammas())
def test_weightnorm_weight_gradient_obeys_the_per_unit_and_minimax_bounds(layer, gamma_value):
    v, delta, X = layer
    lhs, bound, minimax, scale = _weightnorm_sides(v, delta, X, gamma_value)
    tolerance = _weightnorm_tolerance(len(v), len(delta))
    assert_at_most(lhs, bound, tolerance, scale, "||dL/dv||^2 <= RHS_4.1(||g||^2 -> ||X||_2^2 ||delta||^2)")
    assert_at_most(bound, minimax, tolerance, scale, "RHS <= c ||X||_2^2 ||delta||^2 (the minimax value at lambda = ||X||_2)")


@given(layer=weight_layers(), gamma_value=gammas(), data=st.data())
def test_weightnorm_bounds_are_attained_by_rank_one_x(layer, gamma_value, data):
    """X = delta u^T/||delta||: ||X||_2 = 1 and X^T delta = ||delta|| u, so the per-unit bound is an equality for
    every unit u; with u orthogonal to vhat the gradient reaches the minimax value c ||delta||^2."""
    v, delta, _ = layer
    if not np.any(delta):
        return  # delta = 0: both sides are 0
    raw = np.asarray(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=len(v), max_size=len(v))))
    vhat = v / np.linalg.norm(v)
    orthogonal = raw - (raw @ vhat) * vhat
    tolerance = _weightnorm_tolerance(len(v), len(delta))
    for u in (raw, orthogonal):
        if np.linalg.norm(u) < 1e-3:
            continue  # too close to 0 (or to vhat) to normalise without losing the digits the tolerance assumes
        X = np.outer(delta, u / np.linalg.norm(u)) / np.linalg.norm(delta)
        lhs, bound, minimax, scale = _weightnorm_sides(v, delta, X, gamma_value)
        assert_close(lhs, bound, tolerance, scale, "rank-one X: the per-unit bound is an identity")
        if u is orthogonal:
            assert_close(lhs, minimax, tolerance, scale, "X^T delta orthogonal to vhat attains c ||delta||^2")


# --- l1, l-inf: the inherited counterexample, exactly --------------------------------------------------------


@pytest.mark.parametrize("name", CONCRETE_ONLY)
def test_inherited_counterexample_violates_the_weight_statement_exactly(concrete_analogues, name):
    """X = I_m, ||X||_2 = 1: dL/dW_(.j) = I^T J^T g, by Matrix.jacobian of the l1 / l-inf forward typed in the tests."""
    result = concrete_analogues[name]["thm4.4-per-unit"]
    found = result.counterexample
    batch, grad = [sp.Rational(v) for v in found.y], [sp.Rational(v) for v in found.g]
    epsilon, gamma_value = sp.Rational(found.epsilon), sp.Rational(found.gamma)
    size = len(batch)
    z, xs = _typed_lp_forward(name, size, epsilon, gamma_value)
    X = sp.eye(size)
    grad_w = X.T * (z.jacobian(xs).subs(dict(zip(xs, batch))).T * sp.Matrix(grad))
    lhs = sp.nsimplify(sp.simplify(sum(e**2 for e in grad_w)))
    x_op_sq = max((X.T * X).eigenvals())
    deviations = [b - sum(batch) / size for b in batch]
    norm = (sum(abs(d) for d in deviations) / size if name == "lp1" else max(abs(d) for d in deviations)) + epsilon
    g_dot_yhat = sum(gv * d for gv, d in zip(grad, deviations)) / norm
    rhs = x_op_sq * gamma_value**2 / norm**2 * (sum(gv**2 for gv in grad) - sum(grad) ** 2 / size - g_dot_yhat**2 / size)
    assert lhs.is_Rational and rhs.is_Rational and rhs > 0
    assert lhs > rhs, f"not a counterexample: ||dL/dW||^2 = {lhs} <= ||X||_2^2 RHS = {rhs}"
    assert lhs == sp.Rational(result.extra["x_identity_transfer"]["lhs"])


# --- dropping assumptions ---------------------------------------------------------------------------------------


def test_search_finds_a_layer_bound_violation_when_eps_is_negative():
    """Drop eps >= 0 (keeping var + eps > 0): one sample (X = (1), ||X||_2 = 1), LayerNorm over its three units
    y = (-1, 0, 1), eps = -1/6; a search over small integer g finds ||V||_F^2 > sum_k RHS_4.1 exactly."""
    size, epsilon = 3, sp.Rational(-1, 6)
    ys = sp.symbols("u1:4", real=True)
    mean = sum(ys) / size
    var = sum((v - mean) ** 2 for v in ys) / size
    z = sp.Matrix([(v - mean) / sp.sqrt(var + epsilon) for v in ys])
    batch = dict(zip(ys, (-1, 0, 1)))
    jac = z.jacobian(ys).subs(batch).applyfunc(sp.nsimplify)
    sigma_sq = var.subs(batch) + epsilon
    yhat = [(b - 0) / sp.sqrt(sigma_sq) for b in (-1, 0, 1)]
    bound = numeric.layer_weight_grad_bound("layernorm")
    for entries in sorted(np.ndindex(5, 5, 5), key=lambda e: sum(abs(v - 2) for v in e)):
        grad = sp.Matrix([v - 2 for v in entries])
        V = (jac.T * grad).T  # one sample's row of dL/dy
        lhs = sp.nsimplify(sum(e**2 for e in sp.Matrix([[1]]).T * V))  # ||X^T V||_F^2, X = (1)
        g_yhat = sum(gv * h for gv, h in zip(grad, yhat))
        rhs = (sum(e**2 for e in grad) - sum(grad) ** 2 / size - g_yhat**2 / size) / sigma_sq
        if sp.simplify(lhs - rhs).is_positive:
            as_float = bound(1.0, np.array([float(sum(e**2 for e in grad))]), np.array([float(sum(grad))]),
                             np.array([float(g_yhat)]), size, 1.0, np.array([float(sp.sqrt(sigma_sq))]))
            assert float(lhs) > as_float  # the bridge's callable states the same (violated) bound
            return
    pytest.fail("no violation of the per-sample weight bound with eps = -1/6")


def test_minimax_equality_needs_d_at_least_m():
    """With d = 1 < m = 2 and V = I_2: every X (2 x 1) with ||X||_2 <= lambda has ||X^T V||_F^2 = ||X||^2 <= lambda^2,
    strictly below lambda^2 ||V||_F^2 = 2 lambda^2, so the maximum is not lambda^2 ||V||_F^2 (the bound still holds)."""
    lam, a, b = sp.symbols("lambda a b", positive=True)
    X = sp.Matrix([a, b])
    V = sp.eye(2)
    value = sp.expand(sum(e**2 for e in X.T * V))
    op_norm_sq = max((X.T * X).eigenvals())
    assert sp.simplify(value - op_norm_sq) == 0  # = ||X||_2^2 <= lambda^2 on the ball
    assert sp.simplify(lam**2 * sum(e**2 for e in V) - lam**2 - lam**2) == 0  # = 2 lambda^2
