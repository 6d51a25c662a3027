"""Shared derivation for every normaliser: Jacobian, backward map and ||J^T g||^2, for symbolic m.

For a `Normaliser` with forward z_l (statistics inlined as batch sums):

    J_{lk}   = dz_l / dy_k                      (SymPy's diff through the sums, then reduced)
    v_k      = (J^T g)_k = sum_l J_{lk} g_l      (the gradient w.r.t. y given dL/dz = g)
    ||v||^2  = sum_k v_k^2                       (closed form in <1,g>, ||g||^2, <g,yhat>)

Each sum is reduced to batch invariants by `batch_algebra`; raw moments are replaced by the
normaliser's statistics, and sum_i g_i y_i by <g, yhat> (solved from the definition of yhat).
Nothing about the result is typed in: the paper's formulas are compared against it elsewhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from theory.batch_algebra import g, k, l, m, mixed_sum, reduce_sums, sign_parity, solve_moments, y
from theory.cache import cached
from theory.normaliser import Normaliser, g_hat


@dataclass(frozen=True, eq=False)  # identity equality: hashable, a cache key for later derivations
class Derivation:
    """Derived objects of one normaliser; expressions use the statistics' symbols unless noted."""

    normaliser: Normaliser
    moments: dict  # raw moment M_a -> expression in the statistics
    statistics_in_moments: dict  # statistic -> expression in raw moments (for numeric evaluation)
    jacobian: sp.Expr  # dz_l/dy_k, with KroneckerDelta(k, l), y[k], y[l]
    backward: sp.Expr  # (J^T g)_k, with y[k], g[k], G_1 = <1,g>, G_hat = <g,yhat>
    grad_sq_norm: sp.Expr  # ||J^T g||^2 in G_1, G_2 = ||g||^2, G_hat and the statistics

    def in_sigma(self, expr: sp.Expr) -> sp.Expr:
        """expr with the statistics written through the normalising scale sigma (presentation, proofs)."""
        return sp.simplify(expr.subs(self.normaliser.scale_of_sigma))


def _sum_over(expr: sp.Expr, index: sp.Symbol) -> sp.Expr:
    """sum_{index=1}^m expr, reduced to invariants."""
    dummy = sp.Dummy(str(index), integer=True, positive=True)
    return reduce_sums(sp.Sum(expr.subs(index, dummy), (dummy, 1, m)))


@functools.cache
def derive(normaliser: Normaliser) -> Derivation:
    """Derive the Jacobian and gradient-norm closed form of `normaliser` for symbolic batch size m.

    Cached on disk (`theory.cache`). Raises `batch_algebra.NoClosedForm` when a statistic is not
    polynomial in the batch (l1, l-inf): callers then derive for concrete m only.
    """
    return Derivation(normaliser, *cached("derivation", normaliser, lambda: _expressions_of_formula(normaliser)))


_EXPRESSIONS: dict = {}


def _expressions_of_formula(normaliser: Normaliser) -> tuple:
    """_derive_expressions, memoised per process by `Normaliser.formula_key`: LayerNorm, GroupNorm and l2
    have BatchNorm's formula (the same statistics' symbols), hence the very same derived expressions."""
    key = normaliser.formula_key()
    if key not in _EXPRESSIONS:
        _EXPRESSIONS[key] = _derive_expressions(normaliser)
    return _EXPRESSIONS[key]


def _derive_expressions(normaliser: Normaliser) -> tuple:
    moments = solve_moments(list(normaliser.statistics))
    statistics_in_moments = {s: sp.expand(reduce_sums(d)) for s, d in normaliser.statistics}
    for symbol in list(statistics_in_moments):  # earlier statistics inside later ones, as moments
        statistics_in_moments[symbol] = sp.expand(statistics_in_moments[symbol].subs(statistics_in_moments))

    def reduced(expr: sp.Expr) -> sp.Expr:
        return sp.simplify(sign_parity(expr.subs(moments)))  # sign_parity: a no-op without sign patterns

    jacobian = reduced(reduce_sums(sp.diff(normaliser.forward_inlined(l), y[k])))
    backward = reduced(_sum_over(jacobian * g[l], l))

    # sum_i g_i y_i appears raw; <g, yhat> = sum_i g_i hat(y_i) is linear in it, so solve for it.
    g_dot_y = mixed_sum(1, 1)
    g_hat_definition = reduced(_sum_over(g[l] * normaliser.hat(y[l]), l))
    (g_dot_y_in_hat,) = sp.solve(sp.Eq(g_hat, g_hat_definition), g_dot_y)
    backward = sp.simplify(backward.subs(g_dot_y, g_dot_y_in_hat))
    grad_sq_norm = reduced(_sum_over(backward.subs(k, l) ** 2, l))
    grad_sq_norm = sp.simplify(grad_sq_norm.subs(g_dot_y, g_dot_y_in_hat))
    return moments, statistics_in_moments, jacobian, backward, grad_sq_norm

