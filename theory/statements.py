"""The paper's formal statements as data, and their status established from the derivation.

A statement is typed in as the paper prints it (that is the claim under test); its left side is
never typed: it comes from `derive`. The status is decided by shared code:

- `proved`: the slack RHS - LHS simplifies to an expression SymPy shows nonnegative under the
  stated assumptions, for symbolic m (or the two sides are identical, for identities);
- `refuted`: the exact counterexample search (`counterexample`) finds a batch violating it;
- `checked`: neither; only numeric evidence exists (reported as such, never as proved).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import sympy as sp

from theory.batch_algebra import NoClosedForm, g, k, l, m, mixed_sum, y
from theory.concrete import agreement_at_points
from theory.counterexample import Counterexample, search_counterexample
from theory.derive import Derivation, derive
from theory.normaliser import Normaliser, eps, g_hat, gamma, sigma

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)
_LATEX_BY_NAME = {"G_1": r"\langle\mathbf{1},g\rangle", "G_2": r"\|g\|^2", "G_hat": r"\langle g,\hat{y}\rangle",
                  "var": r"\mathrm{var}", "sigma": r"\sigma"}


def to_latex(expr: sp.Expr) -> str:
    """LaTeX with the invariants written as the paper writes them (<1,g>, ||g||^2, <g,yhat>)."""
    names = {s: _LATEX_BY_NAME[s.name] for s in expr.free_symbols if s.name in _LATEX_BY_NAME}
    return sp.latex(expr, symbol_names=names)
CONCRETE_SIZES = tuple(range(2, 9))


class Status(str, enum.Enum):
    PROVED = "proved"
    CHECKED = "checked"
    REFUTED = "refuted"
    CONDITIONAL = "conditional"


@dataclass(frozen=True)
class ActivationBound:
    """||grad_y L-hat||^2 <= (gamma^2/sigma^2) (||g||^2 - <1,g>^2/m - c <g,yhat>^2)   (thm4.1 family)."""

    claim_id: str
    source: str
    c: sp.Expr

    def rhs(self) -> sp.Expr:
        return gamma**2 / sigma**2 * (G2 - G1**2 / m - self.c * g_hat**2)

    def latex(self) -> str:
        c = sp.latex(self.c)
        return (
            r"\|\nabla_{y_j}\hat{\mathcal{L}}\|^2 \le \frac{\gamma^2}{\sigma_j^2}\left(\|g\|^2 - "
            r"\frac{\langle \mathbf{1}, g\rangle^2}{m} - " + c + r"\,\langle g, \hat{y}_j\rangle^2\right)"
        )


ACTIVATION_BOUNDS = (
    ActivationBound("thm4.1", "Appendix C, Theorem 4.1 and its proof (c = 1/m)", 1 / m),
    ActivationBound("thm4.1-printed", "Main text, Theorem 4.1 as printed (c = 1/sqrt(m))", 1 / sp.sqrt(m)),
)


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    normaliser: str
    status: Status
    general_m: bool
    statement_latex: str
    source: str
    assumptions: tuple[str, ...]
    evidence: str
    derived_latex: str = ""
    slack_latex: str = ""
    equality: str = ""
    counterexample: Counterexample | None = None
    concrete_m_checked: tuple[int, ...] = ()
    conditions: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {
            "status": self.status.value,
            "general_m": self.general_m,
            "statement_latex": self.statement_latex,
            "source": self.source,
            "assumptions": list(self.assumptions),
            "evidence": self.evidence,
            "derived_latex": self.derived_latex,
            "slack_latex": self.slack_latex,
            "equality": self.equality,
            "concrete_m_checked": list(self.concrete_m_checked),
            "conditions": list(self.conditions),
            **self.extra,
        }
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample.as_dict()
        return out


ASSUMPTIONS = (r"m \ge 2", r"\epsilon \ge 0", r"\sigma_j = \sqrt{\mathrm{var}_j + \epsilon} > 0",
               r"\gamma \in \mathbb{R} \text{ constant}", r"g = \partial\hat{\mathcal{L}}/\partial z_j \text{ arbitrary}")


def _inside_prefactor(expr: sp.Expr) -> sp.Expr:
    """expr / (gamma^2/sigma^2), collected in <g,yhat>^2: the form in which the paper states thm4.1."""
    return sp.collect(sp.expand(expr * sigma**2 / gamma**2), g_hat**2)


def _concrete_evidence(derivation: Derivation) -> tuple[tuple[int, ...], str]:
    rows = [agreement_at_points(derivation, size) for size in CONCRETE_SIZES]
    good = tuple(r["m"] for r in rows if r["jacobian_agree"] == r["points"] == r["grad_sq_norm_agree"])
    points = sum(r["points"] for r in rows)
    text = (f"concrete-m route (explicit sums, Matrix.jacobian) agrees exactly at {points} rational points "
            f"for m = {', '.join(map(str, good))}")
    return good, text


def establish_activation_bound(bound: ActivationBound, derivation: Derivation, concrete) -> ClaimResult:
    """Prove `bound` from the derived ||J^T g||^2, or refute it with an exact counterexample."""
    normaliser = derivation.normaliser
    lhs = derivation.in_sigma(derivation.grad_sq_norm)
    slack = sp.factor(sp.simplify(bound.rhs() - lhs))
    common = dict(
        claim=bound.claim_id, normaliser=normaliser.name, general_m=True, statement_latex=bound.latex(),
        source=bound.source, assumptions=ASSUMPTIONS, derived_latex=r"\|\nabla_{y_j}\hat{\mathcal{L}}\|^2 = "
        r"\frac{\gamma^2}{\sigma^2}\left(" + to_latex(_inside_prefactor(lhs)) + r"\right)", slack_latex=r"\mathrm{RHS}-\mathrm{LHS} = " + to_latex(slack),
        concrete_m_checked=concrete[0],
    )
    if slack.is_nonnegative:
        at_zero = sp.simplify(slack.subs(eps, 0))
        equality = ("equality at epsilon = 0 for every g (the Jacobian is then (gamma/sigma) times an orthogonal "
                    "projector); for epsilon > 0 equality iff <g, yhat> = 0" if at_zero == 0 else "")
        return ClaimResult(status=Status.PROVED, equality=equality, evidence=(
            "SymPy: RHS - LHS factors into terms nonnegative under the assumptions, for symbolic m; "
            + concrete[1]), **common)
    rhs_in_statistics = bound.rhs().subs(sigma, normaliser.scale)
    found = search_counterexample(derivation, rhs_in_statistics)
    if found is not None:
        return ClaimResult(status=Status.REFUTED, counterexample=found, evidence=(
            f"exact counterexample at m = {found.m}, epsilon = {found.epsilon}: LHS = {found.lhs} > RHS = "
            f"{sp.nsimplify(found.rhs)} (LHS by the concrete-m Jacobian, not the closed form)"), **common)
    return ClaimResult(status=Status.CHECKED, evidence="no proof and no counterexample found; "
                       + concrete[1], **common)


def establish_gradient_formula(derivation: Derivation) -> ClaimResult:
    """Fact C.1: dL-hat/dy = (gamma/(m sigma)) (m g - 1 <1,g> - yhat <g,yhat>), and J = (gamma/sigma) P."""
    normaliser = derivation.normaliser
    yhat = {index: normaliser.hat(y[index]) for index in (k, l)}
    scale = normaliser.scale
    paper_backward = gamma / (m * scale) * (m * g[k] - G1 - yhat[k] * g_hat)
    paper_jacobian = gamma / scale * (sp.KroneckerDelta(k, l) - 1 / m - yhat[l] * yhat[k] / m)
    backward_residual = sp.simplify(derivation.backward - paper_backward)
    jacobian_residual = sp.simplify(derivation.jacobian - paper_jacobian)
    proved = backward_residual == 0 and jacobian_residual == 0
    return ClaimResult(
        claim="factC.1", normaliser=normaliser.name, status=Status.PROVED if proved else Status.REFUTED,
        general_m=True, source="Appendix C, Fact C.1 (gradient through BN)",
        statement_latex=(r"\frac{\partial\hat{\mathcal{L}}}{\partial y_j} = \frac{\gamma}{m\sigma_j}\left(m g - "
                         r"\mathbf{1}\langle\mathbf{1},g\rangle - \hat{y}_j\langle g,\hat{y}_j\rangle\right),\quad "
                         r"\frac{\partial z_j}{\partial y_j} = \frac{\gamma}{\sigma_j}\left(I - \frac{\mathbf{1}"
                         r"\mathbf{1}^\top}{m} - \frac{\hat{y}_j\hat{y}_j^\top}{m}\right)"),
        assumptions=ASSUMPTIONS[:3],
        derived_latex=r"\frac{\partial z_l}{\partial y_k} = " + to_latex(derivation.jacobian),
        slack_latex=rf"\text{{residuals: backward}} = {sp.latex(backward_residual)},\ "
                    rf"\text{{Jacobian}} = {sp.latex(jacobian_residual)}",
        equality="identity (exact for every epsilon >= 0, with sigma including epsilon)",
        evidence=("SymPy: derived Jacobian and backward map minus the paper's formulas simplify to 0 for "
                  "symbolic m and epsilon" if proved else "the residual does not simplify to 0"),
    )


def establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    """Every statement the suite knows, for one normaliser, keyed by claim id."""
    try:
        derivation = derive(normaliser)
    except NoClosedForm as error:  # pragma: no cover - every shipped normaliser has a closed form so far
        raise NotImplementedError(f"{normaliser.name}: no symbolic-m closed form ({error})") from error
    concrete = _concrete_evidence(derivation)
    results = {"factC.1": establish_gradient_formula(derivation)}
    for bound in ACTIVATION_BOUNDS:
        results[bound.claim_id] = establish_activation_bound(bound, derivation, concrete)
    return results
