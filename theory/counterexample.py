"""Search for exact counterexamples to an inequality LHS <= RHS over concrete batches.

The left side is evaluated by the concrete-m route (`theory.concrete`: explicit sums, SymPy's
`Matrix.jacobian`), never by the symbolic-m closed form, so a counterexample found here does not
depend on the derivation it is meant to test. Points are small integers, so the counterexample is
exact and easy to read; the simplest violating point (smallest m, then smallest entries) wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import sympy as sp

from theory.batch_algebra import g, m, y
from theory.concrete import (
    batch_symbols,
    concrete_jacobian,
    grad_invariants_at,
    grad_symbols,
)
from theory.derive import Derivation
from theory.normaliser import eps, gamma


@dataclass(frozen=True)
class Counterexample:
    """A concrete batch where the statement fails, with both sides in exact arithmetic."""

    m: int
    epsilon: sp.Expr
    gamma: sp.Expr
    y: tuple
    g: tuple
    lhs: sp.Expr
    rhs: sp.Expr

    def as_dict(self) -> dict:
        return {
            "m": self.m,
            "epsilon": str(self.epsilon),
            "gamma": str(self.gamma),
            "y": [str(v) for v in self.y],
            "g": [str(v) for v in self.g],
            "lhs": str(self.lhs),
            "rhs": str(sp.nsimplify(self.rhs)),
            "lhs_float": float(self.lhs),
            "rhs_float": float(self.rhs),
        }


def _candidates(size: int, count: int, rng: random.Random, epsilon: sp.Expr):
    for _ in range(count):
        values = [rng.randint(-2, 2) for _ in range(size)]
        if len(set(values)) == 1:
            continue  # a constant batch has sigma = 0 at eps = 0: outside every statement's domain
        point = {y[i + 1]: sp.Integer(v) for i, v in enumerate(values)}
        point.update({g[i + 1]: sp.Integer(rng.randint(-2, 2)) for i in range(size)})
        point[eps] = epsilon
        point[gamma] = sp.Integer(1)
        yield point


def search_counterexample(
    derivation: Derivation,
    rhs: sp.Expr,
    sizes=range(2, 7),
    per_size: int = 60,
    epsilon: sp.Expr = sp.Integer(0),
    seed: int = 0,
) -> Counterexample | None:
    """The simplest batch (of the sampled ones) where ||J^T g||^2 > rhs, or None.

    `rhs` is an expression in G_1, G_2, G_hat, m, gamma, eps and the normaliser's statistics.
    """
    rng = random.Random(seed)
    normaliser = derivation.normaliser
    for size in sizes:
        jacobian = concrete_jacobian(normaliser, size)
        found = []
        for point in _candidates(size, per_size, rng, epsilon):
            backward = jacobian.xreplace(point).T * grad_symbols(size).xreplace(point)
            lhs = sp.nsimplify(sp.expand(sum(v**2 for v in backward)))
            invariants = grad_invariants_at(normaliser, derivation, size, point)
            right = sp.expand(rhs.xreplace(invariants).xreplace(point).subs(m, size))
            if sp.simplify(lhs - right).is_positive:
                found.append((sum(abs(v) for v in point.values() if v.is_Integer), point, lhs, right))
        if found:
            _, point, lhs, right = min(found, key=lambda item: item[0])
            return Counterexample(
                m=size,
                epsilon=point[eps],
                gamma=point[gamma],
                y=tuple(batch_symbols(size).xreplace(point)),
                g=tuple(grad_symbols(size).xreplace(point)),
                lhs=lhs,
                rhs=right,
            )
    return None
