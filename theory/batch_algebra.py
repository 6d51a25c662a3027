"""Symbolic sums over a batch of symbolic size m, and their reduction to batch invariants.

A batch is the vector y = (y_1, ..., y_m) with m a positive integer *symbol*; an upstream gradient
is g = (g_1, ..., g_m). Batch statistics are written as SymPy `Sum`s over an index running from 1
to m, so SymPy's own `diff` differentiates through them (it yields `KroneckerDelta`s). This module
then rewrites every sum into a closed form in a few invariants, which makes the derivation hold for
every m at once rather than for one concrete batch size:

    sum_i delta_{ik} f(i)    ->  f(k)                       (index collapse, k in 1..m)
    sum_i c                  ->  m c                        (c free of i)
    sum_i y_i^a              ->  m M_a                      (raw moments of y)
    sum_i g_i^b y_i^a        ->  S[a, b]                    (mixed sums; S[0,1] = <1,g>, S[0,2] = ||g||^2)
    sum_i s_i g_i^b y_i^a    ->  T[a, b]                    (signed sums; T[0,0] = m sbar, T[0,1] = <g,s>,
                                                             T[a,0] = m N_a, signed raw moments)

Raw moments are later eliminated in favour of the normaliser's own statistics (`solve_moments`).
A sum that is not a polynomial in (y_i, g_i) — e.g. sum_i |y_i - mu| — has no such closed form;
reducing it raises `NoClosedForm`, and callers fall back to concrete batch sizes. So does a batch
maximum (`batch_max`, e.g. the l-inf norm max_i |y_i - mu|), which is not a sum at all; for a
concrete m it expands (`doit`) to an explicit `Max` of m terms.

Piecewise-smooth statistics are reduced on one smooth piece (`theory.piecewise`): there |y_i - c|
is s_i (y_i - c) with the sign pattern s_i = sign(y_i - c) locally constant (s_i^2 = 1 off the
kinks), and `s` enters the sums like y and g, with its powers taken mod 2 (`sign_parity`).
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits

m = sp.Symbol("m", integer=True, positive=True)
y = sp.IndexedBase("y", real=True)
g = sp.IndexedBase("g", real=True)
# The sign pattern s_i = sign(y_i - c) of a batch around a centre c, on one smooth piece of a piecewise
# statistic (`theory.piecewise`): locally constant in y (so d s_i / d y_k = 0) and s_i^2 = 1 off the kinks.
s = sp.IndexedBase("s", real=True)
# Free output/input indices of a Jacobian entry dz_l/dy_k and a summation index.
k, l = sp.symbols("k l", integer=True, positive=True)


class NoClosedForm(ValueError):
    """A batch sum is not a polynomial in (y_i, g_i), so it has no closed form for symbolic m."""


@functools.cache
def raw_moment(a: int) -> sp.Symbol:
    """M_a = (1/m) sum_i y_i^a."""
    return sp.Symbol(f"M_{a}", real=True)


@functools.cache
def mixed_sum(a: int, b: int) -> sp.Symbol:
    """S[a, b] = sum_i y_i^a g_i^b for b >= 1 (g enters linearly or quadratically in gradient norms)."""
    names = {(0, 1): "G_1", (0, 2): "G_2"}
    return sp.Symbol(names.get((a, b), f"S_{a}{b}"), real=True)


@functools.cache
def signed_sum(a: int, b: int) -> sp.Expr:
    """T[a, b] = sum_i s_i y_i^a g_i^b (s the sign pattern): m sbar, <g, s>, m N_a, or a symbol T_ab."""
    if (a, b) == (0, 0):
        return m * sp.Symbol("s_bar", real=True)  # sbar = (1/m) sum_i s_i, the mean sign
    if b == 0:
        return m * sp.Symbol(f"N_{a}", real=True)  # signed raw moment (1/m) sum_i s_i y_i^a
    return sp.Symbol("G_s" if (a, b) == (0, 1) else f"T_{a}{b}", real=True)


def sign_parity(expr: sp.Expr) -> sp.Expr:
    """expr with every power s_i^n of a sign reduced to s_i^(n mod 2) (s_i = +-1 off the kinks; 1/s_i = s_i)."""
    if not expr.has(s):
        return expr
    return expr.replace(
        lambda e: e.is_Pow and isinstance(e.base, sp.Indexed) and e.base.base == s and e.exp.is_Integer,
        lambda e: e.base if int(e.exp) % 2 else sp.Integer(1))


def batch_mean(summand_of_index, name: str) -> sp.Expr:
    """(1/m) sum_{i=1}^m summand(i), with a fresh dummy index so nested statistics never clash."""
    i = sp.Dummy(name, integer=True, positive=True)
    return sp.Sum(summand_of_index(i), (i, 1, m)) / m


class BatchMax(ExprWithLimits):
    """max_{i=1..m} f(i), a batch statistic that is not a sum (the l-inf norm of the centred batch).

    Unevaluated for symbolic m (`reduce_sums` rejects it with `NoClosedForm`); `doit` at a concrete
    upper limit expands it to `Max(f(1), ..., f(m))` (unevaluated), which is differentiable wherever
    the maximum is attained by a single term (`theory.concrete` handles the kinks).
    """

    def doit(self, **hints):
        ((index, lower, upper),) = self.limits
        function = self.function.doit(**hints) if hints.get("deep", True) else self.function
        if not (lower.is_Integer and upper.is_Integer):
            return self.func(function, (index, lower, upper))
        # evaluate=False: SymPy's Max would compare every pair of symbolic arguments (O(m^2) assumption
        # queries, seconds at m = 6) and can decide nothing about |y_i - mu| vs |y_j - mu| anyway.
        return sp.Max(*[function.subs(index, value) for value in range(int(lower), int(upper) + 1)], evaluate=False)

    def _eval_is_extended_real(self):
        return self.function.is_extended_real

    def _eval_is_nonnegative(self):
        if self.function.is_nonnegative:
            return True
        return None

    def _latex(self, printer):
        ((index, lower, upper),) = self.limits
        return (rf"\max_{{{printer._print(index)}={printer._print(lower)}}}^{{{printer._print(upper)}}} "
                rf"{printer._print(self.function)}")


def batch_max(summand_of_index, name: str) -> sp.Expr:
    """max_{i=1}^m summand(i), with a fresh dummy index (a statistic like `batch_mean`, but a max)."""
    i = sp.Dummy(name, integer=True, positive=True)
    return BatchMax(summand_of_index(i), (i, 1, m))


def _monomial_sum(term: sp.Expr, i: sp.Symbol) -> sp.Expr:
    """Closed form of sum_i term, where term is a product of factors, some depending on i."""
    factors = sp.Mul.make_args(term)
    constant = sp.Mul(*[f for f in factors if not f.has(i)])
    dependent = [f for f in factors if f.has(i)]
    if not dependent:
        return m * constant
    deltas = [f for f in dependent if isinstance(f, sp.KroneckerDelta)]
    if deltas:
        # sum_i delta_{i j} h(i) = h(j); the other index ranges over 1..m by construction.
        delta = deltas[0]
        other = delta.args[1] if delta.args[0] == i else delta.args[0]
        rest = sp.Mul(*[f for f in dependent if f is not delta])
        return constant * rest.subs(i, other)
    powers = {"y": 0, "g": 0, "s": 0}
    for factor in dependent:
        base, exponent = factor.as_base_exp()
        if not (isinstance(base, sp.Indexed) and base.indices == (i,) and str(base.base) in powers
                and exponent.is_Integer and exponent > 0):
            raise NoClosedForm(f"sum over the batch of {term} is not a polynomial in y_i, g_i")
        powers[str(base.base)] += int(exponent)
    a, b = powers["y"], powers["g"]
    if powers["s"] % 2:
        return constant * signed_sum(a, b)
    if b == 0:
        return constant * m * (raw_moment(a) if a else 1)  # an even power of s_i alone: s_i^2 = 1
    return constant * mixed_sum(a, b)


def _reduce_sum_body(expr: sp.Expr, i) -> sp.Expr:
    """Reduce all sums inside expr (innermost first); if i is given, also sum expr over i."""
    reduced = reduce_sums(expr)
    if i is None:
        return reduced
    return sp.Add(*[_monomial_sum(term, i) for term in sp.Add.make_args(sp.expand(reduced))])


def reduce_sums(expr: sp.Expr) -> sp.Expr:
    """Replace every batch `Sum` in expr by its closed form in M_a, S[a, b] and m."""
    if isinstance(expr, BatchMax):
        raise NoClosedForm(f"{expr} is a maximum over the batch, not a polynomial sum: no closed form in "
                           "batch moments for symbolic m")
    if isinstance(expr, sp.Sum):
        ((i, lower, upper),) = expr.limits
        if (lower, upper) != (1, m):
            raise NoClosedForm(f"sum with limits ({lower}, {upper}) is not over the batch 1..m")
        return _reduce_sum_body(expr.function, i)
    if not expr.args or isinstance(expr, (sp.Indexed, sp.KroneckerDelta)):
        return expr
    return expr.func(*[reduce_sums(arg) for arg in expr.args])


def solve_moments(statistics: list[tuple[sp.Symbol, sp.Expr]]) -> dict[sp.Symbol, sp.Expr]:
    """Express raw moments M_a through the statistics.

    Each statistic S = (1/m) sum_i f(y_i, earlier statistics) reduces to a polynomial in raw
    moments; solving it for the one raw moment it introduces gives M_a as a function of the
    statistics (for BatchNorm: M_1 = mu, M_2 = var + mu^2). A signed raw moment N_a counts as a
    raw moment; the mean sign sbar stays an invariant (l1 on a sign pattern: N_1 = mad + mu sbar).
    A statistic of one sample y_a (the active piece of a batch max: dmax = s_a (y_a - mu)) is solved
    for that sample instead (y_a = mu + s_a dmax).
    """
    solution: dict[sp.Symbol, sp.Expr] = {}
    for symbol, definition in statistics:
        reduced = sp.expand(reduce_sums(definition).subs(solution))
        samples = {ix for ix in reduced.atoms(sp.Indexed) if ix.base == y}
        if not reduced.has(sp.Sum) and len(samples) == 1 and not any(
                x.name[:2] in ("M_", "N_") for x in reduced.free_symbols - solution.keys()):
            # a sample statistic (one smooth piece of a batch max, `theory.piecewise`): solve for that sample
            (sample,) = samples
            roots = sp.solve(sp.Eq(symbol, reduced), sample, dict=False)
            if len(roots) != 1:
                raise NoClosedForm(f"statistic {symbol} does not determine {sample} uniquely")
            solution[sample] = sign_parity(sp.expand(roots[0]))
            continue
        new = sorted((x for x in reduced.free_symbols if x.name[:2] in ("M_", "N_") and x not in solution),
                     key=lambda x: x.name)
        if len(new) != 1:
            raise NoClosedForm(f"statistic {symbol} does not determine exactly one new raw moment (found {new})")
        roots = sp.solve(sp.Eq(symbol, reduced), new[0], dict=False)
        if len(roots) != 1:
            raise NoClosedForm(f"statistic {symbol} does not determine {new[0]} uniquely")
        solution[new[0]] = roots[0]
    return solution
