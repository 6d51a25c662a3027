"""What every statement module returns: a claim's status, its statement and its evidence.

Statuses:
- `proved`: SymPy shows it for symbolic m (slack a product of factors nonnegative under the
  assumptions, or an identity's residual 0);
- `refuted`: an exact counterexample violates it (stored beside the status);
- `checked`: numeric or concrete-m evidence only, no proof and no counterexample;
- `conditional`: holds only under the extra `conditions` listed with it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import sympy as sp

from theory.batch_algebra import mixed_sum
from theory.counterexample import Counterexample

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)  # <1, g> and ||g||^2
_LATEX_BY_NAME = {"G_1": r"\langle\mathbf{1},g\rangle", "G_2": r"\|g\|^2", "G_hat": r"\langle g,\hat{y}\rangle",
                  "var": r"\mathrm{var}", "sigma": r"\sigma", "ms": r"\overline{y^2}",
                  "X_op_sq": r"\|X\|_2^2", "dy_sq": r"\|\delta_j\|^2"}

ACTIVATION_ASSUMPTIONS = (
    r"m \ge 2", r"\epsilon \ge 0", r"\sigma_j > 0 \text{ (the normalising scale, eps included)}",
    r"\gamma \in \mathbb{R} \text{ constant}", r"g = \partial\hat{\mathcal{L}}/\partial z_j \text{ arbitrary}",
)


def to_latex(expr: sp.Expr) -> str:
    """LaTeX with the invariants written as the paper writes them (<1,g>, ||g||^2, <g,yhat>)."""
    names = {s: _LATEX_BY_NAME[s.name] for s in expr.free_symbols if s.name in _LATEX_BY_NAME}
    return sp.latex(expr, symbol_names=names)


# What a measured check of a statement on network captures checks (`ClaimResult.measured_check`).
MEASURED_CHECKS = {
    "identity": ("holds with equality at eps = 0 for every input: a measured check compares two computations of one "
                 "number, so it tests the derivation and the measurement pipeline, not the paper (ratio 1 at eps = 0)"),
    "bound": ("an inequality with slack; when proved, a measured check can fail only through a numerical bug (it "
              "tests the derivation and the pipeline), and the measured ratio says how much of the slack networks use"),
    "conditional": ("holds only under stated conditions: on measured rows, how often the conditions hold is the "
                    "empirical content"),
    "refuted": ("false as stated (an exact counterexample is attached): measured violations say how often its "
                "situation arises in training"),
    "none": "no measured check on network captures (the statement is about optima or data, not one batch)",
}


class Status(str, enum.Enum):
    PROVED = "proved"
    CHECKED = "checked"
    REFUTED = "refuted"
    CONDITIONAL = "conditional"


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
    extra: dict = field(default_factory=dict)  # JSON-able evidence specific to one statement
    measured_check: str = "none"  # a key of MEASURED_CHECKS
    same_statement_as: str = ""  # the first registered normaliser with the very same statement (`statements`)

    def __post_init__(self):
        if self.measured_check not in MEASURED_CHECKS:
            raise ValueError(f"{self.claim}: measured_check {self.measured_check!r} must be one of "
                             f"{', '.join(MEASURED_CHECKS)}")

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
            "measured_check": self.measured_check,
            "same_statement_as": self.same_statement_as or None,
            **self.extra,
        }
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample.as_dict()
        return out
