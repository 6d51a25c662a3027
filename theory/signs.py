"""Signs of derived expressions under the assumptions every statement makes: m >= 2 and the statistics' signs.

The batch size m is a positive integer symbol, so for SymPy m = 1 is allowed and a factor m - 1 has no known
sign: a formula that is BatchNorm up to a factor depending on m (an unbiased variance, m/(m - 1) times the
biased one) then leaves a slack like gamma^2 <g,yhat>^2 eps / (sigma^4 (m - 1)) undecided, although every
statement assumes m >= 2 (a batch of one has no spread). Writing m = 2 + n with n a nonnegative integer builds
that assumption in; the statistics' own symbols already carry theirs (var >= 0, sigma > 0, ...). Each test
first asks SymPy as is, then after the substitution (factored, so a product of known signs is decided).
"""

from __future__ import annotations

import sympy as sp

from theory.batch_algebra import m

m_excess = sp.Symbol("n_m", integer=True, nonnegative=True)  # m - 2 >= 0


def with_batch_of_two_or_more(expr: sp.Expr) -> sp.Expr:
    """expr with m = 2 + n, n >= 0: the assumption m >= 2 written into the expression."""
    return sp.factor(sp.together(sp.sympify(expr).subs(m, m_excess + 2)))


def is_nonnegative(expr: sp.Expr) -> bool:
    """expr >= 0 for every m >= 2 and every value of the other symbols allowed by their assumptions."""
    expr = sp.sympify(expr)
    return bool(expr == 0 or expr.is_nonnegative or with_batch_of_two_or_more(expr).is_nonnegative)


def is_nonpositive(expr: sp.Expr) -> bool:
    return is_nonnegative(-sp.sympify(expr))


def is_positive(expr: sp.Expr) -> bool:
    """expr > 0 for every m >= 2 and every value of the other symbols allowed by their assumptions."""
    expr = sp.sympify(expr)
    return bool(expr.is_positive or with_batch_of_two_or_more(expr).is_positive)
