"""Search for exact counterexamples to an inequality LHS <= RHS over concrete batches.

The left side ||J^T g||^2 is evaluated by the concrete-m route (`theory.concrete`: statistics
written out for the concrete m, differentiated by SymPy), never by the symbolic-m closed form, so a
counterexample found here does not depend on the derivation it is meant to test -- and a normaliser
without a closed form (l1, l-inf) is searched the same way. Points are small integers, so the
counterexample is exact and easy to read; the simplest violating point (smallest m, then smallest
entries) wins. Points where the forward is not differentiable (|x| at 0, a tied max) are skipped
and counted: the statement says nothing there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import sympy as sp

from theory.batch_algebra import g, m, y
from theory.concrete import (
    batch_symbols,
    concrete_jacobian_at,
    differentiable_at,
    grad_invariants_at,
    grad_symbols,
)
from theory.derive import Derivation
from theory.normaliser import Normaliser, eps, gamma


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


@dataclass(frozen=True)
class PointCheck:
    """What an exact search covered: every evaluated point obeyed LHS <= RHS unless a counterexample is set."""

    counterexample: Counterexample | None
    sizes: tuple[int, ...]  # the m searched (up to and including the one with the counterexample)
    epsilons: tuple  # the eps values searched
    points_checked: int  # differentiable points where both sides were compared exactly
    points_skipped: int  # candidates at a kink of the forward (no Jacobian there)
    max_ratio: float  # largest LHS / RHS over checked points with RHS > 0 (1.0: tight somewhere)

    def describe(self) -> str:
        eps_text = ", ".join(str(e) for e in self.epsilons)
        skipped = f" ({self.points_skipped} candidates at a kink skipped)" if self.points_skipped else ""
        return (f"{self.points_checked} exact integer points (y, g in [-2, 2]) at m = "
                f"{', '.join(map(str, self.sizes))} and eps = {eps_text}{skipped}; largest LHS/RHS = "
                f"{self.max_ratio:.6g}")


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


def _exceeds(lhs: sp.Expr, rhs: sp.Expr) -> bool:
    """lhs > rhs, decided exactly: directly for rationals; for algebraic numbers SymPy's sign test
    (interval evaluation to increasing precision, exact for a nonzero difference), `simplify` if undecided."""
    difference = sp.expand(lhs - rhs)
    if difference.is_Rational:
        return difference > 0
    positive = difference.is_positive
    return bool(sp.simplify(difference).is_positive) if positive is None else positive


def check_at_points(
    target: Derivation | Normaliser,
    rhs: sp.Expr,
    sizes=range(2, 7),
    per_size: int = 60,
    epsilons=(sp.Integer(0),),
    seed: int = 0,
    positive_rhs_only: bool = False,
) -> PointCheck:
    """Compare ||J^T g||^2 with `rhs` exactly at sampled integer points; stop at the first m that fails.

    `target` is a Derivation (statistics via its raw moments) or a bare Normaliser (statistics
    written out; for normalisers without a symbolic-m closed form). `rhs` is an expression in
    G_1, G_2, G_hat, m, gamma, eps and the normaliser's statistics. For each eps in turn, sizes
    are searched in order and the simplest violating point of the first failing size is returned.
    With `positive_rhs_only`, a violation counts only where rhs > 0 (for a right side that can be
    negative, a nonnegative left side above a negative number says nothing about the gradient).
    """
    derivation = target if isinstance(target, Derivation) else None
    normaliser = target.normaliser if derivation is not None else target
    rng = random.Random(seed)
    checked = skipped = 0
    max_ratio = 0.0
    searched: list[int] = []
    for epsilon in epsilons:
        for size in sizes:
            if size not in searched:
                searched.append(size)
            found = []
            for point in _candidates(size, per_size, rng, epsilon):
                if not differentiable_at(normaliser, size, point):
                    skipped += 1
                    continue
                backward = concrete_jacobian_at(normaliser, size, point).T * grad_symbols(size).xreplace(point)
                lhs = sp.expand(sum(v**2 for v in backward))
                lhs = lhs if lhs.is_Rational else sp.nsimplify(lhs)
                invariants = grad_invariants_at(normaliser, derivation, size, point)
                right = sp.expand(rhs.xreplace(invariants).xreplace(point).subs(m, size))
                checked += 1
                if right.is_positive:
                    max_ratio = max(max_ratio, float(lhs / right))
                if _exceeds(lhs, right) and (not positive_rhs_only or right.is_positive):
                    found.append((sum(abs(v) for v in point.values() if v.is_Integer), point, lhs, right))
            if found:
                _, point, lhs, right = min(found, key=lambda item: item[0])
                counterexample = Counterexample(
                    m=size,
                    epsilon=point[eps],
                    gamma=point[gamma],
                    y=tuple(batch_symbols(size).xreplace(point)),
                    g=tuple(grad_symbols(size).xreplace(point)),
                    lhs=lhs,
                    rhs=right,
                )
                return PointCheck(counterexample, tuple(searched), tuple(epsilons[: epsilons.index(epsilon) + 1]),
                                  checked, skipped, max_ratio)
    return PointCheck(None, tuple(searched), tuple(epsilons), checked, skipped, max_ratio)


def search_counterexample(
    derivation: Derivation | Normaliser,
    rhs: sp.Expr,
    sizes=range(2, 7),
    per_size: int = 60,
    epsilon: sp.Expr = sp.Integer(0),
    seed: int = 0,
) -> Counterexample | None:
    """The simplest batch (of the sampled ones) where ||J^T g||^2 > rhs, or None (see `check_at_points`)."""
    return check_at_points(derivation, rhs, sizes, per_size, (epsilon,), seed).counterexample
