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


def measured_rounding_tolerance(rows: dict[str, np.ndarray], rhs: np.ndarray, dtype: str) -> np.ndarray:
    """Absolute tolerance on ||dL/dy||^2 from the measured distance e = identity_err = ||dy_measured - J^T g|| of the
    float32 gradient from the formula's own, recomputed in float64 from the same y and g (`empirics.group_reductions`):
    ||dy_measured|| <= ||J^T g|| + e <= sqrt(RHS) + e wherever the bound holds exactly, so tol = 2 sqrt(RHS) e + e^2,
    plus the float64 rounding of the reductions and of the right side (gamma_m in float64 times the bound's scale).
    For normalisers without an a-priori rounding bound of their backward (every formula but BatchNorm's); the
    assumption `GRADIENT_IDENTITY` keeps e itself within float32 rounding, so an implementation error cannot widen it."""
    error = rows["identity_err"]
    m = rows["m"].astype(np.float64)
    gamma_64 = m * UNIT_ROUNDOFF["float64"] / (1.0 - m * UNIT_ROUNDOFF["float64"])
    scale = rows["gamma"] ** 2 / rows["sigma"] ** 2 * rows["g_sq"]
    return 2.0 * np.sqrt(np.maximum(rhs, 0.0)) * error + error**2 + ROUNDING_TERMS * gamma_64 * (np.abs(rhs) + scale)


def rounding_tolerance(rows: dict[str, np.ndarray], rhs: np.ndarray, dtype: str) -> np.ndarray:
    """The a-priori bound `float_rounding_tolerance` on rows of BatchNorm's formula (identity_err not measured: NaN),
    the measured `measured_rounding_tolerance` on the rows of every other normaliser."""
    error = rows.get("identity_err")
    if error is None:
        return float_rounding_tolerance(rows, rhs, dtype)
    measured = np.isfinite(error)
    with np.errstate(invalid="ignore"):
        return np.where(measured, measured_rounding_tolerance(rows, rhs, dtype),
                        float_rounding_tolerance(rows, rhs, dtype))


ROUNDING_REASON = (
    TOLERANCE_REASON + "; for a normaliser whose formula is not BatchNorm's (no a-priori bound of its backward's "
    "rounding): tol = 2 sqrt(RHS) e + e^2 with e = ||dL/dy - J^T g|| the measured float32 gradient's distance from "
    "the formula's own recomputed in float64 (checked to be within the rounding bound above: assumption 'gradient "
    "identity'), plus the float64 rounding of the reductions"
)


def _identity_within_rounding(rows: dict) -> np.ndarray:
    error = rows.get("identity_err")
    if error is None:
        return np.ones(len(rows["m"]), dtype=bool)
    return ~np.isfinite(error) | (error <= gradient_rounding_error(rows, "float32"))


GRADIENT_IDENTITY = Assumption("gradient identity: the measured dL/dy is the formula's J^T g within float32 rounding",
                               _identity_within_rounding)


def _smooth_piece(rows: dict) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (rows["ties_at_max"] <= 1) & (rows["zero_signs"] == 0)


SMOOTH_PIECE = Assumption("smooth piece: one sample attains max |y - c| and none sits at the centre", _smooth_piece)


FLOAT32_NORMAL_RANGE = Assumption("float32 normal range (no intermediate underflows or overflows)", float32_normal_range)
ACTIVATION_ASSUMPTIONS = (
    Assumption("m >= 2", lambda rows: rows["m"] >= 2),
    Assumption("eps >= 0", lambda rows: rows["eps"] >= 0),
    Assumption("sigma > 0", lambda rows: rows["sigma"] > 0),
    Assumption("finite captures", lambda rows: np.isfinite(rows["lhs"]) & np.isfinite(rows["g_sq"])),
    FLOAT32_NORMAL_RANGE,
    GRADIENT_IDENTITY,
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
    relation: str = "<="  # "<=": a bound; "==": an identity, violated when |measured - bound| exceeds the tolerance


def activation_bound_check(claim_id: str, normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.1, its printed form and the l_p analogues: ||dL/dy||^2 <= RHS(captured reductions) per group, with the
    right side `numeric.activation_statement` derives for this normaliser (a closed form in g_sq, g_sum, g_yhat, or
    the l1 / l-inf smooth-piece form in its named reductions)."""
    rhs = numeric.activation_statement(claim_id, normaliser)
    piecewise = any(name not in ("g_sq", "g_sum", "g_yhat", "m", "gamma", "sigma") for name in rhs.reductions)
    return BoundCheck(
        id=claim_id,
        normaliser=normaliser,
        measured="lhs",
        bound=lambda rows: rhs(*(_column(rows, name) for name in rhs.reductions)),
        tolerance=rounding_tolerance,
        tolerance_reason=ROUNDING_REASON,
        assumptions=ACTIVATION_ASSUMPTIONS + ((SMOOTH_PIECE,) if piecewise else ()),
    )


def gradient_identity_check(normaliser: str = "batchnorm") -> BoundCheck:
    """factC.1 measured: ||dL/dy||^2 = ||J^T g||^2, the derived closed form of the gradient's norm (an identity:
    violated when the two differ by more than the rounding of the measured gradient)."""
    closed = numeric.grad_sq_norm_statement(normaliser)
    return BoundCheck(
        id="factC.1", normaliser=normaliser, measured="lhs",
        bound=lambda rows: closed(*(_column(rows, name) for name in closed.reductions)),
        tolerance=rounding_tolerance, tolerance_reason=ROUNDING_REASON, assumptions=ACTIVATION_ASSUMPTIONS,
        relation="==",
    )


def _column(rows: dict, name: str) -> np.ndarray:
    return rows[name].astype(np.float64) if name == "m" else rows[name]


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
        tolerance=rounding_tolerance, tolerance_reason=ROUNDING_REASON, assumptions=ACTIVATION_ASSUMPTIONS,
    )


# --- measurement tables of one run -----------------------------------------------------------------------

# capture columns a weight row takes from the capture of its (step, layer, channel); the capture's gradient identity
# error is renamed (the weight row has its own, ||dL/dW_j - X^T dy_j||)
_JOINED = ("m", "eps", "gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs", "yhat_sq", "g_sign",
           "sign_mean", "g_at_max", "sign_at_max", "ties_at_max", "zero_signs")


def _probe_table(probes: dict, name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}/"
    return {key[len(prefix):]: value for key, value in probes.items() if key.startswith(prefix)}


def dy_error(rows: dict[str, np.ndarray]) -> np.ndarray:
    """A bound on ||dL/dy_measured - J^T g|| per group: the measured identity_err where the capture has it (a
    formula normaliser), else the a-priori float32 rounding bound of BatchNorm's backward (`gradient_rounding_error`)."""
    error = rows.get("identity_err")
    a_priori = gradient_rounding_error(rows, "float32")
    return a_priori if error is None else np.where(np.isfinite(error), error, a_priori)


def join_weights(weights: dict[str, np.ndarray], captures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weight rows with the capture columns of the same (step, layer, channel): the i-th layer feeding a normaliser
    feeds the i-th capture point (its groups: the layer's units on the batch axis and in weight space), and probe
    and capture see the same batch and parameters at a step. Rows without a capture get NaN (the assumption
    `capture ... found` then fails on them)."""
    n = len(weights["step"])
    index = {key: i for i, key in enumerate(zip(captures.get("step", ()), captures.get("layer", ()),
                                                  captures.get("channel", ())))}
    found = np.array([index.get(key, -1) for key in zip(weights["step"], weights["layer"], weights["channel"])],
                     dtype=np.int64)
    joined = dict(weights)
    for key in (*_JOINED, "identity_err"):
        column = np.full(n, np.nan)
        if key in captures:
            column[found >= 0] = np.asarray(captures[key], dtype=np.float64)[found[found >= 0]]
        joined["dy_identity_err" if key == "identity_err" else key] = column
    joined["m"] = np.where(np.isfinite(joined["m"]), joined["m"], 0).astype(np.int64)
    joined["dy_error"] = dy_error({**joined, "identity_err": joined["dy_identity_err"]})
    joined["minimax_lhs"] = joined["x_spec_sq"] * joined["lhs"]
    return joined


def layer_table(weights: dict[str, np.ndarray], captures: dict[str, np.ndarray],
                rhs41: Callable[[dict], np.ndarray]) -> dict[str, np.ndarray]:
    """One row per (step, layer) of the weight probe, for per-sample groups (thm4.4-per-layer): grad_w_total =
    ||dL/dW||_F^2 (the units' sum), weight_error = ||dL/dW - X^T V||_F, x_spec_sq, and over the layer's captured
    groups k: rhs41_sum = sum_k RHS_4.1(g_k) (`rhs41` of the normaliser), lhs_sum = ||V||_F^2 = sum_k ||dL/dy_k||^2,
    dy_error_sq_sum = sum_k E_k^2 (`dy_error`), groups (the layer's group count) and groups_found."""
    keys = sorted(set(zip(weights["step"].tolist(), weights["layer"].tolist())))
    position = {key: i for i, key in enumerate(keys)}
    n = len(keys)
    w_index = np.array([position[key] for key in zip(weights["step"].tolist(), weights["layer"].tolist())])
    table = {"step": np.array([k[0] for k in keys], dtype=np.int64), "layer": np.array([k[1] for k in keys],
                                                                                        dtype=np.int64),
             "channel": np.zeros(n, dtype=np.int64), "grad_w_total": np.bincount(w_index, weights["grad_w_sq"], n),
             "weight_error": np.sqrt(np.bincount(w_index, weights["identity_err"] ** 2, n)),
             "x_spec_sq": np.full(n, np.nan)}
    table["x_spec_sq"][w_index] = weights["x_spec_sq"]
    c_keys = list(zip(captures["step"].tolist(), captures["layer"].tolist())) if len(captures.get("step", ())) else []
    inside = np.array([key in position for key in c_keys], dtype=bool)
    c_index = np.array([position.get(key, 0) for key in c_keys], dtype=np.int64)
    groups = {layer: int(np.sum((captures["layer"] == layer) & (captures["step"] == captures["step"][0])))
              for layer in set(table["layer"].tolist())} if c_keys else {}
    with np.errstate(invalid="ignore", divide="ignore"):
        per_group = {"rhs41_sum": rhs41(captures) if c_keys else np.zeros(0), "lhs_sum": captures.get("lhs", np.zeros(0)),
                     "dy_error_sq_sum": dy_error(captures) ** 2 if c_keys else np.zeros(0)}
    for name, values in per_group.items():
        table[name] = np.bincount(c_index[inside], np.asarray(values, dtype=np.float64)[inside], n)
    table["groups_found"] = np.bincount(c_index[inside], minlength=n).astype(np.int64)
    table["groups"] = np.array([groups.get(layer, -1) for layer in table["layer"].tolist()], dtype=np.int64)
    table["minimax_lhs"] = table["x_spec_sq"] * table["lhs_sum"]
    return table


def measurement_tables(run: dict, rhs41: Callable[[dict], np.ndarray] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The non-empty measurement tables of a loaded run (`empirics.runner.load_run`): captures, curvature, weights
    (joined to the captures) and, given the run's normaliser's thm4.1 right side `rhs41` (rows -> array), layers."""
    tables = {"captures": run.get("captures") or {}, "curvature": _probe_table(run.get("probes") or {}, "curvature")}
    weights = _probe_table(run.get("probes") or {}, "weights")
    if weights:
        tables["weights"] = join_weights(weights, tables["captures"])
        if rhs41 is not None and len(tables["captures"].get("step", ())):
            tables["layers"] = layer_table(weights, tables["captures"], rhs41)
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
        excess = np.abs(lhs - rhs) if check.relation == "==" else lhs - rhs
        violated = held & (excess > tol)
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
