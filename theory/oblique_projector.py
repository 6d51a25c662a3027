"""The Jacobian of a centre-and-scale normaliser as gamma/sigma times a projector, and that projector's norm.

Every normaliser of the form z = gamma (y - mu 1)/sigma(y) + beta, sigma a shift-invariant scale, has

    J = (gamma/sigma) P,   P = I - 11^T/m - yhat d^T,   d = grad_y sigma   (d perpendicular to 1),

so grad_y L-hat = J^T g = (gamma/sigma)(g - <1,g>/m 1 - <g,yhat> d) and

    ||J^T g||^2 = (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - 2 <g,yhat><g,d> + <g,yhat>^2 ||d||^2).

With rho = <yhat, d> (= 1 at eps = 0: sigma is 1-homogeneous) P is a projector (P^2 = P, P 1 = 0, P yhat = 0),
orthogonal iff d is parallel to yhat: BatchNorm (d = yhat/m). For l1 (d = (s - sbar 1)/m) and l-inf
(d = s_a (e_a - 1/m)) it is OBLIQUE, and ||P||_2 > 1 is possible. Nothing here is typed per normaliser: d is
read off the derived Jacobian (`rank_one_factor`), ||d||^2, rho and <g,d> are batch sums reduced like any
other (`batch_algebra`), and ||P||_2^2 comes from the 2x2 restriction of P^T P to span{yhat, d} (`norm_sq`):

    ||P||_2^2 = kappa = (T + sqrt(T^2 - 4 (1 - rho)^2))/2,   T = 2 - 2 rho + ||yhat||^2 ||d||^2   (m >= 3),

kappa = ||yhat||^2 ||d||^2 at eps = 0 (P^T P is the identity on the rest of 1-perp). For m = 2, 1-perp is one
line and ||P||^2 = (1 - rho)^2 <= kappa. `supremum_at_zero_eps` derives sup over batches of kappa as a function of m.
"""

from __future__ import annotations

import functools

import sympy as sp

from theory.batch_algebra import NoClosedForm, g, k, l, m, mixed_sum, sign_parity, y
from theory.derive import _sum_over
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.piecewise import PiecewiseDerivation, presentable, s_bar, yhat_sq

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)
_j = sp.Symbol("j", integer=True, positive=True)
U2, V2, r = sp.symbols("U_2 V_2 rho", positive=True)  # ||u||^2, ||v||^2, <u, v> for M = I - u v^T


@functools.cache
def norm_sq() -> dict[str, sp.Expr]:
    """||I - u v^T||_2^2 on span{u, v}: the matrix of M^T M in the basis (u, v), its trace, det and top eigenvalue.

    A vector alpha u + beta v is the pair (alpha, beta); M x = x - u <v, x>, M^T x = x - v <u, x>, with
    <u, x> = alpha U2 + beta rho and <v, x> = alpha rho + beta V2. On the complement of span{u, v}, M^T M = I.
    """
    basis = [sp.Matrix([1, 0]), sp.Matrix([0, 1])]
    inner_u = lambda x: x[0] * U2 + x[1] * r
    inner_v = lambda x: x[0] * r + x[1] * V2
    apply_m = lambda x: x - sp.Matrix([inner_v(x), 0])
    apply_mt = lambda x: x - sp.Matrix([0, inner_u(x)])
    gram = sp.Matrix.hstack(*[apply_mt(apply_m(x)) for x in basis]).applyfunc(sp.expand)
    trace, det = sp.expand(gram.trace()), sp.factor(gram.det())
    top = max(gram.eigenvals(), key=lambda e: sp.sympify(e).subs({U2: 3, V2: 1, r: sp.Rational(1, 2)}).evalf())
    return {"gram": gram, "trace": trace, "det": det, "top": sp.simplify(top),
            "top_at_projector": sp.simplify(top.subs(r, 1))}


def _reduce(derivation: PiecewiseDerivation, expr: sp.Expr) -> sp.Expr:
    """expr in the statistics (raw moments replaced, <g, y> written through <g, yhat>, sign powers mod 2)."""
    branch = derivation.branch
    expr = sign_parity(sp.expand(expr).subs(branch.moments))
    g_dot_y = mixed_sum(1, 1)
    if expr.has(g_dot_y):
        definition = sign_parity(_sum_over(g[l] * branch.normaliser.hat(y[l]), l).subs(branch.moments))
        (solution,) = sp.solve(sp.Eq(g_hat, definition), g_dot_y)
        expr = expr.subs(g_dot_y, solution)
    return sp.simplify(sign_parity(sp.simplify(expr)))


@functools.cache
def rank_one_factor(derivation: PiecewiseDerivation) -> sp.Expr:
    """d_k with J_lk = (gamma/sigma)(delta_lk - 1/m - yhat_l d_k), read off the derived Jacobian (free of l)."""
    normaliser = derivation.branch.normaliser
    centring = sp.KroneckerDelta(k, l) - 1 / m
    factor = sp.simplify((centring - derivation.branch.jacobian * normaliser.scale / gamma) / normaliser.hat(y[l]))
    if factor.has(l):
        raise NoClosedForm(f"{derivation.normaliser.name}: the Jacobian is not gamma/sigma (I - 11^T/m - yhat d^T)")
    return sign_parity(factor)


@functools.cache
def projector_pieces(derivation: PiecewiseDerivation) -> dict[str, sp.Expr]:
    """d, ||d||^2, rho = <yhat, d>, <g, d>, the identity's residual, the projector residuals at eps = 0, kappa."""
    normaliser = derivation.branch.normaliser
    d_k = rank_one_factor(derivation)
    hat = {index: normaliser.hat(y[index]) for index in (k, l, _j)}
    d_sq = _reduce(derivation, _sum_over(d_k**2, k))
    rho = _reduce(derivation, _sum_over(d_k * hat[k], k))
    g_d = _reduce(derivation, _sum_over(d_k * g[k], k))
    identity = gamma**2 / normaliser.scale**2 * (G2 - G1**2 / m - 2 * g_hat * g_d + g_hat**2 * d_sq)
    entry = lambda row, col: sp.KroneckerDelta(row, col) - 1 / m - hat[row] * d_k.subs(k, col)
    zero_eps = {eps: 0}
    residuals = {  # each must reduce to 0 for symbolic m (the projector is exact at eps = 0)
        "P^2 - P": _reduce(derivation, _sum_over(entry(l, _j) * entry(_j, k), _j) - entry(l, k)).subs(zero_eps),
        "P 1": _reduce(derivation, _sum_over(entry(l, k), k)),
        "P^T 1": _reduce(derivation, _sum_over(entry(l, k), l)),
        "P yhat": _reduce(derivation, _sum_over(entry(l, k) * hat[k], k)).subs(zero_eps),
        "P^T d": _reduce(derivation, _sum_over(entry(l, k) * d_k.subs(k, l), l)).subs(zero_eps),
    }
    kappa = norm_sq()["top"].subs({U2: yhat_sq, V2: d_sq, r: rho})
    in_sigma = lambda expr: presentable(derivation.in_sigma(expr))
    if sp.simplify(in_sigma(rho).subs(eps, 0) - 1) != 0:
        raise NoClosedForm(f"{derivation.normaliser.name}: <yhat, d> = {rho} is not 1 at eps = 0 (scale not 1-homogeneous)")
    kappa_zero = norm_sq()["top_at_projector"].subs({U2: yhat_sq, V2: in_sigma(d_sq).subs(eps, 0)})
    return {
        "d": presentable(d_k), "d_sq": in_sigma(d_sq), "rho": in_sigma(rho), "g_d": in_sigma(g_d),
        "identity_residual": sp.simplify(derivation.in_sigma(derivation.branch.grad_sq_norm - identity)),
        "residuals": {name: sp.simplify(value) for name, value in residuals.items()},
        "kappa": sp.simplify(in_sigma(kappa)), "kappa_at_zero_eps": sp.factor(kappa_zero),
        "centred_grad_sq": _reduce(derivation, _sum_over((g[k] - G1 / m) ** 2, k)),
    }


def bound_expression(derivation: PiecewiseDerivation) -> sp.Expr:
    """(gamma^2/sigma^2) kappa (||g||^2 - <1,g>^2/m): the normaliser's own thm4.1 analogue, in sigma."""
    return gamma**2 / sigma**2 * projector_pieces(derivation)["kappa"] * (G2 - G1**2 / m)


@functools.cache
def supremum_at_zero_eps(derivation: PiecewiseDerivation) -> dict[str, sp.Expr]:
    """sup over differentiable batches of kappa at eps = 0, as a function of m (m >= 3); not attained.

    kappa = ||yhat||^2 ||d||^2 with the derived ||d||^2. ||yhat||^2 is convex, so its sup over the closure of the
    batches with one sign pattern (one active sample) is at a vertex of a polytope, cut out by sum_i yhat_i = 0 and
    rho = 1 (the scale of yhat is 1: at eps = 0, <yhat, d> = 1):
    - sign pattern (l1): <yhat, s> = m with k positive signs; the positive entries sum to P, the negative to -N,
      P + N = m and P - N = 0 (solved below); a vertex puts each sum on one entry: ||yhat||^2 = P^2 + N^2; the
      mean sign is sbar = (2k - m)/m, and the best k in 1..m-1 is the integer nearest the real maximiser.
    - active sample (l-inf): yhat_a = s_a and |yhat_i| <= 1; a vertex has m - 1 entries +-1 and one entry
      x = -(their sum) in [-1, 1]: x = 0 if m is odd (the m - 1 signs sum to an even number), +-1 if m is even:
      ||yhat||^2 = 2 floor(m/2).
    The vertices sit on the kinks (an entry at the centre, or a tied maximum), so the sup is approached only.
    """
    pieces = projector_pieces(derivation)
    d_sq = pieces["d_sq"]
    positives = sp.Symbol("k", integer=True, positive=True)
    if derivation.kind == "sign pattern":
        total_pos, total_neg = sp.symbols("P N", nonnegative=True)
        solved = sp.solve([total_pos + total_neg - m, total_pos - total_neg], [total_pos, total_neg], dict=True)[0]
        yhat_sup = sp.expand((total_pos**2 + total_neg**2).subs(solved))
        per_pattern = sp.factor(sp.expand(yhat_sup * d_sq.subs(s_bar, (2 * positives - m) / m)))
        (real_best,) = sp.solve(sp.diff(per_pattern, positives), positives)
        best = sp.floor(real_best)  # per_pattern is symmetric about m/2: floor and ceiling give the same value
        supremum = sp.simplify(per_pattern.subs(positives, best))
    else:
        at_one = m - 1  # entries at +-1 at a vertex; the free entry x = -(their sum) is an integer in [-1, 1]
        free_sq = sp.Mod(at_one, 2)  # with the parity of their sum: x^2 = 1 if m - 1 is odd, else 0
        yhat_sup = at_one + free_sq
        supremum = sp.simplify(yhat_sup * d_sq)
        per_pattern = supremum
    return {"yhat_sq_sup": yhat_sup, "per_pattern": per_pattern, "supremum": supremum}
