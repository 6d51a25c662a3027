"""Claims beyond the paper (issue 16): does BatchNorm lower the sharpness, or only the curvature along the gradient
that the paper's effective beta measures? Decided from the `sharpness/` probe table (empirics.sharpness) with the
conventions of `verify.effects`, fixed before looking at any result.

    bn-lower-sharpness     none / BN ratio of the RAW sharpness lambda_max(H) per seed pair, at matched training
                           loss (the sharpness levels, `config.SharpnessConfig`) and in the early window where the
                           runs share probe steps; the paired-seed bootstrap interval of `verify.statistics` against
                           1; at every learning rate where the standard network trains (VGG-1d) and on the DLN.
                           Why the raw one decides: both networks take the same SGD step eta in the same coordinates,
                           and a step is stable along an eigenvector only while eta lambda < 2 (the 2/eta line of
                           Cohen et al. 2021), so lambda_max is the like-for-like quantity. For a scale-invariant
                           layer W (one feeding BN) eta lambda_raw = (eta / ||W||^2)(||W||^2 lambda_raw) = eta_eff
                           lambda_eff: the raw value at the actual weights already is the effective sharpness at the
                           effective learning rate (Lyu, Li and Arora 2022), so nothing is double counted. The
                           effective sharpness lambda_max(D H D) itself (every such layer at unit norm) has no
                           counterpart in the standard network, whose weights have no free scale: a none / BN
                           ratio of it would measure the unit-norm convention (||W||^2 ~ 8-10 at Glorot
                           initialisation here), not the landscape. It is shown beside the raw ratio, with BN's
                           weight norms, so the reader sees whether BN's lower raw sharpness comes from a flatter
                           function (lambda_eff falls) or from weight-norm growth alone (lambda_eff does not: plain
                           SGD grows a scale-invariant W, ||W_{t+1}||^2 = ||W_t||^2 + eta^2 ||g_W||^2).
    beta-tracks-sharpness  Spearman rank correlation, over every probe where both are measured (the sharpness
                           probe's steps, at which the landscape probe ran too), between the paper's effective beta
                           (Fig. 4c) and the RAW lambda_max: beta is measured in raw parameter coordinates along
                           -g (||grad L(x - eta g) - g|| / ||eta g|| <= max |eigenvalue| of H on the segment), so the
                           raw Hessian is its like-for-like counterpart. Probes of the standard and the BN network of
                           each seed are pooled per (model, learning rate); the 95% interval is the percentile
                           bootstrap over seeds (RHO_RESAMPLES resamples of whole seeds, a fixed generator).
                           Reproduced when the interval lies above RANK_TRACKING, not reproduced when below.
"""

from __future__ import annotations

import numpy as np

from verify import progress
from verify.effects import EmpiricalClaim, PaperMagnitude, Runs, compare_metric, lrs_of, pairs, select, stuck
from verify.effects import _axes_text as axes_text
from verify.progress import Metric
from verify.statistics import CONFIDENCE, INCONCLUSIVE, MIN_SEEDS, NOT_MEASURED, NOT_REPRODUCED, REPRODUCED, Threshold
from verify.statistics import conjunction

EXTENSION = "extension beyond the paper"
RANK_TRACKING = 0.5  # "tracks": a rank correlation above 0.5 (a moderate monotone association), fixed beforehand
RHO_RESAMPLES = 2000  # a rank correlation per resample, looped: 2,000 keep the verify stage's cost small
_RHO_SEED = 20212  # any fixed value: the interval is a deterministic function of the data
KINDS = ("vgg1d", "dln")


def _column(name: str):
    return lambda columns: np.asarray(columns[name], dtype=np.float64)


SHARPNESS_RAW = Metric("lambda_max", "sharpness", "sharpness lambda_max(H), the quantity of the 2/eta line",
                       _column("lambda_max"))
SHARPNESS_EFF = Metric("lambda_eff", "sharpness", "effective sharpness lambda_max(D H D): every scale-invariant layer "
                       "at unit norm (= lambda_max for the standard network)", _column("lambda_eff"))
HESSIAN_TRACE = Metric("hessian_trace", "sharpness", "Hutchinson trace tr H", _column("trace"))
METRICS = {metric.name: metric for metric in (SHARPNESS_RAW, SHARPNESS_EFF, HESSIAN_TRACE)}


# ---------------------------------------------------------------- bn-lower-sharpness


def bn_lower_sharpness(runs: Runs) -> tuple[str, dict]:
    measured, verdicts, excluded = {}, [], []
    threshold = Threshold("above", 1.0)
    for kind in KINDS:
        for lr in lrs_of(runs, kind, ("none", "batchnorm")):
            run_pairs = [(a, b) for a, b in pairs(runs, kind, "none", "batchnorm", lr)
                         if progress.probe_rows(a, "sharpness") is not None and progress.probe_rows(b, "sharpness")
                         is not None]
            if not run_pairs:
                continue
            if kind == "vgg1d" and stuck(select(runs, kind, "none", lr)):
                excluded.append(lr)  # a network at chance (dead units) is trivially flat: says nothing
                continue
            comparison = compare_metric(run_pairs, SHARPNESS_RAW, threshold)
            measured[f"{kind} lr={lr:g}"] = {
                "decided_by": comparison, "kind": kind, "lr": lr, "pair": ["none", "batchnorm"],
                "supporting": [compare_metric(run_pairs, metric, threshold) for metric in (SHARPNESS_EFF, HESSIAN_TRACE)]}
            verdicts.append(comparison["verdict"])
    text = []
    for key, value in measured.items():
        effective = value["supporting"][0]
        text.append(f"{key.replace('=', ' ')}: sharpness none/BN {axes_text(value['decided_by'])}; effective "
                    f"(BN's scale-invariant layers at unit norm) {axes_text(effective)}")
    if excluded:
        measured["excluded_lrs_stuck"] = excluded
        text.append(f"not compared at VGG-1d lr {', '.join(f'{lr:g}' for lr in excluded)} (standard network stuck)")
    measured["headline"] = "; ".join(text) or "no sharpness probes"
    return conjunction(verdicts), measured


# ---------------------------------------------------------------- beta-tracks-sharpness


def _beta_and_sharpness(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """(beta_eff, raw lambda_max) at every step both the landscape and the sharpness probe measured."""
    landscape, sharp = progress.probe_rows(run, "landscape"), progress.probe_rows(run, "sharpness")
    if landscape is None or sharp is None:
        return np.zeros(0), np.zeros(0)
    beta_at = {int(s): float(b) for s, b in zip(landscape["step"], landscape["beta_eff"])}
    points = [(beta_at[int(s)], float(lam)) for s, lam in zip(sharp["step"], sharp["lambda_max"]) if int(s) in beta_at]
    points = [(b, lam) for b, lam in points if np.isfinite(b) and np.isfinite(lam)]
    return np.asarray([p[0] for p in points]), np.asarray([p[1] for p in points])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of their ranks (scipy.stats.rankdata's "average" method,
    without its argument handling: the bootstrap below ranks ~6,000 resampled sets)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1], [True])))
    mean_rank = (starts[:-1] + starts[1:] + 1) / 2  # ranks starts+1 .. next start, averaged
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, np.diff(starts))
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 points or a constant side."""
    if x.size < 3:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def rho_interval(by_seed: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict:
    """{"rho", "ci", "seeds", "points"}: the pooled rank correlation and its percentile bootstrap over seeds."""
    seeds = sorted(s for s, (x, _) in by_seed.items() if x.size)
    x = np.concatenate([by_seed[s][0] for s in seeds]) if seeds else np.zeros(0)
    y = np.concatenate([by_seed[s][1] for s in seeds]) if seeds else np.zeros(0)
    record = {"rho": spearman(x, y), "ci": None, "seeds": len(seeds), "points": int(x.size)}
    if len(seeds) < 2 or not np.isfinite(record["rho"]):
        return record
    rng = np.random.default_rng(_RHO_SEED)
    draws = []
    for picks in rng.integers(0, len(seeds), size=(RHO_RESAMPLES, len(seeds))):
        chosen = [seeds[i] for i in picks]
        value = spearman(np.concatenate([by_seed[s][0] for s in chosen]), np.concatenate([by_seed[s][1] for s in chosen]))
        if np.isfinite(value):
            draws.append(value)
    if draws:
        tail = (1 - CONFIDENCE) / 2
        record["ci"] = [float(v) for v in np.quantile(draws, [tail, 1 - tail])]
    return record


def _decide_rho(record: dict) -> str:
    if record["points"] == 0:
        return NOT_MEASURED
    if record["seeds"] < MIN_SEEDS or record["ci"] is None:
        return INCONCLUSIVE
    low, high = record["ci"]
    return REPRODUCED if low > RANK_TRACKING else NOT_REPRODUCED if high < RANK_TRACKING else INCONCLUSIVE


def _rho_text(record: dict, points: bool = True) -> str:
    rho = "n/a" if not np.isfinite(record["rho"]) else f"{record['rho']:.2f}"
    ci = f" [{record['ci'][0]:.2f}, {record['ci'][1]:.2f}]" if record["ci"] else ""
    seeds = f"{record['seeds']} seed{'s' if record['seeds'] != 1 else ''}"
    return f"rho {rho}{ci}" + (f" over {record['points']} probes of {seeds}" if points else "")


def beta_tracks_sharpness(runs: Runs) -> tuple[str, dict]:
    measured, verdicts = {}, []
    for kind in KINDS:
        for lr in lrs_of(runs, kind, ("none", "batchnorm")):
            by_seed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            per_network, points = {}, {}
            for norm in ("none", "batchnorm"):
                xs, ys = [], []
                for run in select(runs, kind, norm, lr):
                    beta, lam = _beta_and_sharpness(run)
                    seed = int(run["spec"]["seed"])
                    old = by_seed.get(seed, (np.zeros(0), np.zeros(0)))
                    by_seed[seed] = (np.concatenate([old[0], beta]), np.concatenate([old[1], lam]))
                    xs.append(beta)
                    ys.append(lam)
                x, y = (np.concatenate(v) if v else np.zeros(0) for v in (xs, ys))
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = x / y
                ratio = ratio[np.isfinite(ratio) & (y > 0)]
                per_network[norm] = {"rho": spearman(x, y), "points": int(x.size),
                                     "beta_over_lambda_median": float(np.median(ratio)) if ratio.size else None}
                points[norm] = [[float(b), float(lam)] for b, lam in zip(x, y)]
            record = rho_interval(by_seed)
            if record["points"] == 0:
                continue
            record.update(kind=kind, lr=lr, per_network=per_network, threshold=f"> {RANK_TRACKING:g}",
                          verdict=_decide_rho(record), xy=points)
            measured[f"{kind} lr={lr:g}"] = record
            verdicts.append(record["verdict"])
    records = dict(measured)
    # the (x, y) of every record's `xy`, drawn per record (verify.claim_figures.scatter_figure)
    measured["scatter"] = {"x": "effective beta along -g (landscape probe)", "y": "raw lambda_max (sharpness probe)"}
    measured["headline"] = "; ".join(
        f"{key.replace('=', ' ')}: {_rho_text(v)}; beta / lambda_max median "
        + ", ".join(f"{'BN' if n == 'batchnorm' else 'standard'} {p['beta_over_lambda_median']:.2g}"
                    for n, p in v["per_network"].items() if p["beta_over_lambda_median"] is not None)
        for key, v in records.items()) or "no probe with both beta and the sharpness"
    # the claims table's cell: the deciding rank correlations only (the headline, in the details, has the rest)
    measured["short"] = "; ".join(f"{key.replace('vgg1d ', '').replace('dln ', 'DLN ').replace('=', ' ')}: "
                                  f"{_rho_text(v, points=False)}" for key, v in records.items()) or measured["headline"]
    measured["seeds"] = sorted({v["seeds"] for v in records.values()})
    return conjunction(verdicts), measured


# ---------------------------------------------------------------- the claims


def extension_claims() -> tuple[EmpiricalClaim, ...]:
    return (
        EmpiricalClaim(
            "bn-lower-sharpness", EXTENSION,
            "BN lowers the sharpness: the top eigenvalue of the training loss's Hessian is smaller than the standard "
            "network's at the same training loss.",
            PaperMagnitude("not measured (Fig. 4c: curvature along -g only); Cohen et al. 2021: it rises to ~2/eta "
                           "with and without BN", "beyond the paper: Lyu, Li and Arora (2022) effective sharpness; "
                           "Cohen et al. (2021), sharpness rising to ~2/eta under full-batch GD with and without BN"),
            "none / BN raw sharpness lambda_max(H) per seed pair at matched training loss and in the early window "
            f"(each axis with at least {MIN_SEEDS} seed pairs must lie above 1; one with fewer does not vote), at every "
            "learning rate where the standard network trains and on the DLN; BN's "
            "effective sharpness lambda_max(D H D) and the trace are shown beside it (verify.sharpness_claims: why "
            "the raw one decides)", bn_lower_sharpness, Threshold("above", 1.0), extension=True),
        EmpiricalClaim(
            "beta-tracks-sharpness", EXTENSION,
            "The paper's effective beta-smoothness follows the top Hessian eigenvalue: probes with a larger "
            "lambda_max have a larger beta.",
            PaperMagnitude("not measured; its beta is a curvature along -g, at most max |eigenvalue| "
                           "(quadratic model)", "beyond the paper: Fig. 4c beside PyHessian / Cockpit's lambda_max; "
                           "beta is a directional curvature along -g, at most max |eigenvalue| of H in the quadratic "
                           "approximation"),
            f"Spearman rank correlation between beta_eff and the raw lambda_max over the probes of both networks, "
            f"per model and learning rate, 95% bootstrap interval over seeds above {RANK_TRACKING:g} (below it: not "
            "reproduced)", beta_tracks_sharpness, Threshold("above", RANK_TRACKING), extension=True),
    )
