"""The same normaliser at a concrete batch size: an independent second route to its Jacobian.

The batch statistics of the forward formula are written out for m = M (`Sum.doit`; a batch max
becomes an explicit `Max` of M terms), giving an explicit z(y_1..y_M). Nothing here uses the
symbolic-m reduction of `batch_algebra`, so agreement between the two is evidence, and normalisers
without a symbolic-m closed form (l1, l-inf) are handled the same way. Two evaluations:

- `concrete_jacobian`: SymPy's `Matrix.jacobian` of the fully inlined forward (an explicit matrix,
  the obviously-correct reference; its entries grow quickly with M);
- `concrete_jacobian_at`: its value at one exact point by the chain rule through the statistics,
  dz_l/dy_k = gamma (delta_lk dhat_l/dy_l + sum_t dhat_l/dS_t dS_t/dy_k), each partial derivative
  taken by SymPy on the written-out statistic and then evaluated. Same matrix, far cheaper (no
  M x M matrix of large symbolic entries is built); the tests check the two agree for every normaliser.

Comparisons are made at exact rational points (symbolic simplification of an 8x8 Jacobian of
square roots takes minutes; exact rational arithmetic takes milliseconds and is just as exact).
Piecewise-smooth forwards (|.|, max) have kinks where the Jacobian does not exist; SymPy would
still return a number there (sign(0) = 0, Heaviside(0) = 1/2), so `differentiable_at` screens
points first.
"""

from __future__ import annotations

import functools
import random

import sympy as sp

from theory.batch_algebra import g, k, l, m, mixed_sum, y
from theory.derive import Derivation
from theory.normaliser import Normaliser, eps, g_hat, gamma


def batch_symbols(size: int) -> sp.Matrix:
    return sp.Matrix([y[i] for i in range(1, size + 1)])


def grad_symbols(size: int) -> sp.Matrix:
    return sp.Matrix([g[i] for i in range(1, size + 1)])


def _is_zero(expr: sp.Expr) -> bool:
    """Exact zero test: direct for rationals, `simplify` only for algebraic leftovers (square roots)."""
    expr = sp.expand(expr)
    return expr == 0 if expr.is_Rational else sp.simplify(expr) == 0


# --- the forward and its Jacobian, written out -----------------------------------------------------


@functools.cache
def concrete_statistics(normaliser: Normaliser, size: int) -> tuple[tuple[sp.Symbol, sp.Expr], ...]:
    """Each statistic at m = size as an explicit expression in y_1..y_size and the earlier statistics."""
    return tuple((symbol, definition.subs(m, size).doit()) for symbol, definition in normaliser.statistics)


@functools.cache
def concrete_forward(normaliser: Normaliser, size: int) -> sp.Matrix:
    """z(y_1, ..., y_size) with every batch statistic written out as an explicit sum (or max)."""
    return sp.Matrix([normaliser.forward_inlined(i).subs(m, size).doit() for i in range(1, size + 1)])


@functools.cache
def _jacobian_of(forward: sp.ImmutableMatrix, size: int) -> sp.ImmutableMatrix:
    # Keyed by the written-out formula, not the normaliser: LayerNorm and GroupNorm write out to the
    # very same z(y) as BatchNorm, so they share one (expensive) differentiation.
    return sp.ImmutableMatrix(forward.jacobian(batch_symbols(size)))


def concrete_jacobian(normaliser: Normaliser, size: int) -> sp.Matrix:
    """dz/dy (size x size) by Matrix.jacobian of the fully written-out forward; entry [l, k] = dz_l/dy_k."""
    return sp.Matrix(_jacobian_of(sp.ImmutableMatrix(concrete_forward(normaliser, size)), size))


def statistic_values_at(normaliser: Normaliser, size: int, point: dict) -> dict:
    """The statistics of the concrete batch at `point` (exact), computed in their defining order."""
    values: dict = {}
    for symbol, expr in concrete_statistics(normaliser, size):
        # one pass over point and earlier statistics together: a half-substituted Max (numbers and a
        # symbolic mu) would make SymPy compare its arguments symbolically, which is slow
        values[symbol] = expr.xreplace({**point, **values})
    return values


def _written_out_hats(normaliser: Normaliser, size: int) -> list[sp.Expr]:
    return [normaliser.hat(v).subs(m, size) for v in batch_symbols(size)]


@functools.cache
def _branch_atoms(normaliser: Normaliser, size: int) -> tuple:
    """Every |.|, max and min in the written-out statistics and hats (where the forward may have kinks)."""
    exprs = [e for _, e in concrete_statistics(normaliser, size)] + _written_out_hats(normaliser, size)
    atoms = {a for e in exprs for a in sp.preorder_traversal(e) if isinstance(a, (sp.Abs, sp.Max, sp.Min))}
    return tuple(sorted(atoms, key=sp.default_sort_key))


def _in_y(normaliser: Normaliser, size: int, expr: sp.Expr) -> sp.Expr:
    """expr with the statistics inlined and written out: a function of y_1..y_size alone."""
    return normaliser.inline(expr).subs(m, size).doit()


def _active_branches(normaliser: Normaliser, size: int, at: dict) -> tuple | None:
    """(max/min atom, its active argument) pairs at a point, or None at a kink.

    A kink: an |x| with x = 0, or a max/min attained by two arguments with different gradients
    (as functions of y). Two tied arguments with equal gradients are smooth: either one is active.
    Conservative: three or more tied arguments count as a kink, and so does an |x| at 0 even where
    an inactive max argument masks it; such points are skipped, never evaluated wrongly.
    """
    ys = list(batch_symbols(size))
    active = []
    for atom in _branch_atoms(normaliser, size):
        if isinstance(atom, sp.Abs):
            if _is_zero(atom.args[0].xreplace(at)):
                return None
            continue
        values = [a.xreplace(at) for a in atom.args]
        attained = atom.func(*values)  # a number: the max (min) of the evaluated arguments
        tied = [a for a, v in zip(atom.args, values) if _is_zero(v - attained)]
        if len(tied) > 2:
            return None
        if len(tied) == 2:
            gradients = [[_in_y(normaliser, size, a).diff(v).xreplace(at) for v in ys] for a in tied]
            if not all(_is_zero(p - q) for p, q in zip(*gradients)):
                return None
        active.append((atom, tied[0]))
    return tuple(active)


@functools.cache
def _plain_batch(size: int) -> dict:
    """y[i] -> a plain real Symbol: SymPy differentiates plain symbols far faster than `Indexed` ones
    (no KroneckerDelta between distinct indices to build and evaluate)."""
    return {v: sp.Symbol(f"_y{i + 1}", real=True) for i, v in enumerate(batch_symbols(size))}


@functools.cache
def _chain_rule_pieces(normaliser: Normaliser, size: int, active: tuple):
    """Partial derivatives of the written-out statistics and hats, each max/min replaced by its active
    argument (on a neighbourhood of a point off the kinks the forward IS that smooth branch).
    Expressed in the plain symbols of `_plain_batch`."""
    plain = _plain_batch(size)
    branch = dict(active)
    ys = list(plain.values())
    statistics = [(s, e.xreplace(branch).xreplace(plain)) for s, e in concrete_statistics(normaliser, size)]
    symbols = [symbol for symbol, _ in statistics]
    stat_by_y = [[expr.diff(v) for v in ys] for _, expr in statistics]
    stat_by_stat = [[expr.diff(u) for u in symbols[:t]] for t, (_, expr) in enumerate(statistics)]
    hats = [h.xreplace(branch).xreplace(plain) for h in _written_out_hats(normaliser, size)]
    hat_by_own = [h.diff(v) for h, v in zip(hats, ys)]
    hat_by_stat = [[h.diff(s) for s in symbols] for h in hats]
    return symbols, stat_by_y, stat_by_stat, hat_by_own, hat_by_stat


def differentiable_at(normaliser: Normaliser, size: int, point: dict) -> bool:
    """False at a kink of the forward, where the Jacobian does not exist (see `_active_branches`)."""
    at = {**point, **statistic_values_at(normaliser, size, point)}
    return _active_branches(normaliser, size, at) is not None


def concrete_jacobian_at(normaliser: Normaliser, size: int, point: dict) -> sp.Matrix:
    """concrete_jacobian(normaliser, size) evaluated at `point`, by the chain rule through the statistics.

    `point` gives y_1..y_size and eps (and gamma, else gamma stays a symbol). Raises ValueError at
    a kink of the forward (`differentiable_at`), where no Jacobian exists.
    """
    at = {**point, **statistic_values_at(normaliser, size, point)}
    active = _active_branches(normaliser, size, at)
    if active is None:
        raise ValueError(f"{normaliser.name} is not differentiable at {point} (a |x| at 0 or a tied max)")
    symbols, stat_by_y, stat_by_stat, hat_by_own, hat_by_stat = _chain_rule_pieces(normaliser, size, active)
    plain = _plain_batch(size)
    at = {plain.get(key, key): value for key, value in at.items()}
    total: list[list[sp.Expr]] = []  # total[t][k] = dS_t/dy_k
    for t in range(len(symbols)):
        partial = [d.xreplace(at) for d in stat_by_y[t]]
        for u, d_stat in enumerate(stat_by_stat[t]):
            weight = d_stat.xreplace(at)
            partial = [p + weight * total[u][c] for c, p in enumerate(partial)]
        total.append(partial)
    own = [d.xreplace(at) for d in hat_by_own]
    by_stat = [[d.xreplace(at) for d in row] for row in hat_by_stat]
    scale = point.get(gamma, gamma)
    return sp.Matrix(size, size, lambda r, c: scale * sp.expand(
        (own[r] if r == c else 0) + sum(by_stat[r][t] * total[t][c] for t in range(len(symbols)))))


# --- exact test points ---------------------------------------------------------------------------------


def exact_points(size: int, count: int, seed: int = 0) -> list[dict]:
    """Exact rational test points (y, g, eps) for a batch of `size`; eps chosen so sqrt(var + eps) is rational.

    Integer y in [-5, 5] (not all equal), integer g in [-5, 5]; eps = s^2 - var for a rational s
    with s^2 >= var, so every BatchNorm quantity is rational and comparisons are exact. The first
    point has eps = 0 whenever var is a perfect square. `exact_points_for` does the same for any
    normaliser's own scale.
    """
    rng = random.Random(seed * 1000 + size)
    points = []
    while len(points) < count:
        values = [rng.randint(-5, 5) for _ in range(size)]
        if len(set(values)) == 1:
            continue
        mean = sp.Rational(sum(values), size)
        var = sum((sp.Integer(v) - mean) ** 2 for v in values) / size
        root = sp.sqrt(var)
        scale = root if root.is_Rational and not points else sp.Rational(sp.ceiling(4 * root) + rng.randint(0, 4), 4)
        point = {y[i + 1]: sp.Integer(v) for i, v in enumerate(values)}
        point.update({g[i + 1]: sp.Integer(rng.randint(-5, 5)) for i in range(size)})
        point[eps] = scale**2 - var
        points.append(point)
    return points


def _eps_for_rational_scale(normaliser: Normaliser, size: int, point: dict, first: bool, rng) -> sp.Expr | None:
    """An eps >= 0 at which the normaliser's scale is rational at `point`, or None if eps cannot do it."""
    scale = normaliser.scale.subs(m, size).xreplace(statistic_values_at(normaliser, size, point))
    at_zero = scale.subs(eps, 0)
    if not scale.has(eps):
        return sp.Integer(0) if at_zero.is_Rational else None
    if first and at_zero.is_Rational:
        return sp.Integer(0)
    target = sp.Rational(sp.ceiling(4 * at_zero) + rng.randint(1, 4), 4)
    for power in (1, 2):  # scale or scale^2 affine in eps (eps added to a norm, or under a root): solve directly
        affine = sp.expand(scale**power)
        if affine.is_polynomial(eps) and sp.degree(affine, eps) == 1:
            root = (target**power - affine.coeff(eps, 0)) / affine.coeff(eps, 1)
            return root if root.is_Rational and root >= 0 else None
    roots = [r for r in sp.solve(sp.Eq(scale, target), eps) if r.is_Rational and r >= 0]
    return roots[0] if roots else None


def exact_points_for(normaliser: Normaliser, size: int, count: int, seed: int = 0, tries: int = 200) -> list[dict]:
    """Exact points (y, g, eps) where `normaliser` is differentiable and, where possible, its scale rational.

    As `exact_points`, for the normaliser's own scale: eps solves scale = s for a rational s above
    its eps = 0 value (the first point keeps eps = 0 when that is already rational). A scale without
    eps (WeightNorm's ||v||) is made rational by redrawing y, up to `tries` draws; after that an
    irrational scale is accepted (comparisons stay exact, only slower).
    """
    rng = random.Random(seed * 1000 + size)
    points: list[dict] = []
    draws = 0
    while len(points) < count:
        draws += 1
        values = [rng.randint(-5, 5) for _ in range(size)]
        if len(set(values)) == 1:
            continue
        point = {y[i + 1]: sp.Integer(v) for i, v in enumerate(values)}
        point.update({g[i + 1]: sp.Integer(rng.randint(-5, 5)) for i in range(size)})
        epsilon = _eps_for_rational_scale(normaliser, size, point, not points, rng)
        if epsilon is None:
            if draws < tries:
                continue
            epsilon = sp.Rational(1, 4)
        point[eps] = epsilon
        if differentiable_at(normaliser, size, point):
            points.append(point)
    return points


# --- invariants and the agreement check ------------------------------------------------------------


def statistics_at(derivation: Derivation, size: int) -> dict:
    """The statistics of a concrete batch as explicit expressions in y_1..y_size (via raw moments)."""
    ys = batch_symbols(size)
    moments = {sp.Symbol(f"M_{a}", real=True): sum(v**a for v in ys) / size for a in range(1, 5)}
    return {s: e.subs(moments).subs(m, size) for s, e in derivation.statistics_in_moments.items()}


def general_jacobian_at(derivation: Derivation, size: int) -> sp.Matrix:
    """The symbolic-m Jacobian J_lk instantiated at m = size (delta_lk -> identity)."""
    stats = statistics_at(derivation, size)
    entry = derivation.jacobian.subs(stats).subs(m, size)
    return sp.Matrix(size, size, lambda r, c: entry.subs({l: r + 1, k: c + 1}))


_ROW, _COLUMN, _DELTA = sp.symbols("_y_l _y_k _delta_lk", real=True)


def _general_jacobian_value(derivation: Derivation, size: int, point: dict) -> sp.Matrix:
    """general_jacobian_at(derivation, size) at `point`: statistics and scalars substituted first, then
    y_l, y_k and delta_lk as plain numbers per entry (the same values, far fewer tree rebuilds)."""
    stats = {s: e.xreplace(point) for s, e in statistics_at(derivation, size).items()}
    scalars = {key: value for key, value in point.items() if not isinstance(key, sp.Indexed)}
    entry = derivation.jacobian.xreplace(stats).xreplace(scalars).xreplace({m: sp.Integer(size)})
    entry = entry.xreplace({sp.KroneckerDelta(k, l): _DELTA, sp.KroneckerDelta(l, k): _DELTA, y[l]: _ROW, y[k]: _COLUMN})
    if entry.has(k, l):  # an unexpected form of the entry: substitute the indices themselves
        return general_jacobian_at(derivation, size).xreplace({**stats, **point})
    values = [point[v] for v in batch_symbols(size)]
    return sp.Matrix(size, size, lambda r, c: entry.xreplace(
        {_ROW: values[r], _COLUMN: values[c], _DELTA: sp.Integer(int(r == c))}))


def grad_invariants_at(normaliser: Normaliser, derivation: Derivation | None, size: int, point: dict) -> dict:
    """<1,g>, ||g||^2, <g,yhat> and the statistics of a concrete batch, evaluated exactly at point.

    With derivation None (no symbolic-m closed form) the statistics come from the written-out
    definitions (`statistic_values_at`) instead of the derivation's raw-moment expressions.
    """
    ys, gs = batch_symbols(size), grad_symbols(size)
    if derivation is None:
        stats = statistic_values_at(normaliser, size, point)
    else:
        stats = {s: e.xreplace(point) for s, e in statistics_at(derivation, size).items()}
    hats = [normaliser.hat(v).subs(m, size).xreplace(stats).xreplace(point) for v in ys]
    return {
        **stats,
        mixed_sum(0, 1): sum(gs).xreplace(point),
        mixed_sum(0, 2): sum(v**2 for v in gs).xreplace(point),
        g_hat: sum(gv.xreplace(point) * h for gv, h in zip(gs, hats)),
        m: sp.Integer(size),
    }


def agreement_at_points(derivation: Derivation, size: int, count: int = 4) -> dict:
    """Compare the symbolic-m results with the concrete-m route at exact rational points.

    Returns counts of points where (a) the Jacobians agree entry by entry and (b) the closed form
    of ||J^T g||^2 equals ||J_concrete^T g||^2, both exactly. Memoised per process by the formula
    (`Normaliser.formula_key`) and the derived expressions: LayerNorm, GroupNorm and l2 write out
    to BatchNorm's formula, so the same comparison is not recomputed for each name.
    """
    key = (derivation.normaliser.formula_key(), derivation.jacobian, derivation.grad_sq_norm, size, count)
    return dict(_agreement(key, derivation))


_AGREEMENT: dict = {}


def _agreement(key: tuple, derivation: Derivation) -> dict:
    if key not in _AGREEMENT:
        _AGREEMENT[key] = _agreement_at_points(derivation, key[-2], key[-1])
    return _AGREEMENT[key]


def _agreement_at_points(derivation: Derivation, size: int, count: int) -> dict:
    normaliser = derivation.normaliser
    jac_ok = norm_ok = 0
    points = exact_points_for(normaliser, size, count)
    for point in points:
        jc = concrete_jacobian_at(normaliser, size, point)
        jac_ok += all(_is_zero(a - b) for a, b in zip(_general_jacobian_value(derivation, size, point), jc))
        backward = jc.T * grad_symbols(size).xreplace(point)
        direct = sum(v**2 for v in backward)
        invariants = grad_invariants_at(normaliser, derivation, size, point)
        closed = derivation.grad_sq_norm.xreplace(invariants).xreplace(point)
        norm_ok += _is_zero(direct - closed)
    return {"m": size, "points": len(points), "jacobian_agree": jac_ok, "grad_sq_norm_agree": norm_ok}
