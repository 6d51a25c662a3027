"""Exact counterexamples to lem4.5 as printed: a reconstruction of the published one, and the project's own.

One neuron, identity activation, no bias in the standard network f(x) = <w, x>; the BN network normalises
y = X w over the batch (eps = 0, the paper's setting) and outputs gamma yhat + beta; loss: mean squared error.

- Published (Dannemann & Junike 2025, arXiv:2502.17913), RECONSTRUCTED from its description only -- one neuron,
  identity activation, a 3-point dataset, BN optima on the ray 3 w1 = 5 w2 (w1 > 0), a nonzero BN gradient at
  the standard optimum. `PUBLISHED_X`, `PUBLISHED_T` are small-integer data with exactly these properties,
  derived below; that they are the paper's own data is not claimed (many datasets share the description).
- The project's own: the violation found by `rescaled_optima` (16 samples, 3 features), with its float64 data
  read as the exact rationals they are and every optimum and distance recomputed in rational arithmetic.

In both, the BN optima are the line {c v : c != 0} through the centred least-squares direction v (gamma absorbs
c; with gamma fixed at 1 only c > 0 is optimal, the ray), W* is the ordinary least-squares solution without
intercept, and lem4.5 with W0 = W* claims ||W* - What*||^2 <= 0, i.e. that W* is a BN optimum.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

PUBLISHED_X = ((1, 0), (0, 1), (1, -1))  # three inputs in R^2
PUBLISHED_T = (2, 0, -1)  # targets: t = X (5, 3) - 3, so the centred least-squares direction is (5, 3)


@dataclass(frozen=True)
class InitialisationCounterexample:
    """An initialisation W0 with <W0, W*> > 0 whose closest BN optimum is farther than lem4.5 allows (exact)."""

    source: str
    X: tuple
    t: tuple
    W0: tuple
    W_star: tuple  # the standard optimum (unique)
    bn_direction: tuple  # v: the BN optima are c v
    W_bn: tuple  # the BN optimum closest to W0
    lhs: sp.Expr  # ||W0 - W_bn||^2
    rhs: sp.Expr  # ||W0 - W*||^2 - (||W*||^2 - <W*, W0>)^2 / ||W*||^2
    facts: dict  # JSON-able: what was derived about this instance

    def as_dict(self) -> dict:
        text = lambda values: [str(v) for v in values]
        return {"source": self.source, "X": [text(row) for row in self.X], "t": text(self.t), "W0": text(self.W0),
                "W_star": text(self.W_star), "bn_direction": text(self.bn_direction), "W_bn": text(self.W_bn),
                "lhs": str(self.lhs), "rhs": str(self.rhs), "lhs_float": float(self.lhs), "rhs_float": float(self.rhs),
                **self.facts}


def _centred(matrix: sp.Matrix) -> sp.Matrix:
    return matrix - sp.ones(matrix.rows, 1) * (sp.ones(1, matrix.rows) * matrix) / matrix.rows


def optima(X: sp.Matrix, t: sp.Matrix) -> tuple[sp.Matrix, sp.Matrix]:
    """(W*, v): least squares without intercept (standard), centred least squares (BN), exactly."""
    w_star = (X.T * X).inv() * X.T * t
    Xc, tc = _centred(X), _centred(t)
    return w_star, (Xc.T * Xc).inv() * Xc.T * tc


def lemma_sides(w0: sp.Matrix, w_star: sp.Matrix, direction: sp.Matrix) -> tuple[sp.Matrix, sp.Expr, sp.Expr]:
    """(closest BN optimum, ||W0 - What*||^2, the lemma's right side): What* = projection of W0 on the line of v."""
    dot = lambda p, q: (p.T * q)[0]
    w_bn = dot(w0, direction) / dot(direction, direction) * direction
    rhs = dot(w0 - w_star, w0 - w_star) - (dot(w_star, w_star) - dot(w_star, w0)) ** 2 / dot(w_star, w_star)
    return w_bn, sp.nsimplify(dot(w0 - w_bn, w0 - w_bn)), sp.nsimplify(rhs)


def bn_gradients_at(X: sp.Matrix, t: sp.Matrix, w: sp.Matrix) -> dict[str, list[sp.Expr]]:
    """dL-hat/dw at w (eps = 0), with (gamma, beta) = (1, 0) fixed and with them at their optimum for w."""
    m = X.rows
    symbols = sp.symbols(f"w1:{X.cols + 1}", real=True)
    gamma, beta = sp.symbols("gamma beta", real=True)
    y = X * sp.Matrix(symbols)
    centred = y - sp.ones(m, 1) * sum(y) / m
    yhat = centred / sp.sqrt((centred.T * centred)[0] / m)
    loss = sum((gamma * h + beta - target) ** 2 for h, target in zip(yhat, t)) / m
    at = dict(zip(symbols, w))
    yhat_at = yhat.subs(at)
    best = {gamma: sp.simplify((yhat_at.T * t)[0] / m), beta: sum(t) / m}  # ||yhat||^2 = m, <yhat, 1> = 0
    grad = lambda fixed: [sp.radsimp(sp.simplify(sp.diff(loss, v).subs(fixed).subs(at))) for v in symbols]
    return {"gamma_1_beta_0": grad({gamma: 1, beta: 0}), "gamma_beta_optimal": grad(best)}


@functools.cache
def bn_optimum_ray(X_rows=PUBLISHED_X, t_values=PUBLISHED_T) -> dict:
    """The BN optima (gamma = 1, beta = 0, eps = 0) of 2-feature data, derived: minimising the loss is maximising
    F(w) = <u, t>/||u||, u = X_c w (||yhat||^2 = m); grad F = 0 iff X_c^T (t ||u||^2 - <u, t> u) = 0, a cubic
    system solved by SymPy; the solution line's half with <u, t> > 0 maximises F."""
    X, t = sp.Matrix(X_rows), sp.Matrix(t_values)
    w1, w2 = sp.symbols("w1 w2", real=True)
    u = _centred(X) * sp.Matrix([w1, w2])
    stationary = _centred(X).T * (t * (u.T * u)[0] - (u.T * t)[0] * u)
    lines = sp.solve([sp.expand(e) for e in stationary], [w1, w2], dict=True)
    nonzero = [sol for sol in lines if sol.get(w1, w1) != 0 or sol.get(w2, w2) != 0]
    (line,) = [sol for sol in nonzero if w1 in sol or w2 in sol]
    direction = sp.Matrix([line.get(w1, w1), line.get(w2, w2)]).subs({w1: 1, w2: 1} if w1 not in line else {w2: 1})
    increasing = (u.T * t)[0].subs({w1: direction[0], w2: direction[1]})
    if increasing < 0:
        direction = -direction
    return {"line": {str(k): str(v) for k, v in line.items()}, "direction": tuple(direction),
            "relation": str(sp.Eq(3 * w1, 5 * w2)) if sp.simplify(3 * direction[0] - 5 * direction[1]) == 0 else "",
            "minimiser_half": "w1 > 0" if direction[0] > 0 else "w1 < 0"}


@functools.cache
def published_reconstruction() -> tuple[InitialisationCounterexample, ...]:
    """Two exact violations on the reconstructed 3-point dataset: W0 = W*, and W0 = (0, 1)."""
    X, t = sp.Matrix(PUBLISHED_X), sp.Matrix(PUBLISHED_T)
    w_star, direction = optima(X, t)
    ray = bn_optimum_ray()
    gradients = bn_gradients_at(X, t, w_star)
    facts = {"bn_optima": f"{ray['relation']}, {ray['minimiser_half']} (SymPy: stationary lines of the BN loss)",
             "bn_gradient_at_W_star": {k: [str(v) for v in grad] for k, grad in gradients.items()},
             "reconstruction": ("data chosen to match the published description (one neuron, identity activation, 3 "
                                "points, BN optima 3 w1 = 5 w2 with w1 > 0, nonzero BN gradient at W*); not claimed to "
                                "be the paper's own data")}
    found = []
    for w0 in (w_star, sp.Matrix([0, 1])):
        w_bn, lhs, rhs = lemma_sides(w0, w_star, direction)
        found.append(InitialisationCounterexample(
            source="Dannemann & Junike (2025), arXiv:2502.17913 -- reconstruction", X=PUBLISHED_X, t=PUBLISHED_T,
            W0=tuple(w0), W_star=tuple(w_star), bn_direction=tuple(direction), W_bn=tuple(w_bn), lhs=lhs, rhs=rhs,
            facts={**facts, "inner_W0_W_star": str((w0.T * w_star)[0])}))
    return tuple(found)


def exact_from_experiment(found) -> InitialisationCounterexample:
    """`rescaled_optima.LemmaCounterexample` (float64) re-checked exactly: its data read as exact rationals."""
    exact = lambda values: [sp.Rational(v) for v in values]  # a float64 IS a dyadic rational: no rounding here
    X, t, w0 = sp.Matrix([exact(row) for row in found.X]), sp.Matrix(exact(found.t)), sp.Matrix(exact(found.W0))
    w_star, direction = optima(X, t)
    w_bn, lhs, rhs = lemma_sides(w0, w_star, direction)
    cross = (w_star * direction.T - direction * w_star.T).applyfunc(sp.simplify)
    return InitialisationCounterexample(
        source=f"this project: rescaled_optima, case '{found.case}', re-checked in exact rational arithmetic",
        X=tuple(tuple(row) for row in found.X), t=tuple(found.t), W0=tuple(found.W0),
        W_star=tuple(float(v) for v in w_star), bn_direction=tuple(float(v) for v in direction),
        W_bn=tuple(float(v) for v in w_bn), lhs=lhs, rhs=rhs,
        facts={"inner_W0_W_star_positive": bool((w0.T * w_star)[0] > 0),
               "W_star_parallel_to_bn_direction": cross == sp.zeros(*cross.shape),
               "float64_lhs_rhs": [found.lhs, found.rhs], "exact_lhs_minus_rhs_float": float(lhs - rhs),
               "note": "X, t, W0 as float64 values, exactly; W_star, bn_direction, W_bn rounded for display only"})
