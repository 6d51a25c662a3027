"""l1 and l-inf: their own thm4.1 analogue (an oblique projector) and the refuted thm4.1-type reduction.

Three routes, as everywhere: the piecewise closed forms lambdified by the bridge (`numeric.piecewise_callable`
on `numeric.piecewise_reductions`), torch autograd of the module's forward (`jacrev`), and numpy's SVD of that
Jacobian for ||P||_2. Exact re-checks use a forward typed here (Abs and Max written out by hand). Batches are
screened off the kinks (an entry at the mean, a tied maximum) where no Jacobian exists; the bound's scale is
(m + 2) gamma^2 ||g||^2 / sigma^2, since ||P||_2^2 <= m + 2 for both (sup at eps = 0: m/2 and m - 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from tests.strategies import gammas, spread_batches, spread_batches_with_grads_and_eps
from tests.tolerances import (
    assert_at_most,
    assert_close,
    centring_condition,
    oblique_grad_sq_norm_tolerance,
)
from theory import numeric
from theory.batch_algebra import m as m_symbol
from theory.claims import Status
from theory.normalisers import REGISTRY
from theory.statements import establish_all

LP = ("lp1", "lpinf")
KINK_GAP = 1e-6  # relative separation from a kink (entry at the mean, tied max) below which a batch is skipped
M3_BATCH = np.array([1.0, -0.75, -0.25])  # the family batch at m = 3 (off every kink)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def claims() -> dict:
    return {name: establish_all(REGISTRY[name]) for name in LP}


def _off_kinks(name: str, batch: np.ndarray) -> bool:
    """l1: no entry within KINK_GAP (relative) of the mean; l-inf: the largest deviation ahead of the next by that."""
    deviations = np.sort(np.abs(batch - batch.mean()))
    spread = deviations[-1]
    if not spread > 0:
        return False
    if name == "lp1":
        return bool(deviations[0] > KINK_GAP * spread)
    return bool(deviations[-1] - deviations[-2] > KINK_GAP * spread)


def _jacobian(name: str, batch, gamma_value: float, eps_value: float) -> np.ndarray:
    forward = numeric.torch_forward(name)
    x = torch.from_numpy(np.array(batch, dtype=np.float64))
    return torch.func.jacrev(lambda v: forward(v, (0,), eps_value, gamma_value, 0.0))(x).numpy()


def _evaluate(claim_id: str, name: str, reductions: dict) -> float:
    function = numeric.piecewise_callable(claim_id, name)
    return float(function(*[reductions[key] for key in function.reductions]))


def _sides(name, batch, grad, gamma_value, eps_value):
    """(||J^T g||^2 by autograd, closed form, own bound, reduction rhs, tolerance, scale)."""
    reductions = {**numeric.piecewise_reductions(name, batch, grad, eps_value), "gamma": gamma_value}
    direct = float(np.sum((_jacobian(name, batch, gamma_value, eps_value).T @ grad) ** 2))
    size = batch.shape[0]
    scale = (size + 2) * gamma_value**2 * float(grad @ grad) / reductions["sigma"] ** 2
    tolerance = oblique_grad_sq_norm_tolerance(size, centring_condition(batch, eps_value))
    return (direct, _evaluate("grad_sq_norm", name, reductions), _evaluate("thm4.1", name, reductions),
            _evaluate("thm4.1-reduction", name, reductions), tolerance, scale)


# --- statuses ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LP)
def test_own_analogue_is_proved_and_the_reduction_refuted_for_general_m(claims, name):
    own, reduction = claims[name]["thm4.1"], claims[name]["thm4.1-reduction"]
    assert own.status is Status.PROVED and own.general_m, own.evidence
    assert own.extra["projector_residuals_at_zero_eps"] == {k: "0" for k in ("P^2 - P", "P 1", "P^T 1", "P yhat", "P^T d")}
    assert reduction.status is Status.REFUTED and reduction.general_m, reduction.evidence
    assert reduction.extra["general_m_witness"]["holds_for_every_m_ge_3"] is True
    assert set(own.concrete_m_checked) == set(range(2, 9))  # the piecewise closed form vs the concrete Jacobian
    assert claims[name]["thm4.4-per-unit"].status is Status.PROVED


@pytest.mark.parametrize("name", LP)
def test_no_refuted_lp_record_rests_on_a_nonpositive_right_side(claims, name):
    """The refuted reduction's right side (gamma^2/sigma^2)||g - gbar 1||^2 is >= 0 everywhere and > 0 at its
    counterexample; the BatchNorm-RHS comparison is data, not a refuted record."""
    refuted = [r for r in claims[name].values() if r.status is Status.REFUTED]
    assert [r.claim for r in refuted] == ["thm4.1-reduction"]
    found = refuted[0].counterexample
    assert sp.Rational(found.as_dict()["rhs"]) > 0 and found.lhs > found.rhs


def test_batchnorm_rhs_is_a_candidate_for_l_inf_only(claims):
    """sup ||yhat||^2 <= m decides whether BatchNorm's right side can be negative: l1 m^2/2, l-inf 2 floor(m/2)."""
    l1 = claims["lp1"]["thm4.1-reduction"].extra["batchnorm_rhs_comparison"]
    linf = claims["lpinf"]["thm4.1-reduction"].extra["batchnorm_rhs_comparison"]
    assert l1["meaningful_candidate"] is False and sp.Rational(l1["negative_rhs_witness"]["rhs"]) < 0
    assert linf["meaningful_candidate"] is True
    found = linf["violation_with_positive_rhs"]
    assert sp.Rational(found["rhs"]) > 0 and sp.Rational(found["lhs"]) > sp.Rational(found["rhs"])


# --- three routes: closed form, autograd, SVD ------------------------------------------------------------------


@pytest.mark.parametrize("name", LP)
@given(case=spread_batches_with_grads_and_eps(min_size=2, max_size=12), gamma_value=gammas())
@example(case=(M3_BATCH, np.array([0.0, -1.0, 1.0]), 0.0), gamma_value=1.0)
def test_piecewise_closed_form_equals_autograd_and_the_own_bound_holds(name, case, gamma_value):
    batch, grad, eps_value = case
    assume(_off_kinks(name, batch))
    direct, closed, own, _, tolerance, scale = _sides(name, batch, grad, gamma_value, eps_value)
    assert_close(closed, direct, tolerance, scale, context=f"{name}: piecewise ||J^T g||^2 vs autograd")
    assert_at_most(direct, own, tolerance, scale, context=f"{name}: own thm4.1 analogue at eps={eps_value:g}")


@pytest.mark.parametrize("name", LP)
@given(batch=spread_batches(min_size=3, max_size=12), gamma_value=gammas(), eps_value=st.sampled_from((0.0, 1e-5, 0.5)))
@example(batch=M3_BATCH, gamma_value=1.0, eps_value=0.0)
def test_own_bound_is_tight_and_its_kappa_is_the_projector_norm(name, batch, gamma_value, eps_value):
    """g along J^T's top right-singular vector reaches the bound; kappa equals numpy's ||(sigma/gamma) J||_2^2."""
    assume(_off_kinks(name, batch))
    jac = _jacobian(name, batch, gamma_value, eps_value)
    grad = np.linalg.svd(jac.T)[2][0]
    direct, _, own, _, tolerance, scale = _sides(name, batch, grad, gamma_value, eps_value)
    assert_close(direct, own, tolerance, scale, context=f"{name}: own bound attained by the top singular vector")
    reductions = numeric.piecewise_reductions(name, batch, grad, eps_value)
    kappa = own / (gamma_value**2 / reductions["sigma"] ** 2 * (grad @ grad - grad.sum() ** 2 / batch.shape[0]))
    projector = jac * reductions["sigma"] / gamma_value
    assert_close(kappa, np.linalg.norm(projector, 2) ** 2, tolerance, batch.shape[0] + 2, context=f"{name}: kappa")


@pytest.mark.parametrize("name", LP)
@given(batch=spread_batches(min_size=3, max_size=10))
def test_kappa_never_exceeds_the_derived_supremum_and_the_vertex_family_approaches_it(claims, name, batch):
    assume(_off_kinks(name, batch))
    size = batch.shape[0]
    supremum = sp.sympify(claims[name]["thm4.1"].extra["sup_operator_norm_sq_at_zero_eps"]["formula"],
                          locals={"m": m_symbol})
    bound = float(supremum.subs(m_symbol, size))
    kappa = np.linalg.norm(_jacobian(name, batch, 1.0, 0.0) * numeric.scale_and_hat(name, batch, 0.0, (0,))[0][0], 2) ** 2
    assert kappa <= bound * (1 + 1e-9), (kappa, bound)


def _vertex_batch(name: str, size: int, delta: float) -> np.ndarray:
    """A batch near the vertex where kappa's supremum sits (typed from the argument in `supremum_at_zero_eps`),
    its entries made distinct by small deterministic perturbations (the first that leaves no kink)."""
    half = size // 2
    for step in (np.sqrt(5.0) - 1.0) / 2.0, np.sqrt(2.0) - 1.0, np.sqrt(3.0) - 1.0, np.pi - 3.0:
        wiggle = 1.0 + (np.arange(1, size + 1) * step) % 1.0
        if name == "lp1":  # floor(m/2) positive entries: one carries almost all, as the negative side does
            positive = [1.0] + [delta * w for w in wiggle[: half - 1]]
            negative = [-delta * w for w in wiggle[half - 1: size - 2]]
            batch = np.array(positive + [-(sum(positive) + sum(negative))] + negative)  # mean exactly 0
        else:  # half the entries near +1, half near -1, one near 0 if m is odd
            entries = [(1.0 - delta * w) * (1 if i < half else -1) for i, w in enumerate(wiggle[: 2 * half])]
            batch = np.array(entries + ([delta * wiggle[-1]] if size % 2 else []))
            batch = batch - batch.mean()
        if _off_kinks(name, batch):
            return batch
    raise AssertionError(f"no off-kink vertex batch for {name} at m = {size}")


@pytest.mark.parametrize("name", LP)
@pytest.mark.parametrize("size", range(3, 9))
def test_vertex_family_approaches_the_supremum(claims, name, size):
    supremum = sp.sympify(claims[name]["thm4.1"].extra["sup_operator_norm_sq_at_zero_eps"]["formula"],
                          locals={"m": m_symbol})
    bound = float(supremum.subs(m_symbol, size))
    batch = _vertex_batch(name, size, 1e-4)
    sigma = numeric.scale_and_hat(name, batch, 0.0, (0,))[0][0]
    kappa = np.linalg.norm(_jacobian(name, batch, 1.0, 0.0) * sigma, 2) ** 2
    assert bound * (1 - 1e-2) < kappa <= bound * (1 + 1e-9), (kappa, bound)
    assert claims[name]["thm4.1"].extra["sup_operator_norm_sq_at_zero_eps"]["by_m"][str(size)] == str(supremum.subs(
        m_symbol, size))


@pytest.mark.parametrize("name", LP)
def test_reduction_holds_at_m2_and_fails_for_every_m_from_3(name):
    """m = 2: one line orthogonal to 1, ||P||^2 = (1 - rho)^2 <= 1; m >= 3: the family's ||P||^2 > 1 (numpy)."""
    batch = np.array([0.3, -1.2])
    jac = _jacobian(name, batch, 1.0, 0.1)
    sigma = numeric.scale_and_hat(name, batch, 0.1, (0,))[0][0]
    assert np.linalg.norm(jac * sigma, 2) ** 2 <= 1.0
    for size in range(3, 13):
        family = np.array([1.0, -0.75] + [-0.25 / (size - 2)] * (size - 2))
        sigma = numeric.scale_and_hat(name, family, 0.0, (0,))[0][0]
        kappa = np.linalg.norm(_jacobian(name, family, 1.0, 0.0) * sigma, 2) ** 2
        expected = (size - 1) * (25 * size - 49) / (16 * size * (size - 2))  # the record's witness, typed here
        assert kappa > 1 and kappa == pytest.approx(expected, rel=1e-12), (size, kappa)


# --- exact re-checks: a forward typed here --------------------------------------------------------------------


def _typed_jacobian(name: str, batch: list, epsilon) -> sp.Matrix:
    xs = sp.symbols(f"x1:{len(batch) + 1}", real=True)
    mean = sum(xs) / len(xs)
    deviations = [x - mean for x in xs]
    norm = sum(sp.Abs(d) for d in deviations) / len(xs) if name == "lp1" else sp.Max(*[sp.Abs(d) for d in deviations])
    z = sp.Matrix([d / (norm + epsilon) for d in deviations])
    return z.jacobian(xs).subs(dict(zip(xs, batch))).applyfunc(sp.nsimplify)


def _centred_rhs(name: str, batch: list, grad: list, epsilon) -> sp.Expr:
    deviations = [b - sum(batch) / len(batch) for b in batch]
    norm = (sum(abs(d) for d in deviations) / len(batch) if name == "lp1" else max(abs(d) for d in deviations)) + epsilon
    return (sum(v**2 for v in grad) - sum(grad) ** 2 / len(grad)) / norm**2


@pytest.mark.parametrize("name", LP)
def test_reduction_counterexamples_violate_it_exactly(claims, name):
    record = claims[name]["thm4.1-reduction"]
    found = record.counterexample
    rows = [(list(found.y), list(found.g), found.epsilon, str(found.lhs))]
    rows += [(r["y"], r["g"], 0, r["lhs"]) for r in record.extra["family_counterexamples"]]
    assert [r["m"] for r in record.extra["family_counterexamples"]] == list(range(3, 9))
    for batch, grad, epsilon, stored in rows:
        batch, grad = [sp.Rational(v) for v in batch], [sp.Rational(v) for v in grad]
        lhs = sp.expand(sum(v**2 for v in _typed_jacobian(name, batch, sp.Rational(epsilon)).T * sp.Matrix(grad)))
        rhs = _centred_rhs(name, batch, grad, sp.Rational(epsilon))
        assert lhs.is_Rational and lhs == sp.Rational(stored) and rhs > 0 and lhs > rhs, (batch, grad, lhs, rhs)


@pytest.mark.parametrize("name", LP)
def test_family_counterexamples_sit_exactly_within_the_own_bound(claims, name):
    for row in claims[name]["thm4.1-reduction"].extra["family_counterexamples"]:
        assert row["within_own_bound"] and 0.999 <= row["lhs_over_own_rhs"] <= 1.0, row


def test_l1_batchnorm_rhs_is_negative_at_its_witness_exactly(claims):
    witness = claims["lp1"]["thm4.1-reduction"].extra["batchnorm_rhs_comparison"]["negative_rhs_witness"]
    batch = [sp.Rational(v) for v in witness["y"]]
    deviations = [b - sum(batch) / len(batch) for b in batch]
    mad = sum(abs(d) for d in deviations) / len(batch)
    yhat = [d / mad for d in deviations]
    value = sum(h**2 for h in yhat)  # g = yhat: <1,g> = 0, ||g||^2 = <g,yhat> = ||yhat||^2
    rhs = (value - value**2 / len(batch)) / mad**2
    assert rhs < 0 and rhs == sp.Rational(witness["rhs"])
