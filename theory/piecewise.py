"""Piecewise-smooth normalisers (l1, l-inf) on one smooth piece: closed forms for symbolic m after all.

|y_i - c| and max_i |y_i - c| are not polynomials in the batch, so `derive` finds no closed form in batch
moments. But the forward is smooth off its kinks, and on each smooth piece its statistics ARE of the
polynomial kind, in a few more invariants:

    |y_i - c|        = s_i (y_i - c),   s_i = sign(y_i - c): the sign pattern, locally constant in y
    max_i |y_i - c|  = s_a (y_a - c),   a the unique maximiser (the active sample), s_a = sign(y_a - c)

`branch_normaliser` rewrites the statistics so (nothing else changes: the same hat, scale and axis), and
`derive` -- with the signed sums of `batch_algebra` -- gives the Jacobian and ||J^T g||^2 for symbolic m in
the invariants of `INVARIANTS`: for l1 the mean sign sbar = (1/m) sum_i s_i and <g, s>; for l-inf g_a and
s_a. The result is exact on the open set where the pattern (or the active sample) does not change: every
y_i != c, the maximum attained by one sample. `agreement` compares it with the concrete-m Jacobian of the
ORIGINAL formula (`theory.concrete`, Abs and Max written out) at exact points: an independent route.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from theory.batch_algebra import BatchMax, NoClosedForm, g, m, mixed_sum, s, y
from theory.concrete import (
    concrete_jacobian_at,
    differentiable_at,
    exact_points_for,
    grad_symbols,
    statistic_values_at,
)
from theory.derive import Derivation, derive
from theory.normaliser import Normaliser, g_hat

active = sp.Symbol("a", integer=True, positive=True)  # the active sample of a batch max (1 <= a <= m)
s_bar, g_sign = sp.Symbol("s_bar", real=True), sp.Symbol("G_s", real=True)  # mean sign, <g, s>
g_active, s_active = sp.Symbol("g_a", real=True), sp.Symbol("s_a", real=True)  # g and the sign at the active sample
yhat_sq = sp.Symbol("Y_2", nonnegative=True)  # ||yhat||^2, not a statistic of l1 / l-inf: a measured invariant

# Invariant -> the per-group reduction a measurement must provide (`theory.numeric.piecewise_callable`).
INVARIANTS = {
    mixed_sum(0, 2): "g_sq", mixed_sum(0, 1): "g_sum", g_hat: "g_yhat", g_sign: "g_sign", s_bar: "sign_mean",
    g_active: "g_at_max", s_active: "sign_at_max", yhat_sq: "yhat_sq",
}
REDUCTION_MEANINGS = {
    "g_sq": "||g||^2", "g_sum": "<1, g>", "g_yhat": "<g, yhat>", "g_sign": "<g, s>, s_i = sign(y_i - mu)",
    "sign_mean": "(1/m) sum_i sign(y_i - mu)", "g_at_max": "g_a, a = argmax_i |y_i - mu|",
    "sign_at_max": "sign(y_a - mu), a = argmax_i |y_i - mu|", "yhat_sq": "||yhat||^2 = sum_i yhat_i^2",
}


def _centre(argument: sp.Expr, index) -> sp.Expr:
    """c for an argument +-(y_index - c) (c free of the index), else NoClosedForm."""
    for orientation in (1, -1):
        centre = sp.expand(y[index] - orientation * argument)
        if not centre.has(index):
            return centre
    raise NoClosedForm(f"|{argument}| is not |y_i - c| with c free of i: no sign pattern to branch on")


def _branch_statistic(definition: sp.Expr, centres: set) -> sp.Expr:
    """The statistic on one smooth piece: |y_i - c| -> s_i (y_i - c) inside sums, max_i |y_i - c| -> s_a (y_a - c)."""
    replacements = {}
    for reduction in definition.atoms(BatchMax):
        ((index, _, _),) = reduction.limits
        if not isinstance(reduction.function, sp.Abs):
            raise NoClosedForm(f"{reduction}: only a maximum of |y_i - c| has a smooth piece handled here")
        centre = _centre(reduction.function.args[0], index)
        centres.add(centre)
        replacements[reduction] = s[active] * (y[active] - centre)
    for total in definition.atoms(sp.Sum):
        ((index, _, _),) = total.limits
        inner = {}
        for atom in total.function.atoms(sp.Abs):
            if atom.has(index):
                centre = _centre(atom.args[0], index)
                centres.add(centre)
                inner[atom] = s[index] * (y[index] - centre)  # |y_i - c| = s_i (y_i - c), s_i = sign(y_i - c)
        if inner:
            replacements[total] = sp.Sum(total.function.xreplace(inner), *total.limits)
    return definition.xreplace(replacements)


@functools.cache
def branch_normaliser(normaliser: Normaliser) -> tuple[Normaliser, str, sp.Expr]:
    """(the normaliser on one smooth piece, its kind -- 'sign pattern' or 'active sample' --, the centre c)."""
    centres: set = set()
    statistics = tuple((symbol, _branch_statistic(definition, centres)) for symbol, definition in normaliser.statistics)
    if not centres:
        raise NoClosedForm(f"{normaliser.name}: no |y_i - c| or max_i |y_i - c| to branch on")
    if len(centres) > 1:
        raise NoClosedForm(f"{normaliser.name}: sign patterns around several centres {sorted(map(str, centres))}")
    kind = "active sample" if any(d.has(BatchMax) for _, d in normaliser.statistics) else "sign pattern"
    branch = Normaliser(name=f"{normaliser.name}~piece", title=f"{normaliser.title}, one smooth piece",
                        axis=normaliser.axis, statistics=statistics, hat=normaliser.hat, scale=normaliser.scale,
                        scale_of_sigma=normaliser.scale_of_sigma, paper_form=False)
    return branch, kind, centres.pop()


def presentable(expr: sp.Expr) -> sp.Expr:
    """expr with g[a], s[a] (the active sample's entries) as the plain symbols g_a, s_a."""
    return expr.xreplace({g[active]: g_active, s[active]: s_active})


@dataclass(frozen=True, eq=False)  # identity equality: hashable, a cache key for later derivations
class PiecewiseDerivation:
    """`derive` on one smooth piece, and what it takes to evaluate it (expressions via `presentable`)."""

    normaliser: Normaliser  # the original formula (Abs / BatchMax)
    branch: Derivation  # the derivation of `branch_normaliser(normaliser)`
    kind: str  # "sign pattern" (l1) or "active sample" (l-inf)
    centre: sp.Expr  # c in s_i = sign(y_i - c), in the statistics' symbols

    @property
    def grad_sq_norm(self) -> sp.Expr:
        return presentable(self.branch.grad_sq_norm)

    def in_sigma(self, expr: sp.Expr) -> sp.Expr:
        return self.branch.in_sigma(expr)

    @property
    def domain(self) -> str:
        if self.kind == "active sample":
            return f"the maximum of |y_i - {self.centre}| is attained by one sample a only (no tie)"
        return f"no y_i equals {self.centre} (the sign pattern s_i = sign(y_i - {self.centre}) is locally constant)"


@functools.cache
def derive_piecewise(normaliser: Normaliser) -> PiecewiseDerivation:
    """Jacobian and ||J^T g||^2 of `normaliser` on one smooth piece, for symbolic m (NoClosedForm if none)."""
    branch, kind, centre = branch_normaliser(normaliser)
    return PiecewiseDerivation(normaliser, derive(branch), kind, centre)


def invariants_at(derivation: PiecewiseDerivation, size: int, point: dict) -> dict:
    """Every invariant of the piecewise closed forms at a concrete differentiable point, exactly."""
    normaliser = derivation.normaliser
    stats = statistic_values_at(normaliser, size, point)
    ys = [point[y[i]] for i in range(1, size + 1)]
    gs = [point.get(g[i], g[i]) for i in range(1, size + 1)]
    centre = derivation.centre.xreplace(stats)
    signs = [sp.sign(v - centre) for v in ys]
    hats = [normaliser.hat(v).subs(m, size).xreplace(stats).xreplace(point) for v in ys]
    values = {**stats, m: sp.Integer(size), mixed_sum(0, 1): sum(gs), mixed_sum(0, 2): sum(v**2 for v in gs),
              g_hat: sum(a * b for a, b in zip(gs, hats)), s_bar: sp.Rational(sum(signs), size),
              g_sign: sum(a * b for a, b in zip(gs, signs)), yhat_sq: sum(h**2 for h in hats)}
    deviations = [abs(v - centre) for v in ys]
    top = max(range(size), key=lambda i: deviations[i])
    values.update({g_active: gs[top], s_active: signs[top]})
    return values


def _is_zero(expr: sp.Expr) -> bool:
    expr = sp.expand(expr)
    return expr == 0 if expr.is_Rational else sp.simplify(expr) == 0


@functools.cache
def agreement(derivation: PiecewiseDerivation, sizes: tuple[int, ...], count: int = 4) -> tuple[tuple[int, ...], str]:
    """(sizes where the closed form equals ||J^T g||^2 by the concrete-m Jacobian at every exact point, text)."""
    normaliser = derivation.normaliser
    good, points = [], 0
    for size in sizes:
        ok = 0
        chosen = [p for p in exact_points_for(normaliser, size, count) if differentiable_at(normaliser, size, p)]
        for point in chosen:
            backward = concrete_jacobian_at(normaliser, size, point).T * grad_symbols(size).xreplace(point)
            closed = derivation.grad_sq_norm.xreplace(invariants_at(derivation, size, point)).xreplace(point)
            ok += _is_zero(sum(v**2 for v in backward) - closed)
        points += len(chosen)
        if chosen and ok == len(chosen):
            good.append(size)
    text = (f"the piecewise closed form equals ||J^T g||^2 by the concrete-m Jacobian of the original formula (Abs and "
            f"Max written out, differentiated exactly) at {points} exact points, m = {', '.join(map(str, good))}")
    return tuple(good), text
