"""thm4.1 for the l_p normalisers (l1, l-inf): their own analogue, proved, and a thm4.1-type reduction, refuted.

Both records are derived from the normaliser's Jacobian on one smooth piece (`piecewise`, `oblique_projector`):

- thm4.1 (own analogue, proved for symbolic m):
      ||grad_y L-hat||^2 = (gamma^2/sigma^2) ||P^T (g - gbar 1)||^2 <= (gamma^2/sigma^2) kappa ||g - gbar 1||^2,
  kappa = ||P||_2^2 in closed form; tight (g - gbar 1 along P^T's top right-singular vector).
- thm4.1-reduction: ||grad_y L-hat||^2 <= (gamma^2/sigma^2) ||g - gbar 1||^2, the weakest statement of thm4.1's
  kind (the normaliser does not enlarge the centred gradient). Its right side is >= 0 for every input, so it
  is a meaningful candidate; it holds iff kappa <= 1, and is refuted for every m >= 3 by a batch family with
  kappa > 1 (SymPy, symbolic m), with exact (y, g) counterexamples at m = 3..8 and the simplest integer one.

BatchNorm's right side with this normaliser's sigma and yhat plugged in is not such a candidate in general:
it is negative somewhere iff sup ||yhat||^2 > m (l1: m^2/2). It is kept as data (`batchnorm_rhs_comparison`).
The weight-space records carry the own analogue to dL-hat/dW = X^T dL-hat/dy (batch-axis groups only).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np
import sympy as sp

from theory.activation_bound import APPENDIX_C, LHS_LATEX, paper_bound
from theory.batch_algebra import BatchMax, g, mixed_sum, y
from theory.batch_algebra import m as _m
from theory.claims import ACTIVATION_ASSUMPTIONS, ClaimResult, Status, to_latex
from theory.concrete import concrete_jacobian_at
from theory.counterexample import _exceeds, check_at_points
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.oblique_projector import bound_expression, projector_pieces, supremum_at_zero_eps
from theory.piecewise import PiecewiseDerivation, invariants_at, s_active, s_bar, yhat_sq
from theory.weight_space import (
    MINIMAX_CONDITIONS,
    GroupLayout,
    group_layout,
    spectral_ball_maximum_attained,
    unit_gradient_identity,
)

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)
FAMILY_DELTA = sp.Rational(1, 4)
FAMILY_SIZES = tuple(range(3, 9))
_n = sp.Symbol("n", integer=True, nonnegative=True)  # m = n + 3: every batch size the refutation covers
CENTRED_LATEX = r"\left(\|g\|^2 - \frac{\langle\mathbf{1},g\rangle^2}{m}\right)"
REDUCTION_LATEX = rf"{LHS_LATEX} \le \frac{{\gamma^2}}{{\sigma^2}}{CENTRED_LATEX}"


def family_groups(size) -> list[tuple[sp.Expr, sp.Expr]]:
    """(value, multiplicity): y = (1, -(1 - delta), -delta/(m - 2) [m - 2 times]); mean 0, three values, m >= 3."""
    return [(sp.Integer(1), 1), (-(1 - FAMILY_DELTA), 1), (-FAMILY_DELTA / (size - 2), size - 2)]


def family_batch(size: int) -> list[sp.Rational]:
    return [value for value, count in family_groups(size) for _ in range(int(count))]


def _grouped_statistics(derivation: PiecewiseDerivation, groups, size) -> dict:
    """The statistics at eps = 0 of a batch given as groups of equal values with symbolic multiplicities (exact)."""
    values: dict = {}
    for symbol, definition in derivation.normaliser.statistics:
        replace = {}
        for total in definition.atoms(sp.Sum, BatchMax):
            ((index, _, _),) = total.limits
            terms = [total.function.subs(y[index], v).xreplace(values) for v, _ in groups]
            replace[total] = (sp.Add(*[c * t for (_, c), t in zip(groups, terms)]) if isinstance(total, sp.Sum)
                              else sp.Max(*terms))
        values[symbol] = sp.simplify(definition.xreplace(replace).subs({_m: size, eps: 0}).xreplace(values))
    return values


@functools.cache
def general_m_witness(derivation: PiecewiseDerivation) -> dict:
    """kappa (eps = 0) on the batch family for symbolic m = n + 3, and whether kappa - 1 > 0 for every n >= 0."""
    size = _n + 3
    groups = family_groups(size)
    stats = _grouped_statistics(derivation, groups, size)
    centre = derivation.centre.xreplace(stats)
    hats = [sp.simplify(derivation.normaliser.hat(v).subs({_m: size, eps: 0}).xreplace(stats)) for v, _ in groups]
    signs = [sp.sign(sp.simplify(v - centre)) for v, _ in groups]
    deviations = [sp.Abs(v - centre) for v, _ in groups]
    unique_top = all(sp.simplify(deviations[0] - other).is_positive for other in deviations[1:])
    invariants = {yhat_sq: sp.Add(*[c * h**2 for (_, c), h in zip(groups, hats)]), _m: size,
                  s_bar: sp.Add(*[c * s for (_, c), s in zip(groups, signs)]) / size, s_active: signs[0]}
    kappa = sp.factor(sp.simplify(projector_pieces(derivation)["kappa_at_zero_eps"].xreplace(invariants)))
    excess = sp.factor(kappa - 1)
    defined = all(s.is_nonzero for s in signs) and (derivation.kind != "active sample" or unique_top)
    return {"batch": "y = (1, -(1 - delta), -delta/(m - 2) repeated m - 2 times), delta = " + str(FAMILY_DELTA),
            "kappa": sp.factor(kappa.subs(_n, _m - 3)), "kappa_minus_1": sp.factor(excess.subs(_n, _m - 3)),
            "holds_for_every_m_ge_3": bool(defined and excess.is_positive)}


def _top_singular_grad(jacobian: sp.Matrix) -> list[sp.Rational]:
    """A rational g near the top right-singular vector of J^T (float64 SVD, then exact rationals)."""
    _, _, vt = np.linalg.svd(np.array(jacobian.T.tolist(), dtype=np.float64))
    return [sp.Rational(Fraction(float(v)).limit_denominator(10**4)) for v in vt[0]]


@functools.cache
def family_counterexamples(derivation: PiecewiseDerivation, sizes=FAMILY_SIZES) -> tuple[dict, ...]:
    """At each m: the family batch (eps = 0, gamma = 1), g near J^T's top singular vector; exact LHS and both RHS."""
    normaliser, rows = derivation.normaliser, []
    for size in sizes:
        point = {**{y[i + 1]: v for i, v in enumerate(family_batch(size))}, eps: sp.Integer(0), gamma: sp.Integer(1)}
        jacobian = concrete_jacobian_at(normaliser, size, point)
        grads = _top_singular_grad(jacobian)
        point.update({g[i + 1]: v for i, v in enumerate(grads)})
        lhs = sp.nsimplify(sp.expand(sum(v**2 for v in jacobian.T * sp.Matrix(grads))))
        at = {**invariants_at(derivation, size, point), sigma: normaliser.scale.subs(_m, size).xreplace(
            invariants_at(derivation, size, point)).subs(eps, 0), gamma: 1, eps: 0}
        reduction_rhs = (gamma**2 / sigma**2 * (G2 - G1**2 / _m)).xreplace(at)
        own_rhs = sp.nsimplify(sp.simplify(bound_expression(derivation).xreplace(at)))
        rows.append({"m": size, "y": [str(v) for v in family_batch(size)], "g": [str(v) for v in grads],
                     "lhs": str(lhs), "reduction_rhs": str(reduction_rhs), "own_rhs": str(own_rhs),
                     "lhs_over_reduction_rhs": float(lhs / reduction_rhs), "lhs_over_own_rhs": float(lhs / own_rhs),
                     "violates_reduction": bool(_exceeds(lhs, reduction_rhs)),
                     "within_own_bound": not _exceeds(lhs, own_rhs)})
    return tuple(rows)


@functools.cache
def batchnorm_rhs_comparison(derivation: PiecewiseDerivation) -> dict:
    """BatchNorm's thm4.1 right side with this normaliser's sigma and yhat: a candidate iff sup ||yhat||^2 <= m."""
    normaliser = derivation.normaliser
    rhs = paper_bound(APPENDIX_C).subs(sigma, normaliser.scale)
    excess = sp.simplify(supremum_at_zero_eps(derivation)["yhat_sq_sup"] - _m)
    by_m = {q: excess.subs(_m, q) for q in FAMILY_SIZES}
    candidate = all(v <= 0 for v in by_m.values())
    positive = check_at_points(normaliser, rhs, sizes=range(2, 7), positive_rhs_only=True)
    found = positive.counterexample
    out = {"statement_latex": rf"{LHS_LATEX} \le " + to_latex(paper_bound(APPENDIX_C)),
           "what_it_is": ("BatchNorm's right side (c = 1/m) with this normaliser's own sigma and yhat plugged in; "
                          "not derived from this normaliser's Jacobian"),
           "sup_yhat_sq_minus_m": sp.sstr(excess), "sup_yhat_sq_minus_m_by_m": {str(q): str(v) for q, v in by_m.items()},
           "meaningful_candidate": candidate,
           "why": (f"its right side is >= 0 for every input iff ||yhat||^2 <= m (Cauchy-Schwarz; g along yhat attains "
                   f"it); here sup ||yhat||^2 - m = {sp.sstr(excess)}")}
    if not candidate:
        size = next(q for q, v in by_m.items() if v > 0)
        witness = _grouped_statistics(derivation, family_groups(size), size)
        hats = [normaliser.hat(v).subs({_m: size, eps: 0}).xreplace(witness) for v in family_batch(size)]
        value = sum(h**2 for h in hats)
        out["negative_rhs_witness"] = {"m": size, "y": [str(v) for v in family_batch(size)], "g": "yhat",
                                       "rhs": str(sp.simplify(value - value**2 / size) / normaliser.scale.subs(
                                           _m, size).xreplace(witness).subs(eps, 0) ** 2)}
    out["violation_with_positive_rhs"] = None if found is None else found.as_dict()
    out["search"] = positive.describe()
    return out


def _records(derivation: PiecewiseDerivation, concrete) -> dict[str, ClaimResult]:
    normaliser, pieces = derivation.normaliser, projector_pieces(derivation)
    supremum, witness = supremum_at_zero_eps(derivation), general_m_witness(derivation)
    structure_ok = pieces["identity_residual"] == 0 and all(v == 0 for v in pieces["residuals"].values())
    identity = (gamma**2 / sigma**2 * (G2 - G1**2 / _m - 2 * g_hat * pieces["g_d"] + g_hat**2 * pieces["d_sq"]))
    by_m = {str(q): str(supremum["supremum"].subs(_m, q)) for q in FAMILY_SIZES}
    common = dict(normaliser=normaliser.name, general_m=True, concrete_m_checked=concrete[0],
                  assumptions=ACTIVATION_ASSUMPTIONS + (rf"\text{{one smooth piece: {derivation.domain}}}",))
    rows = family_counterexamples(derivation)
    own = ClaimResult(
        claim="thm4.1", status=Status.PROVED if structure_ok else Status.CHECKED, measured_check="bound",
        source=f"analogue of Theorem 4.1 derived from the {normaliser.name} Jacobian (one smooth piece, symbolic m)",
        statement_latex=(rf"{LHS_LATEX} = \frac{{\gamma^2}}{{\sigma^2}}\|P^\top(g - \bar{{g}}\mathbf{{1}})\|^2 \le "
                         rf"\frac{{\gamma^2}}{{\sigma^2}}\|P\|_2^2{CENTRED_LATEX},\quad P = I - \frac{{\mathbf{{1}}"
                         r"\mathbf{1}^\top}{m} - \hat{y}d^\top,\ d = \nabla_y\sigma"),
        derived_latex=(rf"{LHS_LATEX} = {to_latex(identity)},\ d_k = {sp.latex(pieces['d'])},\ \|P\|_2^2 = "
                       rf"{to_latex(pieces['kappa'])}\ (m \ge 3),\ \epsilon = 0:\ {to_latex(pieces['kappa_at_zero_eps'])},"
                       rf"\ \sup = {sp.latex(supremum['supremum'])}"),
        slack_latex=(r"\mathrm{RHS}-\mathrm{LHS} = \frac{\gamma^2}{\sigma^2}\left(\|P\|_2^2\|g-\bar{g}\mathbf{1}\|^2 - "
                     r"\|P^\top(g-\bar{g}\mathbf{1})\|^2\right) \ge 0"),
        equality=("equality iff g - gbar 1 lies in the top right-singular space of P^T (exists for every batch: tight); "
                  "at m = 2, ||P||^2 = (1 - rho)^2 <= the bound"),
        evidence=(f"SymPy, symbolic m: on one smooth piece ({derivation.domain}) the derived ||J^T g||^2 minus "
                  f"(gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - 2<g,yhat><g,d> + <g,yhat>^2||d||^2) = "
                  f"{pieces['identity_residual']}, d = {sp.sstr(pieces['d'])} read off the derived Jacobian; at eps = 0 "
                  f"{', '.join(f'{k} = {v}' for k, v in pieces['residuals'].items())} (an oblique projector); ||P^T v|| <= "
                  "||P|| ||v|| with P^T g = P^T (g - gbar 1), and ||P||^2 the top eigenvalue of P^T P on span{yhat, d} "
                  f"(SymPy, 2x2); at eps = 0 it is ||yhat||^2 ||d||^2 = {sp.sstr(pieces['kappa_at_zero_eps'])}, sup "
                  f"over batches {sp.sstr(supremum['supremum'])} (m >= 3: {by_m}); the family counterexamples reach "
                  f"LHS/RHS = {min(r['lhs_over_own_rhs'] for r in rows):.6f}..{max(r['lhs_over_own_rhs'] for r in rows):.6f} "
                  f"(tight) and all lie within the bound; {concrete[1]}"),
        extra={"jacobian_structure": "J = (gamma/sigma)(I - 11^T/m - yhat d^T), d = grad_y sigma",
               "d": sp.sstr(pieces["d"]), "d_sq": sp.sstr(pieces["d_sq"]), "rho": sp.sstr(pieces["rho"]),
               "g_dot_d": sp.sstr(pieces["g_d"]),
               "projector_residuals_at_zero_eps": {k: sp.sstr(v) for k, v in pieces["residuals"].items()},
               "operator_norm_sq": sp.sstr(pieces["kappa"]),
               "operator_norm_sq_at_zero_eps": sp.sstr(pieces["kappa_at_zero_eps"]),
               "sup_operator_norm_sq_at_zero_eps": {"formula": sp.sstr(supremum["supremum"]), "by_m": by_m,
                                                    "attained": False, "argument": supremum_at_zero_eps.__doc__.split(
                                                        "\n\n")[0].strip()},
               "orthogonal_iff": "d parallel to yhat (then ||P|| = 1: BatchNorm, l2)"},
        **common)
    found = check_at_points(normaliser, gamma**2 / normaliser.scale**2 * (G2 - G1**2 / _m), sizes=range(3, 7))
    reduction_term = sp.expand(2 * g_hat * pieces["g_d"] - g_hat**2 * pieces["d_sq"])  # what thm4.1's bracket removes
    ratios = ", ".join(format(r["lhs_over_reduction_rhs"], ".4f") for r in rows)
    refuted = witness["holds_for_every_m_ge_3"] and all(r["violates_reduction"] for r in rows)
    reduction = ClaimResult(
        claim="thm4.1-reduction", measured_check="refuted" if refuted else "bound",
        status=Status.REFUTED if refuted else Status.CHECKED, counterexample=found.counterexample,
        source=("the weakest statement of thm4.1's kind for this normaliser: its Jacobian does not enlarge the "
                "centred gradient (BatchNorm: true, with room <g,yhat>^2/m)"),
        statement_latex=REDUCTION_LATEX, derived_latex=rf"\sup \frac{{\mathrm{{LHS}}}}{{\mathrm{{RHS}}}} = \sup\|P\|_2^2 = "
        rf"{sp.latex(supremum['supremum'])}\ (m \ge 3,\ \epsilon = 0)",
        slack_latex=r"\mathrm{RHS} \ge 0 \text{ for every input (a meaningful candidate)}",
        equality="holds at m = 2 (||P||^2 = (1 - rho)^2 <= 1); fails for every m >= 3",
        evidence=(f"refuted for every m >= 3: on the batch {witness['batch']} (SymPy, symbolic m) ||P||^2 = "
                  f"{sp.sstr(witness['kappa'])}, ||P||^2 - 1 = {sp.sstr(witness['kappa_minus_1'])} > 0, and g along "
                  "P^T's top right-singular vector (orthogonal to 1) gives LHS/RHS = ||P||^2; exact rational (y, g) "
                  f"counterexamples from that family at m = {', '.join(str(r['m']) for r in rows)} (LHS/RHS = "
                  f"{ratios}), the simplest integer one attached ("
                  + (f"m = {found.counterexample.m}: LHS = {found.counterexample.lhs} > RHS = "
                     f"{sp.nsimplify(found.counterexample.rhs)}" if found.counterexample else "none found")
                  + f"); sup LHS/RHS = {sp.sstr(supremum['supremum'])}. The right side is >= 0 everywhere."),
        extra={"reduction_term": sp.sstr(reduction_term), "reduction_term_sign": (
                   "indefinite: ||g - gbar 1||^2 - (sigma^2/gamma^2)||J^T g||^2 equals it, and it is negative at every "
                   "counterexample (BatchNorm: <g,yhat>^2/m >= 0)"),
               "general_m_witness": {k: (sp.sstr(v) if isinstance(v, sp.Expr) else v) for k, v in witness.items()},
               "family_counterexamples": list(rows), "sup_lhs_over_rhs_by_m": by_m,
               "batchnorm_rhs_comparison": batchnorm_rhs_comparison(derivation)}, **common)
    return {"thm4.1": own, "thm4.1-reduction": reduction} | _weight_records(derivation, own, common)


def _weight_records(derivation: PiecewiseDerivation, own: ClaimResult, common: dict) -> dict[str, ClaimResult]:
    """thm4.4-per-unit and thm4.4 from the own thm4.1 analogue (batch-axis groups: dL-hat/dW_(.j) = X^T v_j)."""
    if group_layout(derivation.normaliser) is not GroupLayout.COLUMN:
        return {}
    identity_ok, identity_text = unit_gradient_identity()
    attained = spectral_ball_maximum_attained()
    proved = identity_ok and own.status is Status.PROVED
    bound = bound_expression(derivation)
    per_unit = ClaimResult(
        claim="thm4.4-per-unit", status=Status.PROVED if proved else Status.CHECKED, measured_check="bound",
        source="Theorem 4.4, first step of its proof, with this normaliser's own thm4.1 analogue",
        statement_latex=r"\|\nabla_{W_{\cdot j}}\hat{\mathcal{L}}\|^2 \le \|X\|_2^2\,\mathrm{RHS}_{4.1}",
        derived_latex=r"\|\nabla_{W_{\cdot j}}\hat{\mathcal{L}}\|^2 \le \|X\|_2^2 \cdot " + to_latex(bound),
        equality="equality iff dL-hat/dy_j is in the top eigenspace of X X^T and thm4.1 (own) is tight",
        evidence=identity_text + "; operator norm; thm4.1 (own analogue) " + own.status.value, **common)
    minimax = ClaimResult(
        claim="thm4.4", status=Status.CONDITIONAL if proved and all(attained.values()) else Status.CHECKED,
        measured_check="bound", conditions=MINIMAX_CONDITIONS,
        source="Theorem 4.4 (minimax), with this normaliser's own thm4.1 analogue",
        statement_latex=(r"\hat{g}_j \le \lambda^2\,\mathrm{RHS}_{4.1}\big|_{\|g\|^2 = g_j/\lambda^2} = "
                         r"\frac{\gamma^2}{\sigma^2}\|P\|_2^2\left(g_j - \lambda^2\frac{\langle\mathbf{1},g\rangle^2}{m}\right)"),
        derived_latex=r"\hat{g}_j = \lambda^2\|\nabla_{y_j}\hat{\mathcal{L}}\|^2 \le \lambda^2 \cdot " + to_latex(bound),
        equality="equality when thm4.1 (own) is tight: g - gbar 1 along P^T's top singular vector",
        evidence=(identity_text + f"; max over ||X||_2 <= lambda of ||X^T v||^2 = lambda^2 ||v||^2 (attained, SymPy at "
                  f"{sorted(attained)}); thm4.1 (own analogue) {own.status.value}; holds with the derivatives held fixed"),
        **common)
    return {"thm4.4-per-unit": per_unit, "thm4.4": minimax}


def establish_piecewise(derivation: PiecewiseDerivation, concrete) -> dict[str, ClaimResult]:
    """The l_p records: thm4.1 (own analogue), thm4.1-reduction, and their weight-space forms."""
    return _records(derivation, concrete)
