"""Named float64 tolerances for the theory tests, each with the error analysis behind it.

Every comparison here is float64 against float64, so the only thing separating two correct routes
is rounding. u = 2^-53 is the float64 unit roundoff. The dominant error of every BatchNorm route is
the centring y_i - mu: mu = (1/m) sum_i y_i carries an absolute error of at most ~m u max|y|
(recursive summation), so each centred value is wrong by ~m u max|y|, which relative to the scale
sigma = sqrt(var + eps) is m u kappa with

    kappa = max(1, max_i |y_i| / sigma)        (`centring_condition`)

the condition number of centring: a batch 1e3 +- 1e-3 loses 6 digits in *any* algorithm that
starts from the rounded inputs. Everything downstream (var, yhat, outer products, J, J^T g, the
invariants <1,g>, ||g||^2, <g,yhat>) is a fixed, short chain of operations on those centred values,
so its error relative to the natural scale of the comparison is c m u kappa for a modest c.

A tolerance is relative to a *scale* stated at the call site: |gamma|/sigma for a Jacobian entry
(every entry of (gamma/sigma) P is at most 2|gamma|/sigma in size), gamma^2 ||g||^2 / sigma^2 for
squared gradient norms and for both sides of thm4.1 (each term of the bound is at most that big).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIT_ROUNDOFF = 2.0**-53  # float64: |fl(x) - x| <= u |x|

# Constant in front of the first-order bound m u kappa. The chain mean -> centre -> square -> sum ->
# sqrt -> divide -> outer product -> scale has about a dozen roundings, each worth at most ~1-2
# units of m u kappa, and torch, NumPy and the lambdified closed form order their sums differently
# (pairwise vs recursive): 64 covers that with room, and is still ~1e-7 at the worst batch the
# strategies draw (m = 32, kappa ~ 1e6) -- far below any effect the tests look for.
ROUNDING_CHAIN_FACTOR = 64.0


@dataclass(frozen=True)
class Tolerance:
    """An error budget relative to a stated scale: |actual - expected| <= rtol * scale."""

    name: str
    rtol: float
    reason: str

    def allowed(self, scale) -> np.ndarray:
        return self.rtol * np.asarray(scale, dtype=np.float64)


def centring_condition(batch: np.ndarray, eps: float) -> float:
    """kappa = max(1, max|y| / sqrt(var + eps)), var the biased two-pass variance of the batch."""
    batch = np.asarray(batch, dtype=np.float64)
    centred = batch - batch.mean()
    sigma = np.sqrt(np.mean(centred**2) + eps)
    return max(1.0, float(np.max(np.abs(batch)) / sigma))


def jacobian_entry_tolerance(m: int, kappa: float) -> Tolerance:
    """Entrywise budget for two float64 routes to dz/dy, relative to |gamma|/sigma."""
    return Tolerance(
        name="JACOBIAN_ENTRY_FLOAT64",
        rtol=ROUNDING_CHAIN_FACTOR * m * UNIT_ROUNDOFF * kappa,
        reason=(f"float64 vs float64: centring error m*u*kappa (m={m}, kappa={kappa:.3g}) times "
                f"{ROUNDING_CHAIN_FACTOR:g} for the rounding chain; scale |gamma|/sigma"),
    )


def grad_sq_norm_tolerance(m: int, kappa: float) -> Tolerance:
    """Budget for ||J^T g||^2 and thm4.1's sides between float64 routes, relative to gamma^2||g||^2/sigma^2.

    One factor m more than the entrywise budget: an entrywise error e (relative to |gamma|/sigma)
    gives ||delta J||_2 <= m e |gamma|/sigma, so ||delta(J^T g)|| <= m e |gamma| ||g|| / sigma, and
    the squared norm moves by at most 2 ||J^T g|| ||delta(J^T g)|| <= 4 m e gamma^2 ||g||^2 / sigma^2
    (||J|| <= 2 |gamma|/sigma); the 4 is inside the rounding-chain factor.
    """
    return Tolerance(
        name="GRAD_SQ_NORM_FLOAT64",
        rtol=ROUNDING_CHAIN_FACTOR * m * m * UNIT_ROUNDOFF * kappa,
        reason=(f"float64 vs float64: entrywise budget m*u*kappa (m={m}, kappa={kappa:.3g}) summed over "
                f"m terms, times {ROUNDING_CHAIN_FACTOR:g}; scale gamma^2 ||g||^2 / sigma^2"),
    )


def oblique_grad_sq_norm_tolerance(m: int, kappa: float) -> Tolerance:
    """Budget for ||J^T g||^2 and its bounds when J = (gamma/sigma) P with P an oblique projector (l1, l-inf).

    The same error per unit of the scale as `grad_sq_norm_tolerance` (the chain is as short: centre, one
    reduction, signs or an argmax, which are exact off the kinks), but relative to (m + 2) gamma^2 ||g||^2 /
    sigma^2: here ||P||_2^2 <= m + 2 (its supremum at eps = 0 is m/2 for l1 and m - 1 for l-inf, and eps adds
    at most 2), so every term of ||J^T g||^2 and of the bounds is at most that big.
    """
    return Tolerance(
        name="OBLIQUE_GRAD_SQ_NORM_FLOAT64",
        rtol=ROUNDING_CHAIN_FACTOR * m * m * UNIT_ROUNDOFF * kappa,
        reason=(f"float64 vs float64: entrywise budget m*u*kappa (m={m}, kappa={kappa:.3g}) summed over m terms, "
                f"times {ROUNDING_CHAIN_FACTOR:g}; scale (m + 2) gamma^2 ||g||^2 / sigma^2 (||P||_2^2 <= m + 2)"),
    )


def _worst_entries(excess: np.ndarray, actual: np.ndarray, expected: np.ndarray, allowed: np.ndarray,
                   count: int = 5) -> str:
    flat = np.argsort(-excess, axis=None)[:count]
    rows = []
    for position in flat:
        index = np.unravel_index(position, excess.shape) if excess.ndim else ()
        rows.append(f"  at {tuple(int(i) for i in index)}: actual={actual[index]!r} expected={expected[index]!r} "
                    f"|diff|={abs(actual[index] - expected[index]):.3e} allowed={allowed[index]:.3e}")
    return "\n".join(rows)


def assert_close(actual, expected, tolerance: Tolerance, scale, context: str = "") -> None:
    """|actual - expected| <= tolerance.rtol * scale elementwise; on failure show the worst entries."""
    actual, expected = np.broadcast_arrays(np.asarray(actual, np.float64), np.asarray(expected, np.float64))
    allowed = np.broadcast_to(tolerance.allowed(scale), actual.shape)
    diff = np.abs(actual - expected)
    bad = ~(diff <= allowed)  # NaN counts as a failure
    if bad.any():
        excess = np.where(np.isnan(diff), np.inf, diff - allowed)
        raise AssertionError(
            f"{context}: {int(bad.sum())} of {bad.size} entries differ by more than {tolerance.name} "
            f"(rtol={tolerance.rtol:.3e}; {tolerance.reason})\nworst entries:\n"
            + _worst_entries(excess, actual, expected, allowed)
        )


def assert_at_most(lhs, rhs, tolerance: Tolerance, scale, context: str = "") -> None:
    """lhs <= rhs + tolerance.rtol * scale elementwise; on failure show the worst violations."""
    lhs, rhs = np.broadcast_arrays(np.asarray(lhs, np.float64), np.asarray(rhs, np.float64))
    allowed = np.broadcast_to(tolerance.allowed(scale), lhs.shape)
    excess = lhs - rhs - allowed
    bad = ~(excess <= 0)
    if bad.any():
        excess = np.where(np.isnan(excess), np.inf, excess)
        raise AssertionError(
            f"{context}: {int(bad.sum())} of {bad.size} points have LHS > RHS beyond {tolerance.name} "
            f"(rtol={tolerance.rtol:.3e}; {tolerance.reason})\nworst violations (actual=LHS, expected=RHS):\n"
            + _worst_entries(excess, lhs, rhs, allowed)
        )
