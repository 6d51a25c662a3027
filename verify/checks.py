"""Bound checks as data, and checking as a pure function from (bound checks, measurements) to verdicts.

A *bound check* is one formal statement (a `statement id` such as thm4.1, derived in `theory/`) evaluated as
`measured <= bound` on the rows of trained networks; the paper's *empirical claims* are `verify.effects`'.

A measurement table is a dict of equal-length float64/int64 arrays, one row per measured
(step, layer, channel) of one run. `measurement_tables` builds the three a run can hold:

    captures    thm4.1 quantities of every BN channel at the capture steps (`empirics.capture`)
    curvature   thm4.2 Hessian quadratic forms of the probed BN layers (`empirics.curvature`)
    weights     thm4.4 weight-gradient terms of the layers feeding a BN (`empirics.weight_bounds`),
                joined to the capture of the same (step, layer, channel) for the thm4.1 invariants

A `BoundCheck` says which table it reads, which callable from `theory.numeric` gives the bound, which
column is the measured side, how the tolerance is derived and why, which assumptions of the
statement must hold on a row (rows where one fails are not checked), and which *conditions* are
only measured (how often they hold, and the violations among rows where they all hold: thm4.2's
"smoother" conditions, thm4.2b's reading). `check_rows` evaluates one claim on one table;
`summarise` aggregates rows into records with the ratio measured/bound (tightness), not only
pass/fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from theory import numeric

# Unit roundoff of the dtype the network ran in: the measured dL/dy is a float32 autograd result.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# Smallest subnormal spacing of each dtype (Higham's eta): a result in the subnormal range is off by up to this
# much in absolute terms, whatever its size (a gradient of 1e-40 in float32 keeps only a few digits).
UNDERFLOW = {"float32": 2.0**-149, "float64": 2.0**-1074, "float16": 2.0**-24, "bfloat16": 2.0**-133}
# Error terms bounded in `float_rounding_tolerance`: three in the backward formula plus the rounding
# of the float32 batch statistics (invstd) it multiplies by; doubled because each term is the product
# of two rounded factors. Fixed a priori from that count, never tuned to the data.
ROUNDING_TERMS = 8


def gradient_rounding_error(rows: dict[str, np.ndarray], dtype: str) -> np.ndarray:
    """E: a bound on ||dy_measured - dy|| for dL/dy computed by autograd in `dtype` (see below)."""
    u = UNIT_ROUNDOFF[dtype]
    m = rows["m"].astype(np.float64)
    gamma_m = m * u / (1.0 - m * u)
    centring = 1.0 + np.abs(rows["mean"]) / rows["sigma"]
    scale = np.abs(rows["gamma"]) / rows["sigma"]
    relative = ROUNDING_TERMS * gamma_m * centring * scale * np.sqrt(rows["g_sq"])
    # underflow: an absolute error eta in any intermediate of the backward, amplified on its way to dy: at dy's
    # scale by 1; at g's scale (g - mean g) by |gamma|/sigma; at the scale of g (y - mu) (the sum behind
    # <g, yhat>) by |y_i - mu| |gamma| / sigma^3 <= sqrt(m) |gamma| / sigma^2
    amplification = 1.0 + np.sqrt(m) * scale * (1.0 + 1.0 / rows["sigma"])
    return relative + ROUNDING_TERMS * np.sqrt(m) * UNDERFLOW[dtype] * amplification


def float_rounding_tolerance(rows: dict[str, np.ndarray], rhs: np.ndarray, dtype: str) -> np.ndarray:
    """Absolute tolerance on ||dL/dy||^2 for a dy computed by autograd in `dtype`.

    With u the unit roundoff and gamma_m = m u / (1 - m u) (Higham's bound for a length-m sum in any
    order), each term of dy = (gamma/sigma)(g - <1,g>/m - yhat <g,yhat>/m) is computed with an error
    of norm at most gamma_m (|gamma|/sigma) ||g|| (Cauchy-Schwarz: ||<1,g>1||/m <= ||g||,
    ||yhat|| |<g,yhat>|/m <= ||g|| since ||yhat||^2 <= m). The float32 batch mean mu-hat that the
    forward subtracts is itself off by up to gamma_m mean|y| <= gamma_m (|mu| + sigma), an error of
    gamma_m (1 + |mu|/sigma) in every yhat; through yhat <g,yhat>/m it moves dy by as much again per
    unit of (|gamma|/sigma) ||g||, so the terms carry the centring factor (1 + |mu|/sigma) (a channel
    whose mean dwarfs its spread loses the digits of its spread when centred). So
    ||dy_measured - dy|| <= E with E = ROUNDING_TERMS * gamma_m * (1 + |mu|/sigma) (|gamma|/sigma) ||g||
    + ROUNDING_TERMS sqrt(m) eta (1 + sqrt(m) (|gamma|/sigma)(1 + 1/sigma)), the last term for values that
    underflow to subnormals: each operation is off by at most eta, the dtype's subnormal spacing, at dy's
    scale, at g's (amplified by |gamma|/sigma) or at the scale of g (y - mu) (amplified by up to
    sqrt(m) |gamma|/sigma^2 through yhat <g, yhat>/m); and ||dy|| <= sqrt(RHS) whenever the bound holds,
    which gives
    ||dy_measured||^2 <= (sqrt(RHS) + E)^2 = RHS + 2 sqrt(RHS) E + E^2.
    """
    error = gradient_rounding_error(rows, dtype)
    return 2.0 * np.sqrt(np.maximum(rhs, 0.0)) * error + error**2


TOLERANCE_REASON = (
    "worst-case rounding bound of the measured float32 gradient: tol = 2 sqrt(RHS) E + E^2 with "
    f"E = {ROUNDING_TERMS} gamma_m (1 + |mu|/sigma) (|gamma|/sigma) ||g||, gamma_m = m u/(1 - m u), u the unit "
    "roundoff of the network's dtype (2^-24 for float32), (1 + |mu|/sigma) the error of the float32 batch mean "
    f"carried through yhat, plus {ROUNDING_TERMS} sqrt(m) eta (1 + sqrt(m) (|gamma|/sigma)(1 + 1/sigma)) for values "
    "in the subnormal range (eta = 2^-149 in float32); the bound itself is evaluated in float64"
)


@dataclass(frozen=True)
class Assumption:
    """A predicate on rows: an assumption of the statement (rows failing it are not checked) or a
    condition that is only measured (how often it holds)."""

    name: str
    holds: Callable[[dict], np.ndarray]


NORMAL_RANGE = {"float32": (2.0**-126, 2.0**127)}  # smallest and largest normal magnitudes (exponent range)


def float32_normal_range(rows: dict) -> np.ndarray:
    """Whether the magnitudes a float32 BN backward forms stay normal (or exactly 0): sigma and its powers
    1/sigma .. 1/sigma^3, the entry scale of g and of dy, the batch means <1,g>/m and <g, y - mu>/m and the
    latter times 1/sigma .. 1/sigma^3. Where one is subnormal, rounding is absolute, not relative, and its error
    is amplified by the powers of 1/sigma that follow in an order the rounding bound cannot know; where one
    overflows the result is meaningless. Such rows (never met on a trained network here) are not checked."""
    low, high = NORMAL_RANGE["float32"]
    m, sigma = rows["m"].astype(np.float64), rows["sigma"]
    g_scale = np.sqrt(rows["g_sq"] / m)
    dot = np.abs(rows["g_yhat"]) * sigma / m  # <g, y - mu> / m
    magnitudes = [sigma, 1 / sigma, sigma**-2, sigma**-3, g_scale, np.abs(rows["gamma"]) / sigma * g_scale,
                  np.abs(rows["g_sum"]) / m, dot, dot / sigma, dot / sigma**2, dot / sigma**3]
    ok = np.ones(len(sigma), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for value in magnitudes:
            ok &= (value == 0) | ((value >= low) & (value <= high))
    return ok


ACTIVATION_ASSUMPTIONS = (
    Assumption("m >= 2", lambda rows: rows["m"] >= 2),
    Assumption("eps >= 0", lambda rows: rows["eps"] >= 0),
    Assumption("sigma > 0", lambda rows: rows["sigma"] > 0),
    Assumption("finite captures", lambda rows: np.isfinite(rows["lhs"]) & np.isfinite(rows["g_sq"])),
    Assumption("float32 normal range (no intermediate underflows or overflows)", float32_normal_range),
)


@dataclass(frozen=True)
class BoundCheck:
    """One statement's inequality `measured <= bound`, checked on captured rows; `id` is the statement id."""

    id: str
    normaliser: str
    measured: str  # column of the measurement table holding the left side
    bound: Callable[[dict], np.ndarray]  # rows -> right side (float64)
    tolerance: Callable[[dict, np.ndarray, str], np.ndarray]  # (rows, rhs, dtype) -> absolute tolerance
    tolerance_reason: str
    assumptions: tuple[Assumption, ...]
    table: str = "captures"  # which measurement table of a run it reads (`measurement_tables`)
    conditions: tuple[Assumption, ...] = ()  # measured, not required: frequency and violations under them


def activation_bound_check(claim_id: str, normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.1 and its variants: ||dL/dy||^2 <= (gamma^2/sigma^2)(||g||^2 - <1,g>^2/m - c <g,yhat>^2)."""
    rhs = numeric.activation_bound(claim_id, normaliser)
    return BoundCheck(
        id=claim_id,
        normaliser=normaliser,
        measured="lhs",
        bound=lambda rows: rhs(rows["g_sq"], rows["g_sum"], rows["g_yhat"], rows["m"].astype(np.float64),
                               rows["gamma"], rows["sigma"]),
        tolerance=float_rounding_tolerance,
        tolerance_reason=TOLERANCE_REASON,
        assumptions=ACTIVATION_ASSUMPTIONS,
    )




def _invariants(rows: dict) -> tuple:
    return rows["g_sq"], rows["g_sum"], rows["g_yhat"], rows["m"].astype(np.float64), rows["gamma"], rows["sigma"]


def matched_scale_check(normaliser: str = "batchnorm") -> BoundCheck:
    """obs4.3 measured: at gamma = sigma, beta = mu the BN layer reproduces the standard network's
    activations (proved), and its Jacobian still removes the <1,g> and <g,yhat> components, so
    (sigma^2/gamma^2) ||dL-hat/dy||^2 <= ||g||^2 = ||dL/dy|| of the standard network there. Checked in
    the original units, ||dL-hat/dy||^2 <= (gamma^2/sigma^2) ||g||^2; the ratio is the fraction of the
    gradient's energy the normaliser keeps."""
    return BoundCheck(
        id="obs4.3", normaliser=normaliser, measured="lhs",
        bound=lambda rows: rows["gamma"] ** 2 / rows["sigma"] ** 2 * rows["g_sq"],
        tolerance=float_rounding_tolerance, tolerance_reason=TOLERANCE_REASON, assumptions=ACTIVATION_ASSUMPTIONS,
    )


# --- thm4.2: Hessian quadratic forms (curvature table) ------------------------------------------------

HESSIAN_TOLERANCE_REASON = (
    "rounding of float32 Hessian-vector products: tol = 4 r + gamma_m (|LHS| + |term 1| + |term 2|), where r is "
    "the row's measured residual of the exact chain-rule identity v^T (d^2 L-hat/dy^2) v = (Jv)^T H (Jv) + "
    "sum_b g_b v^T (d^2 z_b/dy^2) v (zero in exact arithmetic, so r is the size of the HVPs' rounding on that "
    "row; 4 = two HVP sides, each a product of rounded factors) and gamma_m (|...|) is Higham's bound for the "
    "length-m inner products that form each quadratic form (u = 2^-24). No a-priori bound exists for the rounding "
    "inside an HVP through the downstream network, hence the measured r"
)


def hessian_form_tolerance(terms: Callable[[dict], tuple]) -> Callable[[dict, np.ndarray, str], np.ndarray]:
    def tolerance(rows: dict, rhs: np.ndarray, dtype: str) -> np.ndarray:
        u = UNIT_ROUNDOFF[dtype]
        m = rows["m"].astype(np.float64)
        gamma_m = m * u / (1.0 - m * u)
        residual = np.abs(rows["hess_in_v"] - rows["hess_out_Jv"] - rows["bn_second_order"])
        magnitude = np.abs(rows["hess_in_v"]) + sum(np.abs(term) for term in terms(rows))
        return 4.0 * residual + gamma_m * magnitude
    return tolerance


CURVATURE_ASSUMPTIONS = ACTIVATION_ASSUMPTIONS[:3] + (
    Assumption("finite Hessian forms", lambda rows: np.isfinite(rows["hess_in_v"]) & np.isfinite(rows["hess_out_v"])
               & np.isfinite(rows["hess_out_g"]) & np.isfinite(rows["lhs"])),
)
SMOOTHER_CONDITIONS = (
    Assumption("v^T H v >= 0 (H PSD in the gradient direction)", lambda rows: rows["hess_out_v"] >= 0),
    Assumption("<g, yhat> > 0", lambda rows: rows["g_yhat"] > 0),
)
READING_R1 = Assumption("reading R1: v^T H v <= g^T H g", lambda rows: rows["hess_out_v"] <= rows["hess_out_g"])


def smoothness_check(claim_id: str, normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.2 (first form) and thm4.2b (second form) on one BN channel, as typed in `theory.smoothness`."""
    rhs = numeric.smoothness_bound(claim_id)

    def bound(rows):
        return rhs(rows["hess_out_v"], rows["hess_out_g"], rows["lhs"], rows["g_yhat"], rows["m"].astype(np.float64),
                   rows["gamma"], rows["sigma"])

    g2s2 = lambda rows: rows["gamma"] ** 2 / rows["sigma"] ** 2
    second = lambda rows: np.abs(rows["gamma"]) / (rows["m"] * rows["sigma"] ** 2) * np.abs(rows["g_yhat"]) * rows["lhs"]
    first_term = {"thm4.2": lambda rows: g2s2(rows) * rows["hess_out_v"],
                  "thm4.2b": lambda rows: g2s2(rows) * rows["hess_out_g"]}[claim_id]
    conditions = SMOOTHER_CONDITIONS if claim_id == "thm4.2" else (READING_R1, *SMOOTHER_CONDITIONS)
    return BoundCheck(id=claim_id, normaliser=normaliser, measured="hess_in_v", bound=bound,
                 tolerance=hessian_form_tolerance(lambda rows: (first_term(rows), second(rows))),
                 tolerance_reason=HESSIAN_TOLERANCE_REASON, assumptions=CURVATURE_ASSUMPTIONS, table="curvature",
                 conditions=conditions)


# --- thm4.4: weight space (weights table joined to the captures) ---------------------------------------

WEIGHT_TOLERANCE_REASON = (
    "tol = (||X||_2 (sqrt(RHS_4.1) + E) + e)^2 - ||X||_2^2 RHS_4.1: E bounds the float32 rounding of dL-hat/dy as "
    "for thm4.1, and e = ||dL/dW_j - X^T dL/dy_j|| is the measured distance of the float32 weight gradient from the "
    "float64 product X^T dy (the identity is exact, so e is its rounding); ||X||_2 from a float64 eigvalsh"
)
MINIMAX_TOLERANCE_REASON = (
    "the thm4.1 rounding tolerance scaled by lambda^2 = ||X||_2^2: the measured side is lambda^2 ||dL-hat/dy_j||^2, "
    "the maximum over the spectral ball with the derivatives held fixed (the reading of theory.weight_space)"
)
WEIGHT_ASSUMPTIONS = ACTIVATION_ASSUMPTIONS[:3] + (
    Assumption("capture of the same (step, layer, channel) found", lambda rows: np.isfinite(rows["g_sq"])),
    ACTIVATION_ASSUMPTIONS[-1],  # the float32 normal range of the capture's backward
    Assumption("finite weight terms", lambda rows: np.isfinite(rows["grad_w_sq"]) & np.isfinite(rows["x_spec_sq"])
               & np.isfinite(rows["identity_err"])),
)


def weight_per_unit_check(normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.4-per-unit: ||dL-hat/dW_{.j}||^2 <= ||X||_2^2 RHS_thm4.1, per unit of a layer feeding a BN."""
    rhs = numeric.weight_grad_bound(normaliser)

    def tolerance(rows, bound, dtype):
        x = rows["x_spec_sq"]
        rhs41 = np.maximum(bound, 0.0) / np.where(x > 0, x, 1.0)
        reach = np.sqrt(x) * (np.sqrt(rhs41) + gradient_rounding_error(rows, dtype)) + rows["identity_err"]
        return reach**2 - x * rhs41

    return BoundCheck(id="thm4.4-per-unit", normaliser=normaliser, measured="grad_w_sq",
                 bound=lambda rows: rhs(rows["x_spec_sq"], *_invariants(rows)), tolerance=tolerance,
                 tolerance_reason=WEIGHT_TOLERANCE_REASON, assumptions=WEIGHT_ASSUMPTIONS, table="weights")


def minimax_weight_check(claim_id: str, normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.4 (consistent form) and thm4.4-printed at the measured lambda = ||X||_2, g_j = lambda^2 ||g||^2."""
    rhs = numeric.minimax_weight_bound(claim_id)

    def tolerance(rows, bound, dtype):
        x = rows["x_spec_sq"]
        return x * float_rounding_tolerance(rows, np.maximum(bound, 0.0) / np.where(x > 0, x, 1.0), dtype)

    return BoundCheck(id=claim_id, normaliser=normaliser, measured="minimax_lhs",
                 bound=lambda rows: rhs(rows["x_spec_sq"], *_invariants(rows)), tolerance=tolerance,
                 tolerance_reason=MINIMAX_TOLERANCE_REASON, assumptions=WEIGHT_ASSUMPTIONS, table="weights")


def default_bound_checks() -> tuple[BoundCheck, ...]:
    return (activation_bound_check("thm4.1"), activation_bound_check("thm4.1-printed"), matched_scale_check(),
            smoothness_check("thm4.2"), smoothness_check("thm4.2b"), weight_per_unit_check(),
            minimax_weight_check("thm4.4"), minimax_weight_check("thm4.4-printed"))


# --- measurement tables of one run -----------------------------------------------------------------------

_JOINED = ("m", "eps", "gamma", "mean", "sigma", "g_sum", "g_sq", "g_yhat", "lhs")


def _probe_table(probes: dict, name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}/"
    return {key[len(prefix):]: value for key, value in probes.items() if key.startswith(prefix)}


def join_weights(weights: dict[str, np.ndarray], captures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weight rows with the capture columns of the same (step, layer, channel): the i-th layer feeding a BN
    feeds the i-th BN, and probe and capture see the same batch and parameters at a step. Rows without a
    capture get NaN (the assumption `capture ... found` then fails on them)."""
    n = len(weights["step"])
    index = {key: i for i, key in enumerate(zip(captures.get("step", ()), captures.get("layer", ()),
                                                  captures.get("channel", ())))}
    found = np.array([index.get(key, -1) for key in zip(weights["step"], weights["layer"], weights["channel"])],
                     dtype=np.int64)
    joined = dict(weights)
    for key in _JOINED:
        column = np.full(n, np.nan)
        if key in captures:
            column[found >= 0] = np.asarray(captures[key], dtype=np.float64)[found[found >= 0]]
        joined[key] = column
    joined["m"] = np.where(np.isfinite(joined["m"]), joined["m"], 0).astype(np.int64)
    joined["minimax_lhs"] = joined["x_spec_sq"] * joined["lhs"]
    return joined


def measurement_tables(run: dict) -> dict[str, dict[str, np.ndarray]]:
    """The non-empty measurement tables of a loaded run (`empirics.runner.load_run`)."""
    tables = {"captures": run.get("captures") or {}, "curvature": _probe_table(run.get("probes") or {}, "curvature")}
    weights = _probe_table(run.get("probes") or {}, "weights")
    if weights:
        tables["weights"] = join_weights(weights, tables["captures"])
    return {name: rows for name, rows in tables.items() if len(rows.get("step", ())) > 0}


def check_rows(check: BoundCheck, rows: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Per-row evaluation: lhs, rhs, tol, whether the assumptions held, violations among those rows, and
    `condition` (all of the check's measured conditions held; all True when it has none)."""
    held = np.ones(len(rows[check.measured]), dtype=bool)
    for assumption in check.assumptions:
        with np.errstate(invalid="ignore"):
            held &= assumption.holds(rows)
    condition = np.ones_like(held)
    condition_counts = {}
    for test in check.conditions:
        with np.errstate(invalid="ignore"):
            holds = np.asarray(test.holds(rows), dtype=bool)
        condition &= holds
        condition_counts[test.name] = holds
    lhs = rows[check.measured]
    with np.errstate(invalid="ignore", divide="ignore"):
        rhs = check.bound(rows)
        tol = check.tolerance(rows, rhs, dtype)
        violated = held & (lhs > rhs + tol)
    return {"lhs": lhs, "rhs": rhs, "tol": tol, "held": held, "violated": violated, "condition": condition,
            **{f"condition:{name}": holds for name, holds in condition_counts.items()}}


def summarise(evaluated: dict[str, np.ndarray]) -> dict:
    """n checked, violations, worst and median ratio measured/bound (rows with a positive bound), and for
    each measured condition how often it held among the checked rows; violations where all held."""
    held = evaluated["held"]
    positive = held & (evaluated["rhs"] > 0)
    ratio = evaluated["lhs"][positive] / evaluated["rhs"][positive]
    summary = {
        "n_checked": int(held.sum()),
        "n_assumptions_failed": int((~held).sum()),
        "n_violations": int(evaluated["violated"].sum()),
        "n_rhs_nonpositive": int((held & ~(evaluated["rhs"] > 0)).sum()),
        "worst_ratio": float(ratio.max()) if ratio.size else None,
        "median_ratio": float(np.median(ratio)) if ratio.size else None,
        "min_ratio": float(ratio.min()) if ratio.size else None,
    }
    conditions = {key.removeprefix("condition:"): int((held & value).sum())
                  for key, value in evaluated.items() if key.startswith("condition:")}
    if conditions:
        condition = evaluated.get("condition", np.ones_like(held))
        summary["conditions_held"] = conditions
        summary["n_all_conditions_held"] = int((held & condition).sum())
        summary["n_violations_under_conditions"] = int((evaluated["violated"] & condition).sum())
    return summary
