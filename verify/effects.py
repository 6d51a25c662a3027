"""The paper's empirical claims as data, each decided from paired seeds with a confidence interval.

A claim is a record: id, figure, the statement, the paper's own magnitude with its source, the criterion
in words, and a pure function from the loaded runs ({"spec", "history", "probes"}, `empirics.runner`) to
(verdict, measured values). Tests feed synthetic runs with known outcomes and see each verdict flip.

How a verdict is reached (conventions fixed before looking at any result):
- runs of two configurations are paired by seed (same initialisation stream and batch order), each pair
  gives a log-ratio, and the ratio's 95% interval is bootstrapped over seeds (`verify.statistics`);
- a ratio is `reproduced` when its interval lies on the paper's side of the claim's threshold, `not
  reproduced` when it lies on the other side, `inconclusive` otherwise or with fewer than 3 seeds;
- probe metrics (landscape, ICS) are compared on three axes (`verify.progress`): at matched training
  loss, in the early window where both networks still train, and over the whole run; the first two
  decide and must agree, the whole-run ratio is shown beside them (it mixes smoothness with convergence);
- every such claim is decided on a scale-free metric (loss range / loss, gradient change / ||g||, ICS
  relative to ||G||); the raw metrics of the paper's figures are reported beside it;
- steps to the accuracy threshold as in `verify.training` (running mean of 5 logged batches >= 0.8); a run
  that never reaches it counts as the steps it ran, a censored value that bounds the ratio on one side
  only: a verdict that would need the other side is inconclusive;
- landscape comparisons are made only at learning rates where the standard network trains: a network
  stuck at chance (dead units, zero gradients) is trivially flat, which says nothing about smoothness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from empirics.activations import distribution_drift
from verify import progress
from verify.progress import Metric, ics_metric, landscape_metric
from verify.statistics import (
    INCONCLUSIVE,
    MIN_SEEDS,
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    Threshold,
    agree,
    conjunction,
    decide,
    interval_text,
    ratio_interval,
)
from verify.training import steps_to_threshold

CHANCE = 0.1  # ten classes (mnist1d, CIFAR-10)
STUCK_MARGIN = 0.1  # final training accuracy within this of chance counts as not training
ABOUT_AS_FAST = 2.0  # "about as fast": steps to threshold within this factor of BN's
SIMILAR_OR_LARGER = 0.5  # "similar or larger": BN / none at least this (the band [0.5, 2] is "similar")
# the paper's VGG (Fig. 3) is probed at conv layers #5 and #10 of 13; here the convs at the same relative depth
PAPER_ICS_DEPTHS = (5 / 13, 10 / 13)

Runs = list[dict]


@dataclass(frozen=True)
class PaperMagnitude:
    text: str  # what the paper reports or shows, in its own terms
    source: str  # the figure or sentence it comes from


@dataclass(frozen=True)
class EmpiricalClaim:
    id: str
    figure: str
    statement: str  # what the paper says
    paper: PaperMagnitude
    criterion: str  # how the verdict is decided, in words
    evaluate: Callable[[Runs], tuple[str, dict]]
    threshold: Threshold | None = None  # the deciding ratio's threshold (None: a count-based claim)
    extension: bool = False  # a claim beyond the paper (verify.sharpness_claims), not one the paper makes


# ---------------------------------------------------------------- selecting runs


def select(runs: Runs, kind: str, norm: str, lr: float | None = None) -> Runs:
    return [r for r in runs if r["spec"].get("kind", "vgg1d") == kind and r["spec"]["norm"] == norm
            and (lr is None or float(r["spec"]["lr"]) == lr)]


def lrs_of(runs: Runs, kind: str, norms: tuple[str, ...]) -> list[float]:
    """Learning rates at which every norm in `norms` has runs of this kind."""
    sets = [{float(r["spec"]["lr"]) for r in select(runs, kind, norm)} for norm in norms]
    return sorted(set.intersection(*sets)) if sets else []


def pairs(runs: Runs, kind: str, norm_a: str, norm_b: str, lr: float) -> list[tuple[dict, dict]]:
    """(run of A, run of B) for every seed both have at this learning rate."""
    b_by_seed = {r["spec"]["seed"]: r for r in select(runs, kind, norm_b, lr)}
    return [(a, b_by_seed[a["spec"]["seed"]]) for a in sorted(select(runs, kind, norm_a, lr),
                                                                key=lambda r: r["spec"]["seed"])
            if a["spec"]["seed"] in b_by_seed]


def censored_steps(run: dict) -> tuple[float, bool]:
    """(steps to threshold, reached); a run that never reaches it counts as its steps done."""
    steps = steps_to_threshold(run["history"])
    return (float(steps), True) if steps is not None else (float(run["history"]["steps_done"]), False)


def spread(values) -> dict:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size),
            "per_seed": [float(v) for v in values]}


def steps_summary(group: Runs) -> dict:
    """Censored steps to threshold over a group's seeds, with how many runs reached it."""
    steps = [censored_steps(r) for r in group]
    return {**spread([s for s, _ in steps]), "reached": sum(ok for _, ok in steps), "runs": len(steps)}


def trains(run: dict) -> bool:
    """Not diverged, and final training accuracy above chance + STUCK_MARGIN."""
    return run["history"]["diverged_at"] is None and (run["history"]["final_train_acc"] or 0.0) > CHANCE + STUCK_MARGIN


def stuck(group: Runs) -> bool:
    """Every run diverged or ended at chance level (the standard net 'fails to train')."""
    return bool(group) and not any(trains(r) for r in group)


# ---------------------------------------------------------------- comparisons


def compare_metric(run_pairs, metric: Metric, threshold: Threshold) -> dict:
    """A/B ratio of `metric` per axis, with intervals; the verdict from the deciding axes (`progress`)."""
    logs = progress.paired_log_ratios(run_pairs, metric)
    axes = {}
    for axis in progress.AXES:
        if axis not in logs:
            continue
        interval = ratio_interval(logs[axis]["log_ratios"])
        # an axis that exists for fewer than MIN_SEEDS seed pairs (e.g. an early window most pairs lack) is
        # shown but does not decide: it has too few seeds to say anything either way
        deciding = axis in progress.DECIDING_AXES and interval["n"] >= MIN_SEEDS
        axes[axis] = {"interval": interval, "a": spread(logs[axis]["a"]), "b": spread(logs[axis]["b"]),
                      "covered": logs[axis]["covered"],
                      "verdict": decide(interval, threshold) if deciding else None}
    verdict = agree([axes[a]["verdict"] for a in progress.DECIDING_AXES if a in axes and axes[a]["verdict"]])
    if verdict == NOT_MEASURED and any(a in axes for a in progress.DECIDING_AXES):
        verdict = INCONCLUSIVE  # measured, but on too few seeds
    return {"metric": metric.name, "description": metric.description, "aggregate": metric.aggregate,
            "threshold": threshold.text(), "axes": axes, "verdict": verdict}


def compare_steps(run_pairs, threshold: Threshold) -> dict:
    """A/B ratio of (censored) steps to the accuracy threshold; a verdict a censored side cannot support is
    inconclusive (A censored: the ratio is a lower bound; B censored: an upper bound)."""
    logs, censored_a, censored_b = [], 0, 0
    for a, b in run_pairs:
        (steps_a, reached_a), (steps_b, reached_b) = censored_steps(a), censored_steps(b)
        censored_a += not reached_a
        censored_b += not reached_b
        logs.append(float(np.log(steps_a) - np.log(steps_b)))
    interval = ratio_interval(logs)
    verdict = decide(interval, threshold)
    says_above = verdict == (REPRODUCED if threshold.side == "above" else NOT_REPRODUCED)
    says_below = verdict == (NOT_REPRODUCED if threshold.side == "above" else REPRODUCED)
    if (says_above and censored_b) or (says_below and censored_a):
        verdict = INCONCLUSIVE
    return {"metric": "steps to the accuracy threshold", "threshold": threshold.text(), "interval": interval,
            "a": steps_summary([a for a, _ in run_pairs]), "b": steps_summary([b for _, b in run_pairs]),
            "censored": [censored_a, censored_b], "verdict": verdict}


def compare_values(run_pairs, value: Callable[[dict], float | None], name: str, threshold: Threshold) -> dict:
    """A/B ratio of one number per run (e.g. the final training loss), paired by seed."""
    logs, values_a, values_b = [], [], []
    for a, b in run_pairs:
        va, vb = value(a), value(b)
        values_a.append(va)
        values_b.append(vb)
        ok = va is not None and vb is not None and va > 0 and vb > 0
        logs.append(float(np.log(va) - np.log(vb)) if ok else float("nan"))
    interval = ratio_interval(logs)
    return {"metric": name, "threshold": threshold.text(), "interval": interval, "a": spread(values_a),
            "b": spread(values_b), "verdict": decide(interval, threshold)}


def _axes_text(comparison: dict) -> str:
    """'4.2× [3.1, 5.6] matched, 3.3× [...] early; whole run 410×'."""
    axes = comparison["axes"]
    decided = [f"{interval_text(axes[a]['interval'])} {'at matched loss' if a == 'matched' else 'early'}"
               for a in progress.DECIDING_AXES if a in axes]
    whole = axes.get("whole")
    text = "; ".join(decided) or "no matched or early probes"
    return text + (f" (whole run {interval_text(whole['interval'])})" if whole else "")


# ---------------------------------------------------------------- claim evaluators


def bn_faster(runs: Runs) -> tuple[str, dict]:
    measured, verdicts = {}, []
    for lr in lrs_of(runs, "vgg1d", ("none", "batchnorm")):
        comparison = compare_steps(pairs(runs, "vgg1d", "none", "batchnorm", lr), Threshold("above", 1.0))
        measured[f"lr={lr:g}"] = comparison
        verdicts.append(comparison["verdict"])
    measured["headline"] = "; ".join(
        f"lr {key[3:]}: none/BN steps to threshold {interval_text(c['interval'])}"
        f"{' (none censored in ' + str(c['censored'][0]) + ')' if c['censored'][0] else ''}"
        for key, c in measured.items())
    return conjunction(verdicts), measured


def bn_high_lr(runs: Runs) -> tuple[str, dict]:
    lrs = lrs_of(runs, "vgg1d", ("none", "batchnorm"))
    if len(lrs) < 2:  # "high" is relative: with one learning rate there is nothing to compare it with
        return NOT_MEASURED, {"learning_rates": lrs, "reason": "needs at least two learning rates",
                              "headline": "needs at least two learning rates"}
    lr = max(lrs)
    none, bn = select(runs, "vgg1d", "none", lr), select(runs, "vgg1d", "batchnorm", lr)
    none_trains, bn_reaches = sum(trains(r) for r in none), sum(censored_steps(r)[1] for r in bn)
    measured = {"lr": lr, "none_runs": len(none), "none_training": none_trains, "bn_runs": len(bn),
                "bn_reached_threshold": bn_reaches,
                "none_final_train_acc": spread([r["history"]["final_train_acc"] for r in none]),
                "none_diverged": sum(r["history"]["diverged_at"] is not None for r in none),
                "bn_steps_to_threshold": steps_summary(bn),
                # the runs the counts are of, drawn as training curves (verify.claim_figures.curves_figure)
                "curves": {"kind": "vgg1d", "lr": lr, "norms": ["none", "batchnorm"]}}
    measured["headline"] = (f"lr {lr:g}: none trains in {none_trains} of {len(none)} seeds (final accuracy "
                            f"{measured['none_final_train_acc']['mean']:.3f}); BN reaches the threshold in "
                            f"{bn_reaches} of {len(bn)}")
    seeds = min(len(none), len(bn))
    if seeds < 3:
        return INCONCLUSIVE, measured
    if none_trains == 0 and bn_reaches == len(bn):
        return REPRODUCED, measured
    if 2 * none_trains > len(none) or 2 * bn_reaches < len(bn):
        return NOT_REPRODUCED, measured
    return INCONCLUSIVE, measured


def noisy_bn_fast(runs: Runs) -> tuple[str, dict]:
    lrs = lrs_of(runs, "vgg1d", ("none", "batchnorm", "noisy_batchnorm"))
    if not lrs:
        return NOT_MEASURED, {"headline": "no noisy-BN runs"}
    lr = lrs[0]
    as_fast = compare_steps(pairs(runs, "vgg1d", "noisy_batchnorm", "batchnorm", lr), Threshold("below", ABOUT_AS_FAST))
    faster = compare_steps(pairs(runs, "vgg1d", "none", "noisy_batchnorm", lr), Threshold("above", 1.0))
    measured = {"lr": lr, "noisy BN / BN steps": as_fast, "none / noisy BN steps": faster,
                "headline": f"lr {lr:g}: noisy BN / BN steps {interval_text(as_fast['interval'])}; none / noisy BN "
                            f"{interval_text(faster['interval'])}"}
    return conjunction([as_fast["verdict"], faster["verdict"]]), measured


def _drift_per_probe(run: dict) -> float | None:
    """Mean over layers, units and consecutive histogram probes of the change of per-unit activation means and
    variances between one probe and the next (per probe, not per step: the noise is redrawn every step, so
    dividing by the probe gap would make the number depend on the schedule)."""
    probes = run.get("probes", {})
    steps = probes.get("hist/step")
    if steps is None or len(steps) < 2:
        return None
    changes, layer = [], 0
    while f"hist/mean_{layer}" in probes:
        drift = distribution_drift(probes[f"hist/mean_{layer}"], probes[f"hist/var_{layer}"])  # per probe
        changes.append(np.concatenate([drift["mean_change"], drift["var_change"]]))
        layer += 1
    values = np.concatenate(changes) if changes else np.array([])
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def noisy_bn_unstable(runs: Runs) -> tuple[str, dict]:
    lrs = lrs_of(runs, "vgg1d", ("batchnorm", "noisy_batchnorm"))
    if not lrs:
        return NOT_MEASURED, {"headline": "no noisy-BN runs"}
    lr = lrs[0]
    comparison = compare_values(pairs(runs, "vgg1d", "noisy_batchnorm", "batchnorm", lr), _drift_per_probe,
                                "activation drift per histogram probe", Threshold("above", 1.0))
    return comparison["verdict"], {"lr": lr, "noisy BN / BN drift": comparison,
                                   "headline": f"lr {lr:g}: drift noisy BN / BN {interval_text(comparison['interval'])}"}


def noisy_none_fails(runs: Runs) -> tuple[str, dict]:
    lrs = lrs_of(runs, "vgg1d", ("none", "noisy_none"))
    if not lrs:
        return NOT_MEASURED, {"headline": "no noisy standard-network runs"}
    lr = lrs[0]
    noisy = select(runs, "vgg1d", "noisy_none", lr)
    training = sum(trains(r) for r in noisy)
    slower = compare_steps(pairs(runs, "vgg1d", "noisy_none", "none", lr), Threshold("above", 1.0))
    measured = {"lr": lr, "runs": len(noisy), "training": training,
                "final_train_acc": spread([r["history"]["final_train_acc"] for r in noisy]),
                "none_final_train_acc": spread([r["history"]["final_train_acc"] for r in select(runs, "vgg1d", "none", lr)]),
                "noisy standard / standard steps": slower,
                "headline": f"lr {lr:g}: the noisy standard network trains in {training} of {len(noisy)} seeds "
                            f"(final accuracy {spread([r['history']['final_train_acc'] for r in noisy])['mean']:.3f}); "
                            f"steps noisy / plain {interval_text(slower['interval'])}"}
    if len(noisy) < 3:
        return INCONCLUSIVE, measured
    return (REPRODUCED if training == 0 else NOT_REPRODUCED if 2 * training > len(noisy) else INCONCLUSIVE), measured


def paper_ics_layers(run: dict) -> tuple[int, ...]:
    """Layer groups at the paper's relative depths: VGG convs #5, #10 of 13; DLN layers #9, #17 of 25."""
    config = run["spec"]["config"]
    if run["spec"].get("kind") == "dln":
        return tuple(sorted({max(0, round(config["dln"]["depth"] * k / 25) - 1) for k in (9, 17)}))
    convs = {"vgg11": 8, "vgg16": 13}.get(config["model"]["name"], len(config["model"]["channels"]))
    return tuple(sorted({max(1, round(convs * depth) - 1) for depth in PAPER_ICS_DEPTHS}))


# name -> (reading, at the paper's layers or over every measured layer with a normaliser, description)
ICS_READINGS = {
    "relative_ics_paper_layers": ("relative", True, "||G - G'|| / ||G|| at the paper's layers"),
    "raw_ics_paper_layers": ("raw", True, "||G - G'|| at the paper's layers (Fig. 3)"),
    "ics_per_update_paper_layers": ("per_update", True, "||G - G'|| / ||update of the earlier layers||"),
    "cosine_distance_paper_layers": ("cosine_distance", True, "1 - cos(G, G') (Fig. 3's cosine, as a distance)"),
    "relative_ics_all_layers": ("relative", False, "||G - G'|| / ||G|| over every measured layer with a normaliser"),
}


def _ics_metric(name: str, paper_layers: tuple[int, ...]) -> Metric:
    reading, at_paper_layers, description = ICS_READINGS[name]
    return ics_metric(name, description, reading, paper_layers if at_paper_layers else None)


def _ics(kind: str):
    def evaluate(runs: Runs) -> tuple[str, dict]:
        measured, verdicts = {}, []
        for lr in lrs_of(runs, kind, ("none", "batchnorm")):
            run_pairs = pairs(runs, kind, "batchnorm", "none", lr)
            if not run_pairs or progress.probe_rows(run_pairs[0][0], "ics") is None:
                continue
            layers = paper_ics_layers(run_pairs[0][0])
            threshold = Threshold("above", SIMILAR_OR_LARGER)
            decided, *others = (compare_metric(run_pairs, _ics_metric(name, layers), threshold) for name in ICS_READINGS)
            supporting = list(others)
            measured[f"lr={lr:g}"] = {"decided_by": decided, "supporting": supporting, "layers": list(layers),
                                      "kind": kind, "lr": lr, "pair": ["batchnorm", "none"]}
            verdicts.append(decided["verdict"])
        measured["headline"] = "; ".join(f"lr {k[3:]}: relative ICS BN/none {_axes_text(v['decided_by'])}"
                                         for k, v in measured.items()) or "no ICS probes"
        return conjunction(verdicts), measured
    return evaluate


def _landscape(kind: str, decided: Metric, supporting: tuple[Metric, ...], a: str = "none", b: str = "batchnorm"):
    """Ratio a / b of a landscape metric at every learning rate where `a` trains (module doc)."""
    def evaluate(runs: Runs) -> tuple[str, dict]:
        measured, verdicts, excluded = {}, [], []
        for lr in lrs_of(runs, kind, (a, b)):
            run_pairs = pairs(runs, kind, a, b, lr)
            if not run_pairs or progress.probe_rows(run_pairs[0][0], "landscape") is None:
                continue
            if kind == "vgg1d" and stuck(select(runs, kind, a, lr)):
                excluded.append(lr)
                continue
            threshold = Threshold("above", 1.0)
            comparison = compare_metric(run_pairs, decided, threshold)
            measured[f"lr={lr:g}"] = {"decided_by": comparison, "kind": kind, "lr": lr, "pair": [a, b],
                                      "supporting": [compare_metric(run_pairs, m, threshold) for m in supporting]}
            verdicts.append(comparison["verdict"])
        text = [f"lr {k[3:]}: {decided.name} {a}/{b} {_axes_text(v['decided_by'])}" for k, v in measured.items()]
        if excluded:
            measured["excluded_lrs_stuck"] = excluded
            text.append(f"not compared at lr {', '.join(f'{lr:g}' for lr in excluded)} ({a} stuck at chance)")
        measured["headline"] = "; ".join(text) or "no landscape probes"
        return conjunction(verdicts), measured
    return evaluate


LOSS_RANGE = landscape_metric("loss_range_rel", "max - min of L(x - eta g) over the eta grid, / L(x)", "loss_range", "loss0")
LOSS_RANGE_RAW = landscape_metric("loss_range", "max - min of L(x - eta g) over the eta grid (Fig. 4a)", "loss_range")
GRAD_CHANGE = landscape_metric("grad_change_rel", "max over eta of ||grad L(x - eta g) - g|| / ||g||",
                               "grad_change_max", "grad_norm")
GRAD_CHANGE_RAW = landscape_metric("grad_change", "max over eta of ||grad L(x - eta g) - g|| (Fig. 4b)", "grad_change_max")
BETA_SPIKES = landscape_metric("beta_p90", "90th percentile over probes of the effective beta (Fig. 4c: spikiness)",
                               "beta_eff", aggregate="p90")
BETA_MEDIAN = landscape_metric("beta_median", "median effective beta (Fig. 4c's level)", "beta_eff")


def metric_named(name: str, run: dict) -> Metric:
    """The comparison metric a claim record names (figures redraw it from the runs); ICS ones at `run`'s layers."""
    static = {m.name: m for m in (LOSS_RANGE, LOSS_RANGE_RAW, GRAD_CHANGE, GRAD_CHANGE_RAW, BETA_SPIKES, BETA_MEDIAN)}
    from verify.sharpness_claims import METRICS as SHARPNESS_METRICS  # the extension's (it imports this module)

    static.update(SHARPNESS_METRICS)
    return static[name] if name in static else _ics_metric(name, paper_ics_layers(run))


def lp_trains_like_bn(runs: Runs) -> tuple[str, dict]:
    measured, verdicts = {}, []
    for norm in _lp_norms(runs, "vgg1d"):
        lrs = lrs_of(runs, "vgg1d", (norm, "batchnorm"))
        if not lrs:
            continue
        comparison = compare_steps(pairs(runs, "vgg1d", norm, "batchnorm", lrs[0]), Threshold("below", ABOUT_AS_FAST))
        test = {n: spread([r["history"]["final_test_acc"] for r in select(runs, "vgg1d", n, lrs[0])])
                for n in (norm, "batchnorm")}
        measured[norm] = {"lr": lrs[0], "steps / BN": comparison, "final_test_acc": test}
        verdicts.append(comparison["verdict"])
    measured["headline"] = "; ".join(f"{norm}/BN steps {interval_text(v['steps / BN']['interval'])}, test accuracy "
                                     f"{v['final_test_acc'][norm]['mean']:.3f} vs {v['final_test_acc']['batchnorm']['mean']:.3f}"
                                     for norm, v in measured.items()) or "no lp runs"
    return conjunction(verdicts), measured


def _lp_norms(runs: Runs, kind: str) -> list[str]:
    return sorted({r["spec"]["norm"] for r in runs if str(r["spec"]["norm"]).startswith("lp")
                   and r["spec"].get("kind", "vgg1d") == kind})


def lp_smoother(runs: Runs) -> tuple[str, dict]:
    measured, verdicts = {}, []
    for norm in _lp_norms(runs, "vgg1d"):
        verdict, result = _landscape("vgg1d", GRAD_CHANGE, (GRAD_CHANGE_RAW,), "none", norm)(runs)
        if verdict == NOT_MEASURED:
            continue
        measured[norm] = result
        verdicts.append(verdict)
    measured["headline"] = "; ".join(f"{norm}: {v['headline']}" for norm, v in measured.items()) or "no lp landscape"
    return conjunction(verdicts), measured


def _final_train_loss(run: dict) -> float | None:
    value = run["history"].get("final_train_loss")
    return None if value is None or run["history"]["diverged_at"] is not None else float(value)


def l1_best_dln(runs: Runs) -> tuple[str, dict]:
    """l1 reaches a lower final training loss on the DLN than l2 (= BN's formula) and l-inf."""
    measured, verdicts = {}, []
    for lr in lrs_of(runs, "dln", ("lp1",)):
        for other in ("batchnorm", "lpinf"):
            run_pairs = pairs(runs, "dln", "lp1", other, lr)
            if not run_pairs:
                continue
            comparison = compare_values(run_pairs, _final_train_loss, "final training loss", Threshold("below", 1.0))
            measured[f"l1 / {'BN (= l2)' if other == 'batchnorm' else other}, lr {lr:g}"] = comparison
            verdicts.append(comparison["verdict"])
    measured["headline"] = "; ".join(f"{key}: final loss {interval_text(v['interval'])}"
                                     for key, v in measured.items()) or "no DLN lp runs"
    return conjunction(verdicts), measured


# ---------------------------------------------------------------- the claims


def default_claims() -> tuple[EmpiricalClaim, ...]:
    above1, similar = Threshold("above", 1.0), Threshold("above", SIMILAR_OR_LARGER)
    matched = ("none / BN ratio per seed pair at matched training loss and in the early window (each axis with at "
               f"least {MIN_SEEDS} seed pairs must lie above 1 for reproduced, below 1 for not reproduced; an axis "
               "with fewer is shown and does not vote), at every learning rate where the standard network trains")
    return (
        EmpiricalClaim(
            "bn-faster", "Fig. 1", "BN networks train faster than standard ones at the same learning rate.",
            PaperMagnitude("BN reaches high training accuracy markedly sooner at lr 0.1 and 0.5", "Fig. 1 (a, b)"),
            "at every learning rate: none / BN steps to the accuracy threshold, interval above 1", bn_faster, above1),
        EmpiricalClaim(
            "bn-high-lr", "Fig. 1", "At a high learning rate the standard network fails while BN trains.",
            PaperMagnitude("the standard network stays at chance at lr 0.5; BN trains", "Fig. 1 (b)"),
            f"at the highest learning rate, over >= 3 seeds: the standard network never trains (diverged or final "
            f"accuracy <= {CHANCE + STUCK_MARGIN:g}) and BN reaches the threshold in every seed; not reproduced when "
            "the standard network trains, or BN fails, in most seeds", bn_high_lr),
        EmpiricalClaim(
            "noisy-bn-fast", "Fig. 2", "BN with injected distributional noise trains about as fast as BN, and faster "
            "than a standard network.",
            PaperMagnitude("noisy BN's training accuracy close to BN's, far above the standard network's", "Fig. 2 (a)"),
            f"noisy BN / BN steps to threshold below {ABOUT_AS_FAST:g} and none / noisy BN above 1 (both intervals)",
            noisy_bn_fast, Threshold("below", ABOUT_AS_FAST)),
        EmpiricalClaim(
            "noisy-bn-unstable", "Fig. 2", "Noisy BN's activation distributions are less stable than BN's.",
            PaperMagnitude("activation histograms of noisy BN visibly shift from step to step", "Fig. 2 (b, c)"),
            "noisy BN / BN drift (change of per-unit activation means and variances between consecutive histogram "
            "probes) above 1", noisy_bn_unstable, above1),
        EmpiricalClaim(
            "noisy-none-fails", "Fig. 2", "The same noise added to a standard network stops it training.",
            PaperMagnitude("a standard network with the noise fails to train", "§2.1, text on the noisy-BN experiment"),
            f"over >= 3 seeds: the noisy standard network never trains (final accuracy <= {CHANCE + STUCK_MARGIN:g} or "
            "diverged); not reproduced when it trains in most seeds", noisy_none_fails),
        EmpiricalClaim(
            "ics-not-reduced", "Fig. 3", "BN does not reduce internal covariate shift (Definition 2.1).",
            PaperMagnitude("BN's ICS similar or larger: l2 difference larger, cosine lower", "Fig. 3 (layers #5, #10)"),
            f"BN / none relative ICS ||G - G'||/||G|| at the paper's layers, interval above {SIMILAR_OR_LARGER:g} "
            "(similar or larger) at matched loss and early; below it (reduced) for not reproduced",
            _ics("vgg1d"), similar),
        EmpiricalClaim(
            "smoother-loss", "Fig. 4a", "BN's loss changes less along the gradient direction.",
            PaperMagnitude("the standard network's loss band spikes to ~10, BN's is thin", "Fig. 4 (a)"),
            "loss range / loss: " + matched, _landscape("vgg1d", LOSS_RANGE, (LOSS_RANGE_RAW,)), above1),
        EmpiricalClaim(
            "predictive-gradients", "Fig. 4b", "BN's gradients are more predictive: they change less along the step.",
            PaperMagnitude("text: 'close to two orders of magnitude'; the figure shows ~250 vs ~10-40 (6-25x)",
                           "§3.1 and Fig. 4 (b)"),
            "gradient change / ||g||: " + matched, _landscape("vgg1d", GRAD_CHANGE, (GRAD_CHANGE_RAW,)), above1),
        EmpiricalClaim(
            "lower-beta", "Fig. 4c", "BN's effective beta-smoothness is lower: the standard network's is spikier.",
            PaperMagnitude("beta ~20 for both networks, the standard one spikier (no 100x gap)", "Fig. 4 (c)"),
            "90th percentile of the effective beta: " + matched, _landscape("vgg1d", BETA_SPIKES, (BETA_MEDIAN,)), above1),
        EmpiricalClaim(
            "lp-trains-like-bn", "Fig. 11", "l_p normalisations train about as well as BN.",
            PaperMagnitude("l1, l2 and l-inf training curves close to BN's", "Fig. 11"),
            f"for every l_p trained: l_p / BN steps to threshold below {ABOUT_AS_FAST:g}", lp_trains_like_bn,
            Threshold("below", ABOUT_AS_FAST)),
        EmpiricalClaim(
            "lp-smoother", "Fig. 12-13", "l_p normalisations smooth the landscape as BN does.",
            PaperMagnitude("l_p networks' gradient predictiveness and beta similar to BN's, better than standard",
                           "Fig. 12, 13"),
            "for every l_p trained: none / l_p gradient change / ||g||, at matched loss and early, above 1",
            lp_smoother, above1),
        EmpiricalClaim(
            "l1-best-dln", "Fig. 14", "On the deep linear network, l1 normalisation trains best.",
            PaperMagnitude("l1 reaches the lowest loss of the l_p variants on the DLN", "Fig. 14, §3.3"),
            "l1 / l2 (BN's formula) and l1 / l-inf final training loss on the DLN, intervals below 1", l1_best_dln,
            Threshold("below", 1.0)),
        EmpiricalClaim(
            "dln-ics-not-reduced", "Fig. 3 (DLN)", "In the deep linear network too, BN does not reduce ICS.",
            PaperMagnitude("BN's ICS similar or larger (layers #9, #17)", "Fig. 3 (DLN panels)"),
            "as ics-not-reduced, on the deep linear network's layers #9, #17", _ics("dln"), similar),
        EmpiricalClaim(
            "dln-smoother-loss", "Fig. 9a", "The DLN with BN has a smoother loss along the gradient.",
            PaperMagnitude("gaps of many orders of magnitude", "Fig. 9 (a)"), "as smoother-loss, on the DLN",
            _landscape("dln", LOSS_RANGE, (LOSS_RANGE_RAW,)), above1),
        EmpiricalClaim(
            "dln-predictive-gradients", "Fig. 9b", "The DLN with BN has more predictive gradients.",
            PaperMagnitude("gaps of many orders of magnitude", "Fig. 9 (b)"), "as predictive-gradients, on the DLN",
            _landscape("dln", GRAD_CHANGE, (GRAD_CHANGE_RAW,)), above1),
        EmpiricalClaim(
            "dln-lower-beta", "Fig. 9c", "The DLN with BN has a smaller effective beta-smoothness.",
            PaperMagnitude("gaps of many orders of magnitude", "Fig. 9 (c)"), "as lower-beta, on the DLN",
            _landscape("dln", BETA_SPIKES, (BETA_MEDIAN,)), above1),
    ) + _extension_claims()


def _extension_claims() -> tuple[EmpiricalClaim, ...]:
    """Claims beyond the paper (issue 16), marked `extension` and named so in their figure field."""
    from verify.sharpness_claims import extension_claims  # it imports this module's helpers

    return extension_claims()


def evaluate_claims(runs: Runs, claims: tuple[EmpiricalClaim, ...] | None = None) -> list[dict]:
    """results.json's `claims`: [{id, figure, statement, paper, paper_source, criterion, threshold, verdict, measured}]."""
    records = []
    for claim in claims or default_claims():
        verdict, measured = claim.evaluate(runs)
        records.append({"id": claim.id, "figure": claim.figure, "statement": claim.statement,
                        "paper": claim.paper.text, "paper_source": claim.paper.source, "criterion": claim.criterion,
                        "threshold": claim.threshold.text() if claim.threshold else None,
                        "verdict": verdict, "measured": measured, "extension": claim.extension})
    return records
