"""thm4.4 analogues for normalisers whose groups are not columns of y = X W, and without a closed form.

One dense layer y = X W (X: m x d input batch, W: d x n weights), V = dL-hat/dy (m x n). The first
step of thm4.4, dL-hat/dW = X^T V (column by column: dL-hat/dW_(.j) = X^T v_j), is pure chain rule
through y = X W and holds whatever follows y (`weight_space.unit_gradient_identity`). What changes
with the normaliser is which thm4.1 analogue bounds V, and that is decided by where one group sits
(`weight_space.group_layout`, read from the normaliser's `axis`):

- ROW (LayerNorm, RMSNorm, GroupNorm: statistics over one sample's units). A group k is (part of) a
  row of y, and every column v_j meets every group, so no per-unit bound exists; the whole matrix
  gives one (thm4.4-per-layer):
      ||dL-hat/dW||_F^2 = sum_j ||X^T v_j||^2 <= ||X||_2^2 ||V||_F^2 = ||X||_2^2 sum_k ||J_k^T g_k||^2
                        <= ||X||_2^2 sum_k RHS_4.1(g_k),
  the regrouping of ||V||_F^2 by groups being exact because the groups partition the entries of y.
  Minimax (thm4.4): over ||X||_2 <= lambda with V fixed, max ||X^T V||_F^2 = lambda^2 ||V||_F^2 when
  d >= m (X = lambda [I_m 0]; for d < m it is smaller), so ghat <= lambda^2 sum_k RHS_4.1(g_k).
- WEIGHTS (WeightNorm: the group is unit j's weight vector v_j, w_j = N(v_j), y_j = X w_j). The
  normaliser's upstream gradient is g = dL-hat/dw_j = X^T delta_j, delta_j = dL-hat/dy_j, so thm4.1
  for it already speaks of weights; X enters through ||g||^2 <= ||X||_2^2 ||delta_j||^2. When the
  derived RHS_4.1 is linear in ||g||^2 with a nonnegative coefficient c (checked by SymPy):
      thm4.4-per-unit: ||dL-hat/dv_j||^2 <= RHS_4.1 with ||g||^2 -> ||X||_2^2 ||delta_j||^2;
      thm4.4 (minimax, delta_j fixed): ghat_j <= c lambda^2 ||delta_j||^2 = c g_j, since the remaining
      terms of RHS_4.1 are <= 0 (SymPy) -- and equality is attained by an X with X^T delta_j orthogonal
      to 1 and yhat (checked exactly at d = 3), so in the minimax form no additive reduction survives.
      Here g_j = max ||dL/dW_(.j)||^2 = lambda^2 ||delta_j||^2 exactly: the reparametrisation leaves y,
      hence delta_j, unchanged at equal effective weights.
- No symbolic-m closed form (l1, l-inf; `establish_concrete`): the typed thm4.1 form is checked or
  refuted at concrete m (`activation_bound.establish_concrete`), and X = I (of the size that makes
  y = W, so dL-hat/dW = dL-hat/dy and ||X||_2 = 1, lambda = 1) carries its verdict to the weight
  statements exactly: a thm4.1 counterexample is a weight-space counterexample (general_m false).
"""

from __future__ import annotations

import functools

import sympy as sp

from theory.activation_bound import APPENDIX_C, bound_expressions, paper_bound
from theory.activation_bound import establish_concrete as activation_concrete
from theory.batch_algebra import m, y
from theory.claims import ACTIVATION_ASSUMPTIONS, G2, ClaimResult, Status, to_latex
from theory.concrete import concrete_jacobian_at, statistic_values_at
from theory.derive import Derivation
from theory.normaliser import Normaliser, eps, gamma, sigma
from theory.signs import is_nonnegative, is_nonpositive
from theory.weight_space import (
    GroupLayout,
    g_j,
    group_layout,
    lam,
    result_key,
    thm41_slack,
    unit_gradient_identity,
    x_op_sq,
)

dy_sq = sp.Symbol("dy_sq", nonnegative=True)  # ||delta_j||^2 = ||dL-hat/dy_j||^2 (weight-space normalisers)

ROW_SHAPES = ((2, 2, 2), (2, 3, 2), (3, 3, 2), (3, 4, 3))  # (m, d, n) with d >= m: X = lambda [I_m 0] exists
CLAIM_IDS = {GroupLayout.COLUMN: ("thm4.4-per-unit", "thm4.4"), GroupLayout.ROW: ("thm4.4-per-layer", "thm4.4"),
             GroupLayout.WEIGHTS: ("thm4.4-per-unit", "thm4.4")}
LAYER_GRAD_LATEX = r"\|\nabla_W\hat{\mathcal{L}}\|_F^2"
REPARAM_GRAD_LATEX = r"\|\nabla_{v_j}\hat{\mathcal{L}}\|^2"
ROW_ASSUMPTIONS = (*ACTIVATION_ASSUMPTIONS, r"y = XW,\ X \in \mathbb{R}^{m\times d}",
                   r"\text{the groups } k \text{ partition the entries of } y \text{ (each within one row)}")
# Not "g arbitrary": here g = X^T delta_j; m is the group size d (the input width of unit j).
WEIGHT_ASSUMPTIONS = (*ACTIVATION_ASSUMPTIONS[:4], r"w_j = \mathcal{N}(v_j),\ y_j = X w_j,\ \delta_j = \partial\hat{\mathcal{L}}/\partial y_j",
                      r"g = \partial\hat{\mathcal{L}}/\partial w_j = X^\top\delta_j")
FIXED_DERIVATIVES = (r"\text{derivatives w.r.t. } y \text{ held fixed while } X \text{ ranges over } \|X\|_2 \le \lambda"
                     r"\text{ (as the paper's proof does)}")


def _group_sum_latex(expr: sp.Expr) -> str:
    return r"\sum_k \left[" + to_latex(expr) + r"\right]_{\text{group } k}"


# --- the matrix facts behind the ROW analogue -------------------------------------------------------


@functools.cache
def frobenius_regrouping(shapes=ROW_SHAPES) -> dict[tuple[int, int, int], bool]:
    """(m, d, n) -> for symbolic X (m x d), V (m x n): ||X^T V||_F^2 = sum_j ||X^T v_j||^2 and
    ||V||_F^2 = sum over rows of ||V_(k.)||^2 (the groups of a ROW normaliser split rows further)."""
    outcome = {}
    for size, d, n in shapes:
        X = sp.Matrix(size, d, lambda r, c: sp.Symbol(f"x_{r}{c}", real=True))
        V = sp.Matrix(size, n, lambda r, c: sp.Symbol(f"v_{r}{c}", real=True))
        grad = X.T * V
        by_column = sum((X.T * V[:, j]).norm() ** 2 for j in range(n))
        columns_ok = sp.expand(sum(e**2 for e in grad) - by_column) == 0
        rows_ok = sp.expand(sum(e**2 for e in V) - sum(sum(e**2 for e in V[r, :]) for r in range(size))) == 0
        outcome[(size, d, n)] = bool(columns_ok and rows_ok)
    return outcome


@functools.cache
def layer_ball_maximum_attained(shapes=ROW_SHAPES) -> dict[tuple[int, int, int], bool]:
    """(m, d, n) -> X = lambda [I_m 0] has X X^T = lambda^2 I_m (so ||X||_2 = lambda) and ||X^T V||_F^2 =
    lambda^2 ||V||_F^2 for symbolic V: max_{||X||_2 <= lambda} ||X^T V||_F^2 = lambda^2 ||V||_F^2 when d >= m."""
    outcome = {}
    for size, d, n in shapes:
        V = sp.Matrix(size, n, lambda r, c: sp.Symbol(f"v_{r}{c}", real=True))
        X = lam * sp.eye(size).row_join(sp.zeros(size, d - size))
        gram_ok = sp.expand(X * X.T - lam**2 * sp.eye(size)) == sp.zeros(size, size)
        value_ok = sp.expand(sum(e**2 for e in X.T * V) - lam**2 * sum(e**2 for e in V)) == 0
        outcome[(size, d, n)] = bool(gram_ok and value_ok)
    return outcome


# --- ROW: per-sample normalisers ----------------------------------------------------------------------


def _row_results(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    name = derivation.normaliser.name
    identity_ok, identity_text = unit_gradient_identity()
    regrouped, attained = frobenius_regrouping(), layer_ball_maximum_attained()
    slack, thm41_proved = thm41_slack(derivation)
    bound = bound_expressions(derivation)["thm4.1"]
    steps_ok = identity_ok and all(regrouped.values())
    matrix_text = (f"{identity_text} (so dL-hat/dW = X^T V column by column); ||X^T V||_F^2 = sum_j ||X^T v_j||^2 and "
                   f"||V||_F^2 = sum over rows, expanded by SymPy for symbolic X, V at (m, d, n) = {sorted(regrouped)}; "
                   "||X^T v_j|| <= ||X||_2 ||v_j|| (operator norm) per column")
    thm41_text = ("thm4.1 for each group k, slack shown nonnegative by SymPy for symbolic m" if thm41_proved
                  else "thm4.1 for this normaliser is not proved, so the last step is conditional on it")
    per_layer_proved = steps_ok and thm41_proved
    per_layer = ClaimResult(
        claim="thm4.4-per-layer", normaliser=name, general_m=True, measured_check="bound",
        status=Status.PROVED if per_layer_proved else (Status.CONDITIONAL if steps_ok else Status.CHECKED),
        source=("analogue of Theorem 4.4 (first step of its proof) for groups within one sample: a column of the "
                "weight gradient mixes every sample's group, so the bound is for the whole matrix"),
        statement_latex=(rf"{LAYER_GRAD_LATEX} = \|X^\top V\|_F^2 \le \|X\|_2^2\|V\|_F^2 = \|X\|_2^2\sum_k"
                         r"\|J_k^\top g_k\|^2 \le \|X\|_2^2\sum_k\mathrm{RHS}_{4.1}(g_k),\quad V = \nabla_y\hat{\mathcal{L}}"),
        assumptions=ROW_ASSUMPTIONS, derived_latex=rf"{LAYER_GRAD_LATEX} \le \|X\|_2^2 {_group_sum_latex(bound)}",
        slack_latex=r"\text{per group: } \mathrm{RHS}_{4.1}-\|J_k^\top g_k\|^2 = " + to_latex(slack),
        equality=("equality iff every column of V lies in the eigenspace of X X^T for its largest eigenvalue (e.g. "
                  "X X^T = c I, possible when d >= m) and thm4.1 is tight in every group (eps = 0 or <g_k,yhat_k> = 0)"),
        concrete_m_checked=concrete[0], conditions=() if per_layer_proved else ("thm4.1 analogue for this normaliser",),
        evidence=matrix_text + "; " + thm41_text,
    )
    minimax_holds = per_layer_proved and all(attained.values())
    minimax = ClaimResult(
        claim="thm4.4", normaliser=name, general_m=True, measured_check="bound",
        status=Status.CONDITIONAL if minimax_holds else Status.CHECKED,
        source="analogue of Theorem 4.4 (minimax bound) for groups within one sample, whole weight matrix",
        statement_latex=(r"\hat{g} = \max_{\|X\|_2\le\lambda}" + LAYER_GRAD_LATEX + r" \le \lambda^2\sum_k"
                         r"\mathrm{RHS}_{4.1}(g_k),\quad g = \max_{\|X\|_2\le\lambda}\|\nabla_W\mathcal{L}\|_F^2"
                         r" = \lambda^2\sum_k\|g_k\|^2\ (d \ge m)"),
        assumptions=(*ROW_ASSUMPTIONS, r"\lambda > 0"),
        conditions=(FIXED_DERIVATIVES, r"\nabla_y\mathcal{L} \text{ identified with } g = \partial\hat{\mathcal{L}}/\partial z"),
        derived_latex=rf"\hat{{g}} \le \lambda^2 {_group_sum_latex(bound)}",
        slack_latex=r"\text{per group: } \lambda^2\left(\mathrm{RHS}_{4.1}-\|J_k^\top g_k\|^2\right) = " + to_latex(lam**2 * slack),
        equality="equality when d >= m and thm4.1 is tight in every group (eps = 0)",
        concrete_m_checked=concrete[0],
        evidence=(matrix_text + "; max_{||X||_2<=lambda} ||X^T V||_F^2 <= lambda^2 ||V||_F^2, attained by X = lambda [I_m 0] "
                  f"(SymPy: X X^T = lambda^2 I and ||X^T V||_F^2 = lambda^2 ||V||_F^2 at (m, d, n) = {sorted(attained)}); "
                  + thm41_text + ("; holds under the conditions listed" if minimax_holds else "; not all steps shown")),
    )
    return {"thm4.4-per-layer": per_layer, "thm4.4": minimax}


# --- WEIGHTS: weight-space reparametrisations ------------------------------------------------------------

WITNESS_WEIGHTS = (1, 2, 2)  # v with ||v|| = 3 rational, so the WeightNorm scale is exact
WITNESS_GAMMA = sp.Integer(2)


@functools.cache
def _reparam_minimax_witness(derivation: Derivation, coefficient: sp.Expr) -> tuple[bool, dict]:
    """(whether ||J^T X^T delta||^2 = coefficient * lambda^2 ||delta||^2 exactly, the witness as text).

    At d = 3, v = WITNESS_WEIGHTS, eps = 0, gamma = 2: u a unit vector orthogonal to 1 and yhat(v),
    delta = (1, 0) (a batch of two), X = lambda delta u^T (||X||_2 = lambda), so X^T delta = lambda u;
    J is the concrete-m Jacobian of the normaliser (`theory.concrete`), not the closed form.
    """
    normaliser = derivation.normaliser
    size = len(WITNESS_WEIGHTS)
    point = {**{y[i + 1]: sp.Integer(v) for i, v in enumerate(WITNESS_WEIGHTS)}, eps: sp.Integer(0), gamma: WITNESS_GAMMA}
    stats = statistic_values_at(normaliser, size, point)
    hats = [normaliser.hat(y[i + 1]).subs(m, size).xreplace(stats).xreplace(point) for i in range(size)]
    (u, *_) = sp.Matrix([[1] * size, hats]).nullspace()
    u = u / u.norm()
    delta = sp.Matrix([1, 0])
    X = lam * delta * u.T
    grad_v = concrete_jacobian_at(normaliser, size, point).T * (X.T * delta)
    lhs = sp.simplify(sum(e**2 for e in grad_v))
    scale = normaliser.scale.subs(m, size).xreplace(stats).xreplace(point)
    rhs = coefficient.xreplace({sigma: scale, gamma: WITNESS_GAMMA, m: sp.Integer(size)}) * lam**2 * delta.norm() ** 2
    op_norm_sq = max((X * X.T).eigenvals())
    ok = sp.simplify(lhs - rhs) == 0 and sp.simplify(op_norm_sq - lam**2) == 0
    return ok, {"v": list(map(str, WITNESS_WEIGHTS)), "gamma": str(WITNESS_GAMMA), "delta": ["1", "0"],
                "u": [str(e) for e in u], "X": "lambda * delta * u^T", "lhs": str(lhs), "rhs": str(sp.simplify(rhs))}


def _reparam_results(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    name = derivation.normaliser.name
    identity_ok, identity_text = unit_gradient_identity()
    slack, thm41_proved = thm41_slack(derivation)
    bound = bound_expressions(derivation)["thm4.1"]
    coefficient = sp.simplify(sp.diff(bound, G2))
    linear = sp.diff(bound, G2, 2) == 0 and not coefficient.has(G2)
    monotone = bool(linear and is_nonnegative(coefficient))
    reduction = sp.factor(sp.simplify(bound - coefficient * G2))
    reduction_nonpositive = is_nonpositive(reduction)
    per_unit_bound = bound.subs(G2, x_op_sq * dy_sq)
    per_unit_proved = identity_ok and thm41_proved and monotone
    steps = (f"{identity_text} (with W = w: g = dL-hat/dw_j = X^T delta_j); ||g||^2 = ||X^T delta_j||^2 <= "
             f"||X||_2^2 ||delta_j||^2 (operator norm); RHS_4.1 is linear in ||g||^2 with coefficient "
             f"{sp.sstr(coefficient)} " + ("(nonnegative: SymPy)" if monotone else "(not shown nonnegative)"))
    thm41_text = ("thm4.1 slack shown nonnegative by SymPy for symbolic m" if thm41_proved
                  else "thm4.1 for this normaliser is not proved")
    per_unit = ClaimResult(
        claim="thm4.4-per-unit", normaliser=name, general_m=True, measured_check="bound",
        status=Status.PROVED if per_unit_proved else Status.CONDITIONAL,
        source=("analogue of Theorem 4.4 (first step of its proof) for a weight-space normaliser: thm4.1 already "
                "bounds the weight gradient; X enters through g = X^T delta_j"),
        statement_latex=(rf"{REPARAM_GRAD_LATEX} = \|J^\top X^\top\delta_j\|^2 \le \mathrm{{RHS}}_{{4.1}}(g)"
                         r"\big|_{\|g\|^2 \to \|X\|_2^2\|\delta_j\|^2},\quad g = X^\top\delta_j"),
        assumptions=WEIGHT_ASSUMPTIONS, derived_latex=rf"{REPARAM_GRAD_LATEX} \le {to_latex(per_unit_bound)}",
        slack_latex=(r"\mathrm{RHS}-\mathrm{LHS} = " + to_latex(coefficient) + r"\left(\|X\|_2^2\|\delta_j\|^2 - "
                     r"\|X^\top\delta_j\|^2\right) + \left(" + to_latex(slack) + r"\right)"),
        equality="equality iff delta_j lies in the top eigenspace of X X^T (or is 0) and thm4.1 is tight",
        concrete_m_checked=concrete[0], conditions=() if per_unit_proved else ("monotonicity of RHS_4.1 in ||g||^2",),
        evidence=steps + "; " + thm41_text,
    )
    attained, witness = _reparam_minimax_witness(derivation, coefficient) if linear else (False, {})
    minimax_holds = per_unit_proved and reduction_nonpositive and attained
    minimax = ClaimResult(
        claim="thm4.4", normaliser=name, general_m=True, measured_check="bound",
        status=Status.CONDITIONAL if minimax_holds else Status.CHECKED,
        source=("analogue of Theorem 4.4 (minimax bound) for a weight-space normaliser: g_j is the standard "
                "network's max weight-gradient norm at equal effective weights"),
        statement_latex=(r"\hat{g}_j = \max_{\|X\|_2\le\lambda}" + REPARAM_GRAD_LATEX + " = "
                         + to_latex(coefficient) + r"\, g_j,\quad g_j = \max_{\|X\|_2\le\lambda}"
                         r"\|\nabla_{W_{\cdot j}}\mathcal{L}\|^2 = \lambda^2\|\delta_j\|^2"),
        assumptions=(*WEIGHT_ASSUMPTIONS, r"\lambda > 0"),
        conditions=(FIXED_DERIVATIVES,),
        derived_latex=rf"\hat{{g}}_j \le {to_latex(coefficient * g_j)}",
        slack_latex=r"\mathrm{RHS}_{4.1} - c\,\|g\|^2 = " + to_latex(reduction) + r" \le 0",
        equality=("the maximum is attained (so '=' holds) whenever a unit u orthogonal to 1 and yhat exists (d >= 3), by "
                  "X = lambda delta_j u^T/||delta_j||; shown exactly at d = 3"),
        concrete_m_checked=concrete[0], extra={"minimax_witness": witness},
        evidence=(steps + f"; RHS_4.1 - c ||g||^2 = {sp.sstr(reduction)} "
                  + ("<= 0 (SymPy)" if reduction_nonpositive else "(not shown <= 0)")
                  + ", so ghat_j <= c max ||X^T delta_j||^2 = c lambda^2 ||delta_j||^2 = c g_j; "
                  + ("attained exactly (concrete-m Jacobian) by X = lambda delta u^T, u orthogonal to 1 and yhat, "
                     "at d = 3: the additive reduction of thm4.1 does not survive the maximum over X, only the "
                     "factor c remains" if attained else "attainment not shown")
                  + "; holds with the derivatives held fixed (listed)"),
    )
    return {"thm4.4-per-unit": per_unit, "thm4.4": minimax}


# --- entry points -----------------------------------------------------------------------------------------


RESULT_KEY = result_key  # formula and layout: LayerNorm and GroupNorm share one establishment (`statements`)


def establish(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    """thm4.4 analogues for ROW and WEIGHTS layouts (COLUMN: `weight_space.establish`)."""
    layout = group_layout(derivation.normaliser)
    if layout is GroupLayout.ROW:
        return _row_results(derivation, concrete)
    if layout is GroupLayout.WEIGHTS:
        return _reparam_results(derivation, concrete)
    return {}


_CONCRETE_STATEMENTS = {  # layout -> (per-step statement, minimax statement) in LaTeX, typed thm4.1 form inside
    GroupLayout.COLUMN: (r"\|\nabla_{W_{\cdot j}}\hat{\mathcal{L}}\|^2 \le \|X\|_2^2\,\mathrm{RHS}_{4.1}",
                         r"\hat{g}_j \le \lambda^2\,\mathrm{RHS}_{4.1}\big|_{\|g\|^2 = g_j/\lambda^2}"),
    GroupLayout.ROW: (LAYER_GRAD_LATEX + r" \le \|X\|_2^2\sum_k\mathrm{RHS}_{4.1}(g_k)",
                      r"\hat{g} \le \lambda^2\sum_k\mathrm{RHS}_{4.1}(g_k)"),
    GroupLayout.WEIGHTS: (REPARAM_GRAD_LATEX + r" \le \mathrm{RHS}_{4.1}\big|_{\|g\|^2\to\|X\|_2^2\|\delta_j\|^2}",
                          r"\hat{g}_j \le \mathrm{RHS}_{4.1}\big|_{\|g\|^2\to\lambda^2\|\delta_j\|^2}"),
}


@functools.cache
def establish_concrete(normaliser: Normaliser, reason: str) -> dict[str, ClaimResult]:
    """The weight analogues of a normaliser without a symbolic-m closed form, from its concrete thm4.1 check.

    RHS_4.1 is the typed form (c = 1/m) with the normaliser's own sigma and yhat. X = I of the size
    that makes y = W (COLUMN: I_m; ROW: a batch of one sample, X = (1); WEIGHTS: I_d with delta = g)
    has ||X||_2 = 1 and dL-hat/dW = dL-hat/dy, so at lambda = 1 each weight statement reads exactly as
    thm4.1 at the same point: a thm4.1 counterexample refutes both, and where thm4.1 held at every
    point checked, the weight statements (thm4.1 composed with an identity and an operator-norm
    inequality that hold for every X) hold there too: `checked`, general_m false.
    """
    layout = group_layout(normaliser)
    thm41 = activation_concrete(normaliser, reason)["thm4.1"]
    rhs = paper_bound(APPENDIX_C).subs(sigma, normaliser.scale)
    found = thm41.counterexample
    transfer = {}
    if found is not None:  # re-evaluate the weight side at X = I, exactly, by the concrete-m Jacobian
        point = {**{y[i + 1]: v for i, v in enumerate(found.y)}, eps: found.epsilon, gamma: found.gamma}
        grad_y = concrete_jacobian_at(normaliser, found.m, point).T * sp.Matrix(found.g)
        identity = sp.eye(found.m) if layout is not GroupLayout.ROW else sp.eye(1)
        grad_w = identity.T * (grad_y if layout is not GroupLayout.ROW else grad_y.T)
        weight_lhs = sp.nsimplify(sp.expand(sum(e**2 for e in grad_w)))
        transfer = {"X": "I_m" if layout is not GroupLayout.ROW else "(1): one sample", "x_op_sq": "1", "lambda": "1",
                    "grad_W": [str(sp.nsimplify(e)) for e in grad_w], "lhs": str(weight_lhs),
                    "rhs": str(sp.nsimplify(found.rhs)), "violated": bool((weight_lhs - found.rhs).is_positive)}
    refuted = bool(transfer.get("violated"))
    results = {}
    for claim, statement in zip(CLAIM_IDS[layout], _CONCRETE_STATEMENTS[layout]):
        common = dict(
            claim=claim, normaliser=normaliser.name, general_m=False, statement_latex=statement,
            source=(f"analogue of Theorem 4.4 ({'minimax' if claim == 'thm4.4' else 'first step of its proof'}) with "
                    rf"thm4.1 as typed (c = 1/m), \sigma = {sp.latex(normaliser.scale)}; no symbolic-m closed form"),
            assumptions=thm41.assumptions + (r"y = XW", r"\lambda > 0"), concrete_m_checked=thm41.concrete_m_checked,
            derived_latex=r"\text{no closed form for symbolic } m;\ \mathrm{RHS}_{4.1} = " + sp.latex(rhs),
            conditions=(FIXED_DERIVATIVES,) if claim == "thm4.4" else (), extra={"x_identity_transfer": transfer},
        )
        if refuted:
            results[claim] = ClaimResult(status=Status.REFUTED, counterexample=found, measured_check="refuted", evidence=(
                f"inherits thm4.1's exact counterexample (m = {found.m}, eps = {found.epsilon}) with X = {transfer['X']} "
                f"(||X||_2 = 1, lambda = 1, so dL-hat/dW = dL-hat/dy): LHS = {transfer['lhs']} > RHS = "
                f"{transfer['rhs']}, re-evaluated by the concrete-m Jacobian"), **common)
        else:
            results[claim] = ClaimResult(status=Status.CHECKED, measured_check="bound", evidence=(
                "thm4.1 (typed form) holds at every concrete point checked, and the weight steps (dL-hat/dW = X^T V, "
                f"operator norm) hold for every X, so this holds there too; thm4.1: {thm41.evidence}"), **common)
    return results
