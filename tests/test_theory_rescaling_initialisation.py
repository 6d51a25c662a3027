"""obs4.3 (BN can undo itself; the gradient reduction stays) and lem4.5 (refuted as printed; repaired).

Symbolic identities are tested as "the residual simplifies to 0", with exact rational spot checks by
routes written here. lem4.5's exact counterexamples (the reconstruction of the published one, the
project's own) are re-checked here in rational arithmetic by a BN loss typed in this file; the repaired
lemma is tested on random instances that satisfy its premise (soundness, and equality where it is tight).
The premise experiment is checked for determinism and for agreement with closed forms computed here.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from theory import initialisation, rescaled_optima, rescaling
from theory.initialisation_counterexamples import PUBLISHED_T, PUBLISHED_X
from theory.batch_algebra import m, mixed_sum
from theory.claims import Status
from theory.derive import derive
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.normalisers import BATCHNORM, REGISTRY

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)
NO_CONCRETE = ((), "concrete-m evidence not computed in this test")


@pytest.fixture(scope="module")
def derivation():
    return derive(BATCHNORM)


@pytest.fixture(scope="module")
def lemmas(derivation):
    """initialisation.establish for BatchNorm (~4 s: the premise experiment): lem4.5 and lem4.5-repaired."""
    return initialisation.establish(derivation, NO_CONCRETE)


@pytest.fixture(scope="module")
def lemma(lemmas):
    return lemmas["lem4.5"]


@pytest.fixture(scope="module")
def repaired(lemmas):
    return lemmas["lem4.5-repaired"]


# --- obs4.3 --------------------------------------------------------------------------------------------


def test_identity_configuration_is_gamma_sigma_beta_mu_and_reproduces_y_for_symbolic_m(derivation):
    from theory.normalisers.batchnorm import mu, var

    config = rescaling.identity_configuration(derivation)
    assert sp.simplify(config[gamma] - sp.sqrt(var + eps)) == 0 and config[rescaling.beta] == mu
    with_symbols, with_sums = rescaling.forward_residuals(derivation)
    assert with_symbols == 0 and with_sums == 0


@pytest.mark.parametrize("seed", range(4))
def test_identity_configuration_reproduces_y_at_exact_rational_batches(seed):
    """gamma = sqrt(var + eps), beta = mean, applied to a rational batch by a forward typed here."""
    rng = random.Random(seed)
    batch = [sp.Integer(rng.randint(-5, 5)) for _ in range(rng.randint(2, 6))]
    batch[0] += 11  # never constant
    mean = sum(batch) / len(batch)
    var_value = sum((v - mean) ** 2 for v in batch) / len(batch)
    scale = sp.Rational(sp.ceiling(4 * sp.sqrt(var_value)) + 1, 4)  # eps = scale^2 - var > 0, sigma rational
    epsilon = scale**2 - var_value
    z = [scale * (v - mean) / sp.sqrt(var_value + epsilon) + mean for v in batch]
    assert z == batch


def test_gradient_at_identity_configuration_falls_short_of_g_by_a_positive_definite_form(derivation):
    at_identity, reduction = rescaling.gradient_reduction(derivation)
    expected = G1**2 / m + (1 + eps / sigma**2) * g_hat**2 / m  # typed: <1,g>^2/m + (1 + eps/sigma^2)<g,yhat>^2/m
    assert sp.simplify(reduction - expected) == 0
    assert sp.simplify(at_identity - (G2 - expected)) == 0
    definite, coefficients = rescaling.reduction_is_positive_definite(reduction)
    assert definite, coefficients


def test_obs43_status_proved_for_batchnorm(derivation):
    result = rescaling.establish(derivation, NO_CONCRETE)["obs4.3"]
    assert result.status is Status.PROVED, result.evidence
    json.dumps(result.as_dict())


@pytest.mark.skipif("layernorm" not in REGISTRY, reason="no LayerNorm registered")
def test_obs43_is_conditional_for_a_feature_axis_normaliser():
    """LayerNorm has the paper's form, but gamma, beta are shared across its groups (samples)."""
    result = rescaling.establish(derive(REGISTRY["layernorm"]), NO_CONCRETE)["obs4.3"]
    assert result.status is Status.CONDITIONAL and result.conditions


def test_search_finds_bn_gradient_above_standard_at_identity_configuration_when_eps_is_negative():
    """Drop eps >= 0 (keep sigma^2 = var + eps > 0): the <g,yhat>^2 coefficient (1 + eps/sigma^2)/m turns
    negative once eps < -var/2, and a search over small integer g finds ||dL-hat/dy||^2 > ||g||^2 at
    gamma = sigma -- BN's gradient then exceeds the standard network's. Exact, by a Jacobian typed here."""
    batch, epsilon = [sp.Integer(-1), sp.Integer(0), sp.Integer(1)], sp.Rational(-1, 2)  # var = 2/3, sigma^2 = 1/6
    ys = sp.Matrix(sp.symbols("u1:4", real=True))
    mean = sum(ys) / 3
    scale = sp.sqrt(sum((v - mean) ** 2 for v in ys) / 3 + epsilon)
    z = sp.Matrix([scale.subs(dict(zip(ys, batch))) * (v - mean) / scale for v in ys])  # gamma = sigma of this batch
    jac = z.jacobian(ys).subs(dict(zip(ys, batch)))
    found = None
    for entries in sorted(np.ndindex(5, 5, 5), key=lambda e: sum(abs(v - 2) for v in e)):
        grad = sp.Matrix([v - 2 for v in entries])
        if sp.nsimplify(sp.expand(sum(v**2 for v in jac.T * grad))) > sum(v**2 for v in grad):
            found = list(grad)
            break
    assert found is not None, "no g with ||J^T g||^2 > ||g||^2 at eps = -1/2"


# --- lem4.5: the ray identity ------------------------------------------------------------------------------


def test_ray_distance_identity_residual_is_zero_for_symbolic_dimension():
    pieces = initialisation.ray_identity()
    a, b, s, c = initialisation.a, initialisation.b, initialisation.s, initialisation.c
    assert sp.expand(pieces["f"] - (a - 2 * b * c + c**2 * s)) == 0
    assert sp.simplify(pieces["minimiser"] - b / s) == 0
    assert pieces["curvature"].is_positive and pieces["minimiser_positive_if_b_positive"] is True
    assert pieces["residual"] == 0
    assert pieces["improvement_term_at_cone_projection"] == 0


@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-10, 10), min_size=n, max_size=n), st.lists(st.floats(-10, 10), min_size=n, max_size=n))))
def test_ray_distance_formula_matches_a_numeric_minimisation_over_c(vectors):
    w0, w_star = (np.asarray(v) for v in vectors)
    if w_star @ w_star < 1e-3 or w0 @ w_star <= 1e-3:
        return  # the lemma's hypothesis: W* != 0, <W0, W*> > 0
    numeric_min = minimize_scalar(lambda c: float(np.sum((w0 - c * w_star) ** 2)), bounds=(0.0, 1e3),
                                  method="bounded", options={"xatol": 1e-12}).fun
    closed = rescaled_optima.ray_distance_sq(w0[:, None], w_star[:, None])
    scale = float(w0 @ w0) + 1.0  # both sides are at most ||W0||^2; minimize_scalar's xatol sets the error
    assert abs(numeric_min - closed) <= 1e-8 * scale, (numeric_min, closed)


def test_search_finds_a_ray_bound_violation_when_the_inner_product_is_negative():
    """Drop <W0, W*> > 0: among small integer vectors a search finds W0 with <W0, W*> < 0, where
    inf_{c>0} ||W0 - c W*||^2 = ||W0||^2 (exactly: the distance increases along the ray) exceeds the bound."""
    rng = random.Random(0)
    found = None
    for _ in range(200):
        n = rng.randint(1, 4)
        w0 = [sp.Integer(rng.randint(-3, 3)) for _ in range(n)]
        w_star = [sp.Integer(rng.randint(-3, 3)) for _ in range(n)]
        inner, norm_sq = sum(p * q for p, q in zip(w0, w_star)), sum(q * q for q in w_star)
        if norm_sq == 0 or inner >= 0:
            continue
        distance_sq = sum((p - q) ** 2 for p, q in zip(w0, w_star))
        rhs = distance_sq - (norm_sq - inner) ** 2 / norm_sq
        infimum = sum(p * p for p in w0)  # ||W0 - c W*||^2 = ||W0||^2 - 2 c <W0,W*> + c^2 ||W*||^2 > ||W0||^2 for c > 0
        if infimum > rhs:
            found = (w0, w_star, infimum, rhs)
            break
    assert found is not None
    w0, w_star, infimum, rhs = found
    assert infimum - rhs == sum(p * q for p, q in zip(w0, w_star)) ** 2 / sum(q * q for q in w_star)


# --- lem4.5: the premise experiment -------------------------------------------------------------------------


def test_premise_experiment_is_deterministic():
    case = rescaled_optima.CASES[1]
    assert rescaled_optima.run_case(case) == rescaled_optima.run_case(case)


def test_lem45_repaired_is_conditional_and_the_premise_fails_exactly_without_biases(repaired):
    assert repaired.status is Status.CONDITIONAL, repaired.evidence
    assert repaired.conditions[0] == initialisation.PREMISE_LATEX
    rows = repaired.extra["premise_experiment"]
    assert len(rows) == len(rescaled_optima.CASES)
    for row in rows:
        assert row["trained_vs_closed_form_over_var"] < 1e-10, row
        assert row["closed_form_optimality_gap_over_var"] < 1e-10, row
        assert abs(row["slsqp_minus_closed_form_rel"]) < 1e-4, row  # ~sqrt(slack 1e-10): agreement
        if row["standard_bias"]:
            assert row["premise_holds"] and row["lemma_violations"] == 0, row
            assert abs(row["standard_loss"] - row["bn_loss"]) < 1e-10 * row["target_variance"]
        else:
            assert not row["premise_holds"] and row["lemma_violations"] > 0, row
            assert row["bn_loss"] < row["standard_loss"]
        if row["hidden"]:  # standard optima form a cone: the improvement term vanishes at the closest W*
            assert row["improvement_term_fraction_median"] < 1e-12, row
    json.dumps(repaired.as_dict())


def test_lem45_as_printed_is_refuted_by_the_published_reconstruction_and_the_projects_own(lemma):
    assert lemma.status is Status.REFUTED and lemma.measured_check == "refuted", lemma.evidence
    sources = [c["source"] for c in lemma.extra["counterexamples"]]
    assert sum("arXiv:2502.17913" in s for s in sources) == 2 and sum("this project" in s for s in sources) == 1
    assert "RECONSTRUCTION" in lemma.evidence and lemma.counterexample.W0 == lemma.counterexample.W_star
    json.dumps(lemma.as_dict())


def _bn_loss(X: sp.Matrix, t: sp.Matrix, w: sp.Matrix, gamma_value=1, beta_value=0) -> sp.Expr:
    """Mean squared error of gamma yhat(X w) + beta, eps = 0, typed here."""
    y = X * w
    centred = y - sp.ones(X.rows, 1) * sum(y) / X.rows
    yhat = centred / sp.sqrt(sum(v**2 for v in centred) / X.rows)
    return sum((gamma_value * h + beta_value - target) ** 2 for h, target in zip(yhat, t)) / X.rows


def test_published_reconstruction_matches_its_description_exactly():
    """3 points in R^2: BN loss (gamma = 1, beta = 0) stationary on the ray 3 w1 = 5 w2 and lowest there (w1 > 0),
    the standard optimum W* solves the normal equations, and the BN gradient at W* is not 0 -- all exact."""
    X, t = sp.Matrix(PUBLISHED_X), sp.Matrix(PUBLISHED_T)
    w1, w2, c = sp.symbols("w1 w2 c", positive=True)
    loss = _bn_loss(X, t, sp.Matrix([w1, w2]))
    on_ray = {w1: 5 * c, w2: 3 * c}
    assert all(sp.simplify(sp.diff(loss, v).subs(on_ray)) == 0 for v in (w1, w2))
    ray_loss = sp.simplify(loss.subs(on_ray))
    assert not ray_loss.has(c)  # the loss is constant along the ray (BN's scale invariance) ...
    assert sp.simplify(_bn_loss(X, t, sp.Matrix([-5, -3])) - ray_loss).is_positive  # ... and the opposite ray is worse
    (w_star,) = sp.linsolve((X.T * X, X.T * t), [w1, w2])
    w_star = sp.Matrix(w_star)
    gradient = [sp.simplify(sp.diff(loss, v).subs({w1: w_star[0], w2: w_star[1]})) for v in (w1, w2)]
    assert any(value != 0 for value in gradient), gradient
    assert sp.simplify(_bn_loss(X, t, w_star) - ray_loss) > 0  # W* is not a BN optimum


def test_lem45_counterexamples_violate_the_printed_lemma_exactly(lemma):
    """Each stored W0: ||W0 - What*||^2 > RHS in exact rationals, the optima recomputed here (normal equations;
    the BN optimum set is the line of the centred least-squares direction, its closest point a projection).
    X, t, W0 are stored as integers or float64 values (decimal strings that round-trip): read exactly."""
    exact = lambda text: sp.Rational(float(text))  # a float64 is a binary rational: no rounding
    for found in lemma.extra["counterexamples"]:
        X = sp.Matrix([[exact(v) for v in row] for row in found["X"]])
        t, w0 = sp.Matrix([exact(v) for v in found["t"]]), sp.Matrix([exact(v) for v in found["W0"]])
        w_star = (X.T * X).LUsolve(X.T * t)
        Xc, tc = X - sp.ones(X.rows, 1) * sp.ones(1, X.rows) * X / X.rows, t - sp.ones(X.rows, 1) * sum(t) / X.rows
        direction = (Xc.T * Xc).LUsolve(Xc.T * tc)
        dot = lambda p, q: (p.T * q)[0]
        w_bn = dot(w0, direction) / dot(direction, direction) * direction
        lhs = dot(w0 - w_bn, w0 - w_bn)
        rhs = dot(w0 - w_star, w0 - w_star) - (dot(w_star, w_star) - dot(w_star, w0)) ** 2 / dot(w_star, w_star)
        assert dot(w0, w_star) > 0 and lhs > rhs, (found["source"], lhs, rhs)
        assert lhs == sp.Rational(found["lhs"]) and rhs == sp.Rational(found["rhs"])


def test_own_counterexample_is_the_experiments_violation_in_exact_arithmetic(lemma):
    own = next(c for c in lemma.extra["counterexamples"] if "this project" in c["source"])
    assert own["float64_lhs_rhs"][0] == pytest.approx(float(sp.Rational(own["lhs"])), rel=1e-9)
    assert own["float64_lhs_rhs"][1] == pytest.approx(float(sp.Rational(own["rhs"])), rel=1e-9)
    assert own["W_star_parallel_to_bn_direction"] is False  # the premise fails: W* is not on the BN optimum line


def test_experiments_float_violation_recomputed_from_scratch():
    """The premise experiment's own W0 (float64), re-evaluated in NumPy: the least-squares optima recomputed here."""
    _, found = initialisation.premise_experiment()
    X, t = np.asarray(found.X), np.asarray(found.t)
    w0, w_star, w_bn = (np.asarray(v) for v in (found.W0, found.W_star, found.W_bn))
    assert w0 @ w_star > 0
    # W* is the standard (no bias) optimum; W_bn is on the BN optimum line (centred least squares)
    assert np.allclose(w_star, np.linalg.lstsq(X, t, rcond=None)[0], rtol=1e-10)
    centred = np.linalg.lstsq(X - X.mean(0), t - t.mean(), rcond=None)[0]
    assert np.allclose(w_bn, (w0 @ centred) / (centred @ centred) * centred, rtol=1e-10)
    lhs = float(np.sum((w0 - w_bn) ** 2))
    rhs = float(np.sum((w0 - w_star) ** 2) - (w_star @ w_star - w_star @ w0) ** 2 / (w_star @ w_star))
    assert lhs == pytest.approx(found.lhs, rel=1e-12) and rhs == pytest.approx(found.rhs, rel=1e-12)
    assert lhs > rhs * 1.01
    assert found.constrained_lhs == pytest.approx(lhs, rel=1e-4)  # SLSQP, started elsewhere, finds no closer optimum
    assert found.premise_gap_over_var > 1e-3  # W* itself is not a BN optimum


# --- lem4.5-repaired on instances that satisfy its premise ------------------------------------------------------


def _lemma_sides(w0, w_star, bn_optimum) -> tuple[float, float]:
    lhs = float(np.sum((w0 - bn_optimum) ** 2))
    return lhs, rescaled_optima.ray_distance_sq(w0[:, None], w_star[:, None])


@given(st.integers(0, 2**31 - 1), st.integers(3, 12), st.integers(1, 4))
def test_repaired_lemma_is_tight_for_one_layer_with_bias(seed, samples, features):
    """Premise holds (standard network with bias: its optimum W* = v_c spans the BN optimum line): equality."""
    rng = np.random.default_rng(seed)
    X, t = rng.normal(size=(samples, features)) + 1.0, rng.normal(size=samples)
    assume_full_rank = np.linalg.matrix_rank(X - X.mean(0)) == features
    if not assume_full_rank or samples <= features:
        return
    case = rescaled_optima.Case("one layer with bias", 0, True, samples=samples, features=features)
    w0 = rng.normal(size=(features, 1))
    w_star = rescaled_optima.closest_optimum(case, False, w0, X, t)
    if float(np.sum(w0 * w_star)) <= 1e-6 * float(np.sum(w_star**2)):
        return  # outside the hypothesis <W0, W*> > 0
    lhs, rhs = _lemma_sides(w0.ravel(), w_star.ravel(), rescaled_optima.closest_optimum(case, True, w0, X, t).ravel())
    scale = float(np.sum(w0**2)) + 1.0
    assert lhs == pytest.approx(rhs, abs=1e-9 * scale), (lhs, rhs)


@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(0, 4))
def test_repaired_lemma_holds_whenever_the_ray_lies_in_the_optimum_set(seed, dimension, extra_points):
    """Any BN optimum set S containing the ray {c W*}: its closest point is at most the ray distance away."""
    rng = np.random.default_rng(seed)
    w_star, w0 = rng.normal(size=dimension), rng.normal(size=dimension)
    if w0 @ w_star <= 1e-6 or w_star @ w_star < 1e-6:
        return
    candidates = [w0 @ w_star / (w_star @ w_star) * w_star] + list(rng.normal(size=(extra_points, dimension)) * 3)
    closest = min(candidates, key=lambda p: float(np.sum((w0 - p) ** 2)))
    lhs, rhs = _lemma_sides(w0, w_star, closest)
    assert lhs <= rhs + 1e-12 * (w0 @ w0 + 1.0)


@given(st.integers(0, 2**31 - 1))
def test_repaired_lemma_says_nothing_new_for_a_cone_of_standard_optima(seed):
    """Two linear layers with biases: the premise holds, the improvement term is 0 at the closest W*, and the
    bound reduces to ||W0 - What*||^2 <= ||W0 - W*||^2."""
    case = rescaled_optima.CASES[2]
    X, t = rescaled_optima.problem(case)
    w0 = np.random.default_rng(seed).normal(size=(case.features, case.hidden))
    w_star = rescaled_optima.closest_optimum(case, False, w0, X, t)
    lhs, rhs = _lemma_sides(w0.ravel(), w_star.ravel(), rescaled_optima.closest_optimum(case, True, w0, X, t).ravel())
    improvement = (np.sum(w_star**2) - np.sum(w_star * w0)) ** 2 / np.sum(w_star**2)
    scale = float(np.sum(w0**2)) + 1.0
    assert improvement <= 1e-10 * scale and lhs <= rhs + 1e-10 * scale


# --- wiring ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_establish_all_carries_the_rescaling_weight_space_and_initialisation_claims():
    """Through the shared entry point (cold: ~30 s; the disk cache makes later runs instant)."""
    from theory.statements import establish_all

    claims = establish_all(BATCHNORM)
    expected = {"obs4.3": Status.PROVED, "thm4.4-per-unit": Status.PROVED, "thm4.4": Status.CONDITIONAL,
                "thm4.4-printed": Status.REFUTED, "lem4.5": Status.REFUTED, "lem4.5-repaired": Status.CONDITIONAL}
    assert {claim: claims[claim].status for claim in expected} == expected
    json.dumps({claim: result.as_dict() for claim, result in claims.items()})
