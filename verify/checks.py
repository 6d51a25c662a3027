"""Claims as data, and checking as a pure function from (claims, measurements) to verdicts.

A measurement table is a dict of equal-length float64/int64 arrays, one row per captured
(step, layer, channel) of one run (see `empirics.capture`). A `Claim` says which callable from
`theory.numeric` gives the bound, which column is the measured side, how the tolerance is derived
and why, and which assumptions of the statement must hold on the row. `check_rows` evaluates one
claim on one table; `verdicts` aggregates rows into per-layer records with the ratio
measured/bound (tightness), not only pass/fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from theory import numeric

# Unit roundoff of the dtype the network ran in: the measured dL/dy is a float32 autograd result.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# Error terms bounded in `float_rounding_tolerance`: three in the backward formula plus the rounding
# of the float32 batch statistics (invstd) it multiplies by; doubled because each term is the product
# of two rounded factors. Fixed a priori from that count, never tuned to the data.
ROUNDING_TERMS = 8


def float_rounding_tolerance(rows: dict[str, np.ndarray], rhs: np.ndarray, dtype: str) -> np.ndarray:
    """Absolute tolerance on ||dL/dy||^2 for a dy computed by autograd in `dtype`.

    With u the unit roundoff and gamma_m = m u / (1 - m u) (Higham's bound for a length-m sum in any
    order), each term of dy = (gamma/sigma)(g - <1,g>/m - yhat <g,yhat>/m) is computed with an error
    of norm at most gamma_m (|gamma|/sigma) ||g|| (Cauchy-Schwarz: ||<1,g>1||/m <= ||g||,
    ||yhat|| |<g,yhat>|/m <= ||g|| since ||yhat||^2 <= m). So ||dy_measured - dy|| <= E with
    E = ROUNDING_TERMS * gamma_m * (|gamma|/sigma) ||g||, and ||dy|| <= sqrt(RHS) whenever the
    bound holds, which gives ||dy_measured||^2 <= (sqrt(RHS) + E)^2 = RHS + 2 sqrt(RHS) E + E^2.
    """
    u = UNIT_ROUNDOFF[dtype]
    m = rows["m"].astype(np.float64)
    gamma_m = m * u / (1.0 - m * u)
    error = ROUNDING_TERMS * gamma_m * np.abs(rows["gamma"]) / rows["sigma"] * np.sqrt(rows["g_sq"])
    return 2.0 * np.sqrt(np.maximum(rhs, 0.0)) * error + error**2


TOLERANCE_REASON = (
    "worst-case rounding bound of the measured float32 gradient: tol = 2 sqrt(RHS) E + E^2 with "
    f"E = {ROUNDING_TERMS} gamma_m (|gamma|/sigma) ||g||, gamma_m = m u/(1 - m u), u the unit roundoff "
    "of the network's dtype (2^-24 for float32); the bound itself is evaluated in float64"
)


@dataclass(frozen=True)
class Assumption:
    name: str
    holds: Callable[[dict], np.ndarray]


ACTIVATION_ASSUMPTIONS = (
    Assumption("m >= 2", lambda rows: rows["m"] >= 2),
    Assumption("eps >= 0", lambda rows: rows["eps"] >= 0),
    Assumption("sigma > 0", lambda rows: rows["sigma"] > 0),
    Assumption("finite captures", lambda rows: np.isfinite(rows["lhs"]) & np.isfinite(rows["g_sq"])),
)


@dataclass(frozen=True)
class Claim:
    """One inequality `measured <= bound` to check on captured rows."""

    id: str
    normaliser: str
    measured: str  # column of the measurement table holding the left side
    bound: Callable[[dict], np.ndarray]  # rows -> right side (float64)
    tolerance: Callable[[dict, np.ndarray, str], np.ndarray]  # (rows, rhs, dtype) -> absolute tolerance
    tolerance_reason: str
    assumptions: tuple[Assumption, ...]


def activation_bound_claim(claim_id: str, normaliser: str = "batchnorm") -> Claim:
    """thm4.1 and its variants: ||dL/dy||^2 <= (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - c <g,yhat>^2)."""
    rhs = numeric.activation_bound(claim_id)
    return Claim(
        id=claim_id,
        normaliser=normaliser,
        measured="lhs",
        bound=lambda rows: rhs(rows["g_sq"], rows["g_sum"], rows["g_yhat"], rows["m"].astype(np.float64),
                               rows["gamma"], rows["sigma"]),
        tolerance=float_rounding_tolerance,
        tolerance_reason=TOLERANCE_REASON,
        assumptions=ACTIVATION_ASSUMPTIONS,
    )


def default_claims() -> tuple[Claim, ...]:
    return (activation_bound_claim("thm4.1"), activation_bound_claim("thm4.1-printed"))


def check_rows(claim: Claim, rows: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Per-row evaluation: lhs, rhs, tol, whether the assumptions held, and violations among those rows."""
    held = np.ones(len(rows[claim.measured]), dtype=bool)
    for assumption in claim.assumptions:
        held &= assumption.holds(rows)
    lhs = rows[claim.measured]
    with np.errstate(invalid="ignore", divide="ignore"):
        rhs = claim.bound(rows)
        tol = claim.tolerance(rows, rhs, dtype)
    violated = held & (lhs > rhs + tol)
    return {"lhs": lhs, "rhs": rhs, "tol": tol, "held": held, "violated": violated}


def summarise(evaluated: dict[str, np.ndarray]) -> dict:
    """n checked, violations, worst and median ratio measured/bound (rows with a positive bound)."""
    held = evaluated["held"]
    positive = held & (evaluated["rhs"] > 0)
    ratio = evaluated["lhs"][positive] / evaluated["rhs"][positive]
    return {
        "n_checked": int(held.sum()),
        "n_assumptions_failed": int((~held).sum()),
        "n_violations": int(evaluated["violated"].sum()),
        "n_rhs_nonpositive": int((held & ~(evaluated["rhs"] > 0)).sum()),
        "worst_ratio": float(ratio.max()) if ratio.size else None,
        "median_ratio": float(np.median(ratio)) if ratio.size else None,
        "min_ratio": float(ratio.min()) if ratio.size else None,
    }
