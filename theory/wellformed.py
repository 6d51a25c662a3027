"""Is a `Normaliser` a formula the derivations can use? Checked before anything is derived from it.

A well-formed normaliser (theory.normaliser) reduces over a batch axis and names only known symbols:

    statistics   each S_t is batch_mean(...) or batch_max(...) over y[i], i = 1..m: a reduction whose
                 summand reads the batch, in y[i], the earlier statistics, eps and m
    hat(sample)  the sample, the statistics, eps and m; it depends on at least one statistic
    scale        the statistics, eps and m

Anything else -- a symbol that is no statistic (a typo, a statistic used before it is defined), an
`eps` or `m` created anew (SymPy tells symbols apart by their assumptions too, so
`Symbol("epsilon")` is not `theory.normaliser.eps`), a statistic that reduces over nothing -- would
otherwise surface as a SymPy error deep inside a derivation, or as a wrong "proof" about a function
of the single sample. `check_well_formed` raises `IllFormedNormaliser` naming the symbol and the fix.
"""

from __future__ import annotations

import sympy as sp

from theory.batch_algebra import BatchMax, m, y
from theory.normaliser import Normaliser, eps

_SHARED = {"epsilon": "eps", "m": "m"}  # names of the shared symbols and where they are imported from


class IllFormedNormaliser(ValueError):
    """The formula of a user's normaliser uses an unknown symbol or has no batch axis."""


def _reductions(expr: sp.Expr) -> list:
    return [*expr.atoms(sp.Sum), *expr.atoms(BatchMax)]


def _unknown_symbol(where: str, symbol: sp.Symbol, allowed: set, normaliser: Normaliser) -> IllFormedNormaliser:
    name = str(symbol)
    if name in _SHARED:
        fix = (f"import it as `from theory.{'normaliser' if name == 'epsilon' else 'batch_algebra'} import "
               f"{_SHARED[name]}` instead of creating a new Symbol (its assumptions differ)")
    elif isinstance(symbol, sp.Indexed) or symbol == y.label:
        fix = "read the batch only inside batch_mean(lambda i: ..., 'i') or batch_max(...)"
    else:
        known = ", ".join(sorted(str(s) for s in allowed)) or "none"
        fix = f"define it as a statistic before it is used, or use one of: {known}"
    return IllFormedNormaliser(f"normaliser {normaliser.name!r}: {where} uses the symbol {name!r}, which is not "
                               f"defined there; {fix}")


def _check_symbols(where: str, expr: sp.Expr, allowed: set, normaliser: Normaliser) -> None:
    for symbol in sorted(expr.free_symbols, key=str):
        if symbol not in allowed:
            raise _unknown_symbol(where, symbol, allowed, normaliser)


def _check_statistic(symbol, definition, earlier: set, normaliser: Normaliser) -> None:
    where = f"statistic {symbol} = {definition}"
    reductions = _reductions(sp.sympify(definition))
    if not reductions:
        raise IllFormedNormaliser(f"normaliser {normaliser.name!r}: {where} reduces over no batch axis; write it as "
                                  "batch_mean(lambda i: f(y[i]), 'i') or batch_max(...) from theory.batch_algebra")
    for reduction in reductions:
        ((index, lower, upper),) = reduction.limits
        if (lower, upper) != (1, m) or not any(ix.base == y and ix.indices == (index,)
                                                for ix in reduction.function.atoms(sp.Indexed)):
            raise IllFormedNormaliser(f"normaliser {normaliser.name!r}: {where} does not reduce y[i] over i = 1..m; "
                                      "build it with batch_mean / batch_max of theory.batch_algebra")
        inner = reduction.function.free_symbols - {index, y.label} - {ix for ix in reduction.function.atoms(sp.Indexed)
                                                                        if ix.base == y and ix.indices == (index,)}
        _check_symbols(where, sp.Add(*inner) if inner else sp.Integer(0), earlier | {eps, m}, normaliser)
    outside = sp.sympify(definition).xreplace({r: sp.Integer(1) for r in reductions})
    _check_symbols(where, outside, earlier | {eps, m}, normaliser)


def check_well_formed(normaliser: Normaliser) -> None:
    """Raise IllFormedNormaliser if `normaliser` has no batch axis or uses a symbol it does not define."""
    if not normaliser.statistics:
        raise IllFormedNormaliser(f"normaliser {normaliser.name!r} has no batch statistic, so no batch axis: its "
                                  "output depends on one sample only; add statistics=((symbol, batch_mean(...)),)")
    defined: set = set()
    for symbol, definition in normaliser.statistics:
        if not isinstance(symbol, sp.Symbol):
            raise IllFormedNormaliser(f"normaliser {normaliser.name!r}: statistic {symbol!r} must be a sympy Symbol")
        _check_statistic(symbol, definition, defined, normaliser)
        defined.add(symbol)
    sample = sp.Symbol("sample", real=True)
    hat = sp.sympify(normaliser.hat(sample))
    _check_symbols("hat(sample)", hat, defined | {sample, eps, m}, normaliser)
    if not hat.free_symbols & defined:
        raise IllFormedNormaliser(f"normaliser {normaliser.name!r}: hat(sample) = {hat} uses no batch statistic, so "
                                  f"it has no batch axis; normalise with the statistics {', '.join(map(str, defined))}")
    _check_symbols("scale", sp.sympify(normaliser.scale), defined | {eps, m}, normaliser)
