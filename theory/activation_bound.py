"""thm4.1 and its analogues: the gradient norm in activation space, for any normaliser.

The analogue of thm4.1 is *derived*, not typed: with the derived closed form written as

    ||grad_y L-hat||^2 = (gamma^2 / sigma^2) B(eps),

the bound is (gamma^2/sigma^2) B(0): the eps-free reduction that the normaliser's invariances
(shift, scale) would give exactly. For BatchNorm this reproduces the paper's appendix statement
(checked: the residual against the typed statement simplifies to 0). The main text's variant with
1/sqrt(m) is typed as printed and applies to normalisers of the paper's form.

A normaliser without a closed form in batch moments (l1, l-inf) gets its own analogue on a smooth
piece (`piecewise`, `lp_bounds`); only when that fails too does `establish_concrete` check the paper's
typed form with that normaliser's own scale and yhat at concrete m (status `checked`, or `refuted` by a
violation with a positive right side; general_m false).
"""

from __future__ import annotations

import functools

import sympy as sp

from theory.batch_algebra import m
from theory.claims import ACTIVATION_ASSUMPTIONS, G1, G2, ClaimResult, Status, to_latex
from theory.counterexample import check_at_points, search_counterexample
from theory.derive import Derivation
from theory.normaliser import Normaliser, eps, g_hat, gamma, sigma
from theory.signs import is_nonnegative

LHS_LATEX = r"\|\nabla_{y_j}\hat{\mathcal{L}}\|^2"


def paper_bound(c: sp.Expr) -> sp.Expr:
    """(gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - c <g,yhat>^2), the paper's typed form."""
    return gamma**2 / sigma**2 * (G2 - G1**2 / m - c * g_hat**2)


APPENDIX_C = 1 / m  # Appendix C and the proof of Theorem 4.1
PRINTED_C = 1 / sp.sqrt(m)  # main text, Theorem 4.1 as printed


def _inside_prefactor(expr: sp.Expr) -> sp.Expr:
    """expr / (gamma^2/sigma^2), collected in <g,yhat>^2: the form in which the paper states thm4.1."""
    return sp.collect(sp.expand(expr * sigma**2 / gamma**2), g_hat**2)


def _scaled_latex(expr: sp.Expr) -> str:
    return r"\frac{\gamma^2}{\sigma^2}\left(" + to_latex(_inside_prefactor(expr)) + r"\right)"


def bound_expressions(derivation: Derivation) -> dict[str, sp.Expr]:
    """Claim id -> right side in (||g||^2, <1,g>, <g,yhat>, m, gamma, sigma); cheap (no proofs)."""
    lhs = derivation.in_sigma(derivation.grad_sq_norm)
    analogue = gamma**2 / sigma**2 * sp.simplify(_inside_prefactor(lhs).subs(eps, 0))
    bounds = {"thm4.1": sp.simplify(analogue)}
    if derivation.normaliser.paper_form:
        bounds["thm4.1-printed"] = paper_bound(PRINTED_C)
    return bounds


def _establish_one(claim_id: str, rhs: sp.Expr, derivation: Derivation, concrete, source: str,
                   statement_latex: str, note: str = "") -> ClaimResult:
    normaliser = derivation.normaliser
    lhs = derivation.in_sigma(derivation.grad_sq_norm)
    slack = sp.factor(sp.simplify(rhs - lhs))
    common = dict(
        claim=claim_id, normaliser=normaliser.name, general_m=True, statement_latex=statement_latex,
        source=source, assumptions=ACTIVATION_ASSUMPTIONS, derived_latex=f"{LHS_LATEX} = {_scaled_latex(lhs)}",
        slack_latex=r"\mathrm{RHS}-\mathrm{LHS} = " + to_latex(slack), concrete_m_checked=concrete[0],
    )
    if slack == 0:
        return ClaimResult(status=Status.PROVED, equality="identity: equality for every g and every eps",
                           measured_check="identity",
                           evidence="SymPy: RHS - LHS simplifies to 0 for symbolic m; " + concrete[1] + note,
                           **common)
    if is_nonnegative(slack):  # under m >= 2 (`signs`): an m/(m - 1) factor is decided too
        at_zero = sp.simplify(slack.subs(eps, 0)) == 0
        equality = ("equality at eps = 0 for every g (the Jacobian is then gamma/sigma times an orthogonal "
                    "projector); for eps > 0 equality iff <g, yhat> = 0" if at_zero else "")
        return ClaimResult(status=Status.PROVED, equality=equality, measured_check="identity" if at_zero else "bound",
                           evidence=(
            "SymPy: RHS - LHS factors into terms nonnegative under the assumptions (m >= 2), for symbolic m; "
            + concrete[1] + note), **common)
    found = search_counterexample(derivation, rhs.subs(sigma, normaliser.scale))
    if found is not None:
        return ClaimResult(status=Status.REFUTED, counterexample=found, measured_check="refuted", evidence=(
            f"exact counterexample at m = {found.m}, eps = {found.epsilon}: LHS = {found.lhs} > RHS = "
            f"{sp.nsimplify(found.rhs)} (LHS by the concrete-m Jacobian, not the closed form)"), **common)
    return ClaimResult(status=Status.CHECKED, evidence="no proof and no counterexample found; " + concrete[1],
                       measured_check="bound", **common)


# Results depend on the forward formula alone, not on the axis: shared by normalisers of one formula (`statements`).
RESULT_KEY = Normaliser.statement_key


def establish(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    """thm4.1 (derived analogue) for every normaliser; thm4.1-printed for those of the paper's form."""
    bounds = bound_expressions(derivation)
    results = {}
    if derivation.normaliser.paper_form:
        residual = sp.simplify(bounds["thm4.1"] - paper_bound(APPENDIX_C))
        note = ("; the derived bound equals the paper's appendix statement (residual "
                f"{sp.latex(residual)})")
        results["thm4.1"] = _establish_one(
            "thm4.1", paper_bound(APPENDIX_C), derivation, concrete,
            "Appendix C, Theorem 4.1 and its proof (c = 1/m)",
            rf"{LHS_LATEX} \le {_scaled_latex(paper_bound(APPENDIX_C))}", note if residual == 0 else
            f"; WARNING: the derived analogue differs from the paper's appendix statement by {residual}")
        results["thm4.1-printed"] = _establish_one(
            "thm4.1-printed", bounds["thm4.1-printed"], derivation, concrete,
            "Main text, Theorem 4.1 as printed (c = 1/sqrt(m))",
            rf"{LHS_LATEX} \le {_scaled_latex(bounds['thm4.1-printed'])}")
    else:
        results["thm4.1"] = _establish_one(
            "thm4.1", bounds["thm4.1"], derivation, concrete,
            "analogue of Theorem 4.1, derived: the closed form with eps = 0 inside the bracket",
            rf"{LHS_LATEX} \le {_scaled_latex(bounds['thm4.1'])}")
    return results


# Concrete-m fallback: sizes and eps values at which the typed form is checked exactly.
CONCRETE_SIZES = tuple(range(2, 7))
CONCRETE_EPSILONS = (sp.Integer(0), sp.Rational(1, 4))
DIFFERENTIABLE_ASSUMPTION = r"\text{the forward is differentiable at } y \text{ (no } |x| \text{ at } 0 \text{, no tied max)}"


@functools.cache  # weight_space_analogues.establish_concrete builds on the same check
def establish_concrete(normaliser: Normaliser, reason: str) -> dict[str, ClaimResult]:
    """thm4.1 for a normaliser without a symbolic-m closed form, checked exactly at concrete m.

    The statement is the paper's typed form (c = 1/m) with this normaliser's own scale as sigma
    and its own yhat; the left side comes from the concrete-m Jacobian. No proof is claimed, and only a
    violation with a positive right side refutes it. Used only for a normaliser that has no closed form
    on a smooth piece either (`piecewise`); l1 and l-inf get their own analogue (`lp_bounds`).
    """
    rhs = paper_bound(APPENDIX_C)
    # positive_rhs_only: this right side is BatchNorm's, not derived for this normaliser, and can be negative;
    # a nonnegative left side above a negative number would say nothing about the normaliser's gradient
    check = check_at_points(normaliser, rhs.subs(sigma, normaliser.scale), sizes=CONCRETE_SIZES,
                            epsilons=CONCRETE_EPSILONS, positive_rhs_only=True)
    common = dict(
        claim="thm4.1", normaliser=normaliser.name, general_m=False,
        statement_latex=rf"{LHS_LATEX} \le {_scaled_latex(rhs)}",
        source=("Theorem 4.1 as typed in Appendix C (c = 1/m), with this normaliser's own scale "
                rf"\sigma = {sp.latex(normaliser.scale)} and its own yhat; no symbolic-m closed form"),
        assumptions=ACTIVATION_ASSUMPTIONS + (DIFFERENTIABLE_ASSUMPTION,), concrete_m_checked=check.sizes,
        derived_latex=r"\text{no closed form for symbolic } m \text{ (see evidence)}",
        extra={"concrete_points_checked": check.points_checked, "concrete_points_skipped": check.points_skipped,
               "concrete_epsilons": [str(e) for e in check.epsilons], "max_lhs_over_rhs": check.max_ratio},
    )
    where = "LHS by the concrete-m Jacobian (statistics written out, differentiated exactly)"
    found = check.counterexample
    if found is not None:
        return {"thm4.1": ClaimResult(status=Status.REFUTED, counterexample=found, measured_check="refuted", evidence=(
            f"exact counterexample at m = {found.m}, eps = {found.epsilon}: LHS = {found.lhs} > RHS = "
            f"{sp.nsimplify(found.rhs)} ({where}); searched {check.describe()}"), **common)}
    return {"thm4.1": ClaimResult(status=Status.CHECKED, measured_check="bound", evidence=(
        f"no symbolic-m closed form ({reason}); holds exactly at every one of {check.describe()}; {where}"),
        **common)}
