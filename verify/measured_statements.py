"""Which bound checks each (normaliser, statement) gets: every statement of `theory.json` with a measured route.

A statement is measured by what its id says, for whichever normaliser has it, never by the normaliser's name:

    factC.1                      ||dL/dy||^2 = ||J^T g||^2 (the derived closed form), an identity (captures)
    thm4.1, thm4.1-printed,      ||dL/dy||^2 <= RHS(captured reductions): the closed form, or the l1 / l-inf
    thm4.1-reduction             smooth-piece form (`checks.activation_bound_check`; captures)
    obs4.3                       ||dL/dy||^2 <= (gamma^2/sigma^2) ||g||^2 (captures)
    thm4.2, thm4.2b              Hessian quadratic forms of probed groups (curvature)
    thm4.4-per-unit              column layout (batch axis): ||dL/dW_j||^2 <= ||X||_2^2 RHS_4.1(own);
                                 weights layout (weight space): ||dL/dv_j||^2 <= RHS_4.1 with ||g||^2 -> ||X||^2||delta_j||^2
    thm4.4-per-layer             row layout (per-sample groups): ||dL/dW||_F^2 <= ||X||_2^2 sum_k RHS_4.1(g_k) (layers)
    thm4.4, thm4.4-printed       the minimax forms at lambda = ||X||_2 with the derivatives held fixed: BatchNorm's
                                 typed forms; l_p: lambda^2 ||dL/dy_j||^2 <= lambda^2 RHS_4.1(own); row layout:
                                 lambda^2 ||V||_F^2 <= lambda^2 sum_k RHS_4.1; weight space: ||dL/dv_j||^2 <=
                                 (gamma^2/sigma^2) lambda^2 ||delta_j||^2 (its maximum)

A statement without a measured route here (lem4.5 and its repair are about optima, not one batch) or without a
derived form for that normaliser (`numeric` raises KeyError) gets no check, and the report says "not measured".
Refuted statements are measured too: their violations say how often trained networks meet the counterexample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from theory import numeric
from verify.checks import (
    ACTIVATION_ASSUMPTIONS,
    FLOAT32_NORMAL_RANGE,
    Assumption,
    BoundCheck,
    UNIT_ROUNDOFF,
    activation_bound_check,
    gradient_identity_check,
    matched_scale_check,
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
    """thm4.2 (first form) and thm4.2b (second form) on one normalisation group, as typed in `theory.smoothness`
    (BatchNorm's formula on any axis: the statements exist for it only)."""
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


# --- thm4.4: weight space (weights joined to the captures; layers: per-layer sums) ----------------------

WEIGHT_TOLERANCE_REASON = (
    "tol = (||X||_2 (sqrt(RHS_4.1) + E) + e)^2 - ||X||_2^2 RHS_4.1: E bounds ||dL-hat/dy_j - J^T g|| (the a-priori "
    "float32 rounding bound of thm4.1 for BatchNorm's formula, else the measured distance from the formula's float64 "
    "gradient), and e = ||dL/dW_j - X^T dL/dy_j|| is the measured distance of the float32 weight gradient from the "
    "float64 product X^T dy (the identity is exact, so e is its rounding); ||X||_2 from a float64 eigvalsh. Per layer: "
    "the same with E^2 and e^2 summed over the layer's groups and units"
)
MINIMAX_TOLERANCE_REASON = (
    "the thm4.1 rounding tolerance scaled by lambda^2 = ||X||_2^2: the measured side is lambda^2 ||dL-hat/dy_j||^2, "
    "the maximum over the spectral ball with the derivatives held fixed (the reading of theory.weight_space)"
)
REPARAM_TOLERANCE_REASON = (
    "tol = 2 sqrt(RHS) E + E^2 with E the measured distance of dL/dv_j from the formula's float64 gradient "
    "(identity_err of the capture of the same step and unit): the right side is exact in float64"
)
_CAPTURE_FOUND = Assumption("capture of the same (step, layer, channel) found", lambda rows: np.isfinite(rows["g_sq"]))
WEIGHT_ASSUMPTIONS = ACTIVATION_ASSUMPTIONS[:3] + (
    _CAPTURE_FOUND,
    FLOAT32_NORMAL_RANGE,  # of the capture's backward
    Assumption("finite weight terms", lambda rows: np.isfinite(rows["grad_w_sq"]) & np.isfinite(rows["x_spec_sq"])
               & np.isfinite(rows["identity_err"])),
)
REPARAM_ASSUMPTIONS = ACTIVATION_ASSUMPTIONS[:3] + (
    _CAPTURE_FOUND,
    Assumption("finite weight terms", lambda rows: np.isfinite(rows["grad_w_sq"]) & np.isfinite(rows["x_spec_sq"])
               & np.isfinite(rows["dy_sq"]) & np.isfinite(rows["dy_error"])),
)
LAYER_ASSUMPTIONS = (
    Assumption("every group of the layer captured", lambda rows: rows["groups_found"] == rows["groups"]),
    Assumption("finite layer terms", lambda rows: np.isfinite(rows["grad_w_total"]) & np.isfinite(rows["x_spec_sq"])
               & np.isfinite(rows["rhs41_sum"]) & np.isfinite(rows["dy_error_sq_sum"])),
)


def _x(rows):
    return rows["x_spec_sq"]


def _reach_tolerance(rhs41: Callable, error: Callable, weight_error: Callable):
    """(rows, bound, dtype) -> (sqrt(x) (sqrt(RHS_4.1) + E) + e)^2 - x RHS_4.1 (WEIGHT_TOLERANCE_REASON)."""
    def tolerance(rows, bound, dtype):
        x, rhs = _x(rows), np.maximum(rhs41(rows), 0.0)
        reach = np.sqrt(x) * (np.sqrt(rhs) + error(rows)) + weight_error(rows)
        return reach**2 - x * rhs
    return tolerance


def _scaled_tolerance(rhs41: Callable, error: Callable):
    """(rows, bound, dtype) -> x ((sqrt(RHS_4.1) + E)^2 - RHS_4.1): the minimax side is x times thm4.1's."""
    def tolerance(rows, bound, dtype):
        rhs = np.maximum(rhs41(rows), 0.0)
        return _x(rows) * (2.0 * np.sqrt(rhs) * error(rows) + error(rows) ** 2)
    return tolerance


def _own_rhs41(normaliser: str) -> Callable:
    statement = numeric.activation_statement("thm4.1", normaliser)
    return lambda rows: statement(*(rows[name].astype(np.float64) if name == "m" else rows[name]
                                    for name in statement.reductions))


def weight_per_unit_check(normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.4-per-unit: column layout ||dL/dW_j||^2 <= ||X||_2^2 RHS_4.1(own); weights layout (weight space) the
    reparametrised form of `numeric.weight_grad_bound`."""
    layout = numeric.weight_layout(normaliser)
    if layout == "column":
        rhs41 = _own_rhs41(normaliser)
        return BoundCheck(id="thm4.4-per-unit", normaliser=normaliser, measured="grad_w_sq",
                          bound=lambda rows: _x(rows) * rhs41(rows),
                          tolerance=_reach_tolerance(rhs41, lambda r: r["dy_error"], lambda r: r["identity_err"]),
                          tolerance_reason=WEIGHT_TOLERANCE_REASON, assumptions=WEIGHT_ASSUMPTIONS, table="weights")
    if layout == "weights":
        rhs = numeric.weight_grad_bound(normaliser)
        return BoundCheck(id="thm4.4-per-unit", normaliser=normaliser, measured="grad_w_sq",
                          bound=lambda rows: rhs(_x(rows), rows["dy_sq"], *_reparam_invariants(rows)),
                          tolerance=_measured_tolerance, tolerance_reason=REPARAM_TOLERANCE_REASON,
                          assumptions=REPARAM_ASSUMPTIONS, table="weights")
    raise KeyError(f"{normaliser}: per-sample groups have no per-unit weight bound (thm4.4-per-layer instead)")


def _reparam_invariants(rows) -> tuple:
    return rows["g_sum"], rows["g_yhat"], rows["m"].astype(np.float64), rows["gamma"], rows["sigma"]


def _measured_tolerance(rows, bound, dtype):
    error = rows["dy_error"]
    return 2.0 * np.sqrt(np.maximum(bound, 0.0)) * error + error**2


def layer_weight_check(normaliser: str) -> BoundCheck:
    """thm4.4-per-layer (row layout): ||dL/dW||_F^2 <= ||X||_2^2 sum_k RHS_4.1(g_k) over the layer's groups."""
    if numeric.weight_layout(normaliser) != "row":
        raise KeyError(f"{normaliser}: thm4.4-per-layer is the per-sample groups' statement")
    total = lambda rows: rows["rhs41_sum"]
    return BoundCheck(id="thm4.4-per-layer", normaliser=normaliser, measured="grad_w_total",
                      bound=lambda rows: _x(rows) * total(rows),
                      tolerance=_reach_tolerance(total, lambda r: np.sqrt(r["dy_error_sq_sum"]),
                                                 lambda r: r["weight_error"]),
                      tolerance_reason=WEIGHT_TOLERANCE_REASON, assumptions=LAYER_ASSUMPTIONS, table="layers")


def minimax_weight_check(claim_id: str, normaliser: str = "batchnorm") -> BoundCheck:
    """thm4.4 and thm4.4-printed at the measured lambda = ||X||_2 (module doc), by the normaliser's layout."""
    layout = numeric.weight_layout(normaliser)
    common = dict(id=claim_id, normaliser=normaliser, tolerance_reason=MINIMAX_TOLERANCE_REASON)
    if layout == "row":
        if claim_id != "thm4.4":
            raise KeyError(f"{normaliser}: no {claim_id} for per-sample groups")
        total = lambda rows: rows["rhs41_sum"]
        return BoundCheck(measured="minimax_lhs", bound=lambda rows: _x(rows) * total(rows),
                          tolerance=_scaled_tolerance(total, lambda r: np.sqrt(r["dy_error_sq_sum"])),
                          assumptions=LAYER_ASSUMPTIONS, table="layers", **common)
    if layout == "weights":
        if claim_id != "thm4.4":
            raise KeyError(f"{normaliser}: no {claim_id} in weight space")
        rhs = numeric.weight_grad_bound(normaliser)
        zero = lambda rows: np.zeros_like(rows["dy_sq"])
        return BoundCheck(measured="grad_w_sq",
                          bound=lambda rows: rhs(_x(rows), rows["dy_sq"], zero(rows), zero(rows),
                                                 *_reparam_invariants(rows)[2:]),
                          tolerance=_measured_tolerance, assumptions=REPARAM_ASSUMPTIONS, table="weights",
                          **{**common, "tolerance_reason": REPARAM_TOLERANCE_REASON})
    try:  # column layout: BatchNorm's typed forms where its formula has them
        typed = numeric.minimax_weight_bound(claim_id)
        closed = numeric.grad_sq_norm_statement(normaliser) is not None
    except KeyError:
        typed, closed = None, False
    if typed is not None and closed:
        invariants = lambda rows: (rows["g_sq"], rows["g_sum"], rows["g_yhat"], rows["m"].astype(np.float64),
                                   rows["gamma"], rows["sigma"])
        rhs41 = lambda rows: np.maximum(typed(_x(rows), *invariants(rows)), 0.0) / np.where(_x(rows) > 0, _x(rows), 1.0)
        return BoundCheck(measured="minimax_lhs", bound=lambda rows: typed(_x(rows), *invariants(rows)),
                          tolerance=_scaled_tolerance(rhs41, lambda r: r["dy_error"]),
                          assumptions=WEIGHT_ASSUMPTIONS, table="weights", **common)
    if claim_id != "thm4.4":
        raise KeyError(f"{normaliser}: no {claim_id}")
    rhs41 = _own_rhs41(normaliser)
    return BoundCheck(measured="minimax_lhs", bound=lambda rows: _x(rows) * rhs41(rows),
                      tolerance=_scaled_tolerance(rhs41, lambda r: r["dy_error"]),
                      assumptions=WEIGHT_ASSUMPTIONS, table="weights", **common)


# --- which checks a statement gets ---------------------------------------------------------------------------

STATEMENT_CHECKS: dict[str, Callable[[str, str], BoundCheck]] = {
    "factC.1": lambda sid, n: gradient_identity_check(n),
    "thm4.1": activation_bound_check,
    "thm4.1-printed": activation_bound_check,
    "thm4.1-reduction": activation_bound_check,
    "obs4.3": lambda sid, n: matched_scale_check(n),
    "thm4.2": smoothness_check,
    "thm4.2b": smoothness_check,
    "thm4.4-per-unit": lambda sid, n: weight_per_unit_check(n),
    "thm4.4-per-layer": lambda sid, n: layer_weight_check(n),
    "thm4.4": minimax_weight_check,
    "thm4.4-printed": minimax_weight_check,
}


def bound_checks(theory: dict, normalisers) -> list[BoundCheck]:
    """Every measurable statement of every normaliser in `normalisers` (names), in theory.json's order."""
    checks = []
    for normaliser in normalisers:
        for statement in theory.get(normaliser, {}):
            build = STATEMENT_CHECKS.get(statement)
            if build is None:
                continue
            try:
                checks.append(build(statement, normaliser))
            except KeyError:  # no derived form of this statement for this normaliser: not measured
                continue
    return checks


def default_bound_checks() -> tuple[BoundCheck, ...]:
    """BatchNorm's measured statements (the paper's subject), without a theory.json at hand."""
    return tuple(bound_checks({"batchnorm": dict.fromkeys(STATEMENT_CHECKS)}, ["batchnorm"]))
