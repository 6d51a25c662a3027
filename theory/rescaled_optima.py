"""The premise of lem4.5, tested: are positive rescalings c W* of a standard optimum optima of the BN network?

Lemma 4.5 bounds the distance from an initialisation W0 to the closest BN optimum by the distance
from W0 to the ray {c W* : c > 0} of the closest standard optimum W*; that step needs every c W* to
be a BN optimum. W is the weight matrix feeding the BN layer (the one BN makes scale-invariant);
every other parameter is re-optimised wherever a loss "at W" is needed.

Small regression problems, float64, NumPy/SciPy only, fixed seeds (so every number is reproducible):

    data: X (m x d) ~ N(0, 1) + 1.5 (nonzero column means), t = X a + 2 + 0.3 noise
    standard  one layer:  f = X w (+ b)          two layers (linear, width h): f = (X W (+ b1)) w2 (+ b2)
    BN        one layer:  f = gamma yhat(X w) + beta
              two layers: f = (gamma * yhat(X W) + beta) w2 (+ b2)
    yhat per unit over the batch, biased variance, eps = 1e-5 (PyTorch's default); mean squared error.

Two layers are linear, like the paper's deep linear network: then both losses at fixed W are linear
least squares in the remaining parameters, so the *profile* P(W) = min over them is exact (variable
projection): standard one layer: b = mean(t - X w); otherwise least squares of t on the columns
[X W (, 1)] (standard) or [yhat(X W), 1] (BN; beta w2 + b2 is one constant, gamma * w2 one vector).
Both networks are trained by Levenberg-Marquardt on P(W) from several random starts, and checked
against the closed-form optima (ordinary least squares with and without intercept).

The optimum sets in W follow from the profile: with X_c (X centred) of full column rank and v_c the
centred least-squares direction, v_0 the one without intercept,
    BN:        { W : v_c in col(W) }          (a cone: each column's scale and sign is absorbed by gamma)
    standard:  { v_c } or { v_0 } in one layer (with / without bias), { W : v in col(W) } in two layers.
The closest point of a cone { W : v in col(W) } to W0 is W0 - (P W0 c) c^T, P the projector onto
v's orthogonal complement and c the right singular vector of P W0 for its smallest singular value
(distance^2 = sigma_min(P W0)^2). These closed forms are cross-checked by SLSQP on
{ W : P(W) <= optimum } from several starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize

EPS = 1e-5  # BN's eps (PyTorch default); with gamma learnable it does not change the function class
RESCALINGS = (0.25, 0.5, 1.0, 2.0, 4.0)  # c in the premise check
RESTARTS = 6  # random starts per training run
PREMISE_RTOL = 1e-8  # gap/var(t) below this means "c W* is a BN optimum": the profile is exact least
#                      squares and LM stops at 1e-12, so optima agree to ~1e-12 var(t); failures are >= 1e-3
INIT_DRAWS = 200  # initialisations W0 ~ N(0, I) per case for the lemma's inequality
CROSSCHECK_DRAWS = 1  # of those, how many are also solved by SLSQP (a second route to the distances)
SLSQP_SLACK = 1e-10  # SLSQP's feasible set {P(W) <= optimum (1 + slack)}: a loss slack delta lets it get
#                      ~sqrt(delta) (relative) closer to W0 than the exact optimum set, ~1e-5 here
LEMMA_RTOL = 1e-9  # lhs > rhs (1 + this) counts as a violation (distances are closed forms in float64)


@dataclass(frozen=True)
class Case:
    name: str
    hidden: int  # 0: one layer, BN on its output unit; h > 0: a linear hidden layer of width h with BN
    standard_bias: bool  # biases in the standard network (BN's beta is always there)
    samples: int = 16
    features: int = 3
    seed: int = 0


CASES = (
    Case("one layer, standard with bias", 0, True),
    Case("one layer, standard without bias", 0, False),
    Case("two linear layers, standard with biases", 2, True),
    Case("two linear layers, standard without biases", 2, False),
)


# --- data, profile losses, closed-form optima --------------------------------------------------------


def problem(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(X, t): X (m, d) with column offsets 1.5, t = X a + 2 + 0.3 noise (no loss is zero)."""
    rng = np.random.default_rng(case.seed)
    X = rng.normal(size=(case.samples, case.features)) + 1.5
    return X, X @ rng.normal(size=case.features) + 2.0 + 0.3 * rng.normal(size=case.samples)


def _normalise(Y: np.ndarray) -> np.ndarray:
    centred = Y - Y.mean(axis=0)
    return centred / np.sqrt((centred**2).mean(axis=0) + EPS)


def profile_residual(case: Case, bn: bool, W: np.ndarray, X: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(fit - t)/sqrt(m) at weights W (d, h), every other parameter at its exact optimum."""
    Y = X @ W
    ones = np.ones((len(t), 1))
    if not bn and case.hidden == 0:
        fit = Y[:, 0] + (np.mean(t - Y[:, 0]) if case.standard_bias else 0.0)
    else:
        basis = np.hstack([_normalise(Y), ones]) if bn else (np.hstack([Y, ones]) if case.standard_bias else Y)
        coef, *_ = np.linalg.lstsq(basis, t, rcond=None)
        fit = basis @ coef
    return (fit - t) / np.sqrt(len(t))


def profile_loss(case: Case, bn: bool, W: np.ndarray, X: np.ndarray, t: np.ndarray) -> float:
    residual = profile_residual(case, bn, W, X, t)
    return float(residual @ residual)


def optimal_direction(case: Case, bn: bool, X: np.ndarray, t: np.ndarray) -> np.ndarray:
    """v_c (centred least squares) for BN and biased standard networks, v_0 (no intercept) otherwise."""
    if bn or case.standard_bias:
        return np.linalg.lstsq(X - X.mean(axis=0), t - t.mean(), rcond=None)[0]
    return np.linalg.lstsq(X, t, rcond=None)[0]


def closest_optimum(case: Case, bn: bool, W0: np.ndarray, X: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The optimum of the network closest to W0 in Frobenius norm, by the closed forms above."""
    v = optimal_direction(case, bn, X, t)
    if not bn and case.hidden == 0:
        return v[:, None]  # one point, not a cone: the standard one-layer output is not scale-invariant
    P = np.eye(len(v)) - np.outer(v, v) / (v @ v)
    _, _, vt = np.linalg.svd(P @ W0)
    c = vt[-1]
    return W0 - np.outer(P @ W0 @ c, c)


def ray_distance_sq(W0: np.ndarray, W_star: np.ndarray) -> float:
    """The lemma's right side: ||W0 - W*||^2 - (||W*||^2 - <W*,W0>)^2 / ||W*||^2."""
    a, b = W0.ravel(), W_star.ravel()
    return float((a - b) @ (a - b) - (b @ b - b @ a) ** 2 / (b @ b))


# --- optimisation routes -----------------------------------------------------------------------------


def train(case: Case, bn: bool, X: np.ndarray, t: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """(best loss, its W) over RESTARTS Levenberg-Marquardt runs on the profile, from N(0, I) starts."""
    rng = np.random.default_rng(seed)
    shape = (X.shape[1], max(case.hidden, 1))
    runs = []
    for _ in range(RESTARTS):
        fitted = least_squares(lambda w: profile_residual(case, bn, w.reshape(shape), X, t),
                               rng.normal(size=shape).ravel(), method="lm", xtol=1e-12, ftol=1e-12, gtol=1e-12)
        W = fitted.x.reshape(shape)
        runs.append((profile_loss(case, bn, W, X, t), W))
    return min(runs, key=lambda run: run[0])


def constrained_distance_sq(case: Case, bn: bool, W0: np.ndarray, bound: float, X: np.ndarray, t: np.ndarray,
                            starts: list[np.ndarray]) -> float:
    """min ||W - W0||^2 subject to P(W) <= bound, by SLSQP from `starts` (inf if none converges feasibly)."""
    shape, best = W0.shape, np.inf
    for start in starts:
        result = minimize(lambda w: float(np.sum((w - W0.ravel()) ** 2)), start.ravel(), method="SLSQP",
                          constraints=[{"type": "ineq", "fun": lambda w: (bound - profile_loss(
                              case, bn, w.reshape(shape), X, t)) / bound}], options={"ftol": 1e-12, "maxiter": 200})
        if profile_loss(case, bn, result.x.reshape(shape), X, t) <= bound * (1 + 1e-8):
            best = min(best, float(result.fun))
    return best


# --- the experiment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LemmaCounterexample:
    """An initialisation W0 with <W0, W*> > 0 whose closest BN optimum is farther than lem4.5 allows."""

    case: str
    X: tuple
    t: tuple
    W0: tuple
    W_star: tuple  # the closest standard optimum
    W_bn: tuple  # the closest BN optimum (closed form)
    lhs: float  # ||W0 - W_bn||^2
    rhs: float  # ||W0 - W*||^2 - (||W*||^2 - <W*,W0>)^2/||W*||^2
    constrained_lhs: float  # the same distance by SLSQP on {W : P_BN(W) <= BN optimum}: a second route
    premise_gap_over_var: float  # (P_BN(W*) - BN optimum) / var(t): why the lemma's proof does not apply

    def as_dict(self) -> dict:
        return {"case": self.case, "X": [list(row) for row in self.X], "t": list(self.t), "W0": list(self.W0),
                "W_star": list(self.W_star), "W_bn": list(self.W_bn), "lhs": self.lhs, "rhs": self.rhs,
                "constrained_lhs": self.constrained_lhs, "premise_gap_over_var": self.premise_gap_over_var}


def _closed_form_loss(case: Case, bn: bool, X: np.ndarray, t: np.ndarray) -> float:
    """The optimum value by ordinary least squares (with intercept for BN and biased standard networks)."""
    design = np.hstack([X, np.ones((len(t), 1))]) if bn or case.standard_bias else X
    coef, *_ = np.linalg.lstsq(design, t, rcond=None)
    return float(np.mean((design @ coef - t) ** 2))


def _distance_sq(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.sum((A - B) ** 2))


def run_case(case: Case) -> tuple[dict, LemmaCounterexample | None]:
    """Premise and lemma for one case: (JSON-able summary, the first lemma violation if any)."""
    X, t = problem(case)
    scale = float(np.var(t))  # loss gaps are reported as fractions of var(t)
    L_std, W_trained = train(case, False, X, t, seed=100 * case.seed + 1)
    L_bn, _ = train(case, True, X, t, seed=100 * case.seed + 2)
    best_std = min(L_std, _closed_form_loss(case, False, X, t))
    best_bn = min(L_bn, _closed_form_loss(case, True, X, t))
    gaps = [(profile_loss(case, True, c * W_trained, X, t) - best_bn) / scale for c in RESCALINGS]

    rng = np.random.default_rng(100 * case.seed + 3)
    rows, failure, optimality_gap, crosscheck_gap = [], None, 0.0, 0.0
    for _ in range(INIT_DRAWS):
        W0 = rng.normal(size=W_trained.shape)
        W_star = closest_optimum(case, False, W0, X, t)
        if float(np.sum(W0 * W_star)) <= 0:
            continue  # outside the lemma's hypothesis <W0, W*> > 0
        W_bn = closest_optimum(case, True, W0, X, t)
        lhs, rhs = _distance_sq(W0, W_bn), ray_distance_sq(W0, W_star)
        improvement = (float(np.sum(W_star**2)) - float(np.sum(W_star * W0))) ** 2 / float(np.sum(W_star**2))
        rows.append((lhs / rhs, improvement / _distance_sq(W0, W_star)))
        optimality_gap = max(optimality_gap, (profile_loss(case, True, W_bn, X, t) - best_bn) / scale,
                             (profile_loss(case, False, W_star, X, t) - best_std) / scale)
        if len(rows) <= CROSSCHECK_DRAWS:  # second route, started at W0: SLSQP must not beat the closed forms
            for bn, closed in ((True, W_bn), (False, W_star)):
                bound = (best_bn if bn else best_std) * (1 + SLSQP_SLACK)
                slsqp = constrained_distance_sq(case, bn, W0, bound, X, t, [W0])
                relative = (slsqp - _distance_sq(W0, closed)) / _distance_sq(W0, closed)
                crosscheck_gap = relative if abs(relative) > abs(crosscheck_gap) else crosscheck_gap
        if failure is None and lhs > rhs * (1 + LEMMA_RTOL):
            failure = LemmaCounterexample(
                case=case.name, X=tuple(map(tuple, X.tolist())), t=tuple(t.tolist()), W0=tuple(W0.ravel().tolist()),
                W_star=tuple(W_star.ravel().tolist()), W_bn=tuple(W_bn.ravel().tolist()), lhs=lhs, rhs=rhs,
                constrained_lhs=constrained_distance_sq(case, True, W0, best_bn * (1 + SLSQP_SLACK), X, t, [W0, -W_bn]),
                premise_gap_over_var=(profile_loss(case, True, W_star, X, t) - best_bn) / scale)
    ratios, improvements = np.array([r for r, _ in rows]), np.array([i for _, i in rows])
    summary = {
        "case": case.name, "samples": case.samples, "features": case.features, "hidden": case.hidden,
        "standard_bias": case.standard_bias, "standard_loss": best_std, "bn_loss": best_bn, "target_variance": scale,
        "trained_vs_closed_form_over_var": max(abs(L_std - best_std), abs(L_bn - best_bn)) / scale,
        "premise_gap_over_var_by_c": {str(c): gap for c, gap in zip(RESCALINGS, gaps)},
        "premise_holds": bool(max(gaps) <= PREMISE_RTOL),
        "inits_with_positive_inner_product": len(rows),
        "lemma_violations": int(np.sum(ratios > 1 + LEMMA_RTOL)),
        "lemma_ratio_min": float(ratios.min()), "lemma_ratio_median": float(np.median(ratios)),
        "lemma_ratio_max": float(ratios.max()),
        "improvement_term_fraction_median": float(np.median(improvements)),
        "closed_form_optimality_gap_over_var": optimality_gap,
        "slsqp_minus_closed_form_rel": crosscheck_gap,  # signed; ~ -sqrt(SLSQP_SLACK) is agreement
    }
    return summary, failure


def run_all(cases=CASES) -> tuple[list[dict], LemmaCounterexample | None]:
    """Every case's summary and the first lemma violation found."""
    summaries, failure = [], None
    for case in cases:
        summary, found = run_case(case)
        summaries.append(summary)
        failure = failure or found
    return summaries, failure
