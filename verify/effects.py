"""The paper's empirical claims as data: each with its statement, figure, the paper's magnitude, a
verdict criterion, and a function from the loaded runs to (verdict, measured values).

A claim's evaluation is a pure function of runs as `empirics.runner.load_run` returns them
({"spec", "history", "probes"}), so a test can feed synthetic runs with a known outcome and see the
verdict flip. Verdicts: `reproduced` (every part of the criterion holds), `not reproduced` (none
does), `mixed` (some do), `not measured` (the runs it needs are absent, e.g. an experiment was not
selected). Magnitudes are ratios of per-seed statistics, reported with their spread over seeds.

Conventions, fixed before looking at any result:
- steps to the accuracy threshold as in `verify.training` (running mean of 5 logged batches >= 0.8);
  a run that never reaches it counts as `steps_done` (censored: its true value is larger), so a
  comparison "A faster than B" can only err in B's favour;
- "stuck" = every seed diverged or ended at training accuracy <= chance + STUCK_MARGIN;
- a landscape statistic of a run is the median over its probe steps (the paper shows bands over
  training; the median is robust to the first steps, where every network is rough); ratios are
  standard / normalised, so a ratio > 1 means the normalised network is smoother;
- landscape comparisons are made only at learning rates where the standard network is not stuck:
  the landscape of a network at chance (dead units, zero gradients) is trivially flat, which says
  nothing about smoothness. Excluded learning rates are listed in the measured values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from empirics.activations import distribution_drift
from verify.training import steps_to_threshold

REPRODUCED, NOT_REPRODUCED, MIXED, NOT_MEASURED = "reproduced", "not reproduced", "mixed", "not measured"
CHANCE = 0.1  # ten classes (mnist1d, CIFAR-10)
STUCK_MARGIN = 0.1  # final training accuracy within this of chance counts as not training
ABOUT_AS_FAST = 2.0  # "about as fast": mean steps to threshold within this factor of BN's
COMPARABLE_TEST_ACC = 0.05  # "comparable": final test accuracy within this of BN's
PAPER_SMOOTHNESS_RATIO = 100.0  # "close to two orders of magnitude" (the paper's words for VGG)

Runs = list[dict]


@dataclass(frozen=True)
class EmpiricalClaim:
    id: str
    figure: str
    statement: str  # what the paper says
    paper: str  # the magnitude the paper reports or shows
    criterion: str  # how the verdict is decided, in words
    evaluate: Callable[[Runs], tuple[str, dict]]


# ---------------------------------------------------------------- selecting and summarising runs


def select(runs: Runs, kind: str, norm: str, lr: float | None = None) -> Runs:
    return [r for r in runs if r["spec"].get("kind", "vgg1d") == kind and r["spec"]["norm"] == norm
            and (lr is None or float(r["spec"]["lr"]) == lr)]


def lrs_of(runs: Runs, kind: str, norms: tuple[str, ...]) -> list[float]:
    """Learning rates at which every norm in `norms` has runs of this kind."""
    sets = [{float(r["spec"]["lr"]) for r in select(runs, kind, norm)} for norm in norms]
    return sorted(set.intersection(*sets)) if sets else []


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


def stuck(group: Runs) -> bool:
    """Every run diverged or ended at chance level (the standard net 'fails to train')."""
    return bool(group) and all(r["history"]["diverged_at"] is not None
                               or (r["history"]["final_train_acc"] or 0.0) <= CHANCE + STUCK_MARGIN for r in group)


def probe_median(run: dict, key: str, skip_first_layer: bool = False) -> float | None:
    """Median over probe steps (and layers, for ICS) of a probe column; None when not measured."""
    values = run.get("probes", {}).get(key)
    if values is None or np.size(values) == 0:
        return None
    values = np.asarray(values, dtype=np.float64)
    if skip_first_layer and values.ndim == 2:
        values = values[:, 1:]  # layer 1 sees no shift of earlier layers: ICS 0 / cosine 1 by definition
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def _ratio(numerator: dict, denominator: dict) -> float | None:
    if numerator["mean"] is None or not denominator["mean"]:
        return None
    return numerator["mean"] / denominator["mean"]


def _steps_text(summary: dict) -> str:
    """'65 +- 5' or '>1000 (never)'-style text for censored steps to threshold."""
    if summary.get("mean") is None:
        return "n/a"
    never = summary.get("runs", 0) - summary.get("reached", summary.get("runs", 0))
    if never and never == summary.get("runs"):
        return f"never (≥ {summary['mean']:,.0f})"
    text = f"{summary['mean']:,.0f} ± {summary['std']:,.0f}"
    return text + (f" ({never}/{summary['runs']} never; counted at steps done)" if never else "")


def _x(value) -> str:
    return f"{value:.3g}×" if value is not None else "n/a"


def verdict_of(parts: list[bool]) -> str:
    if not parts:
        return NOT_MEASURED
    return REPRODUCED if all(parts) else NOT_REPRODUCED if not any(parts) else MIXED


# ---------------------------------------------------------------- the claims


def bn_faster(runs: Runs) -> tuple[str, dict]:
    measured, parts = {}, []
    for lr in lrs_of(runs, "vgg1d", ("none", "batchnorm")):
        summary = {norm: steps_summary(select(runs, "vgg1d", norm, lr)) for norm in ("none", "batchnorm")}
        faster = (summary["batchnorm"]["reached"] == summary["batchnorm"]["runs"]
                  and summary["batchnorm"]["mean"] < summary["none"]["mean"])
        measured[f"lr={lr:g}"] = {"steps_to_threshold": summary,
                                  "speedup_none_over_bn": _ratio(summary["none"], summary["batchnorm"]),
                                  "bn_faster": faster}
        parts.append(faster)
    measured["headline"] = "; ".join(
        f"{key.replace('=', ' ')}: BN {_steps_text(v['steps_to_threshold']['batchnorm'])} vs none "
        f"{_steps_text(v['steps_to_threshold']['none'])} steps to threshold ({_x(v['speedup_none_over_bn'])})"
        for key, v in measured.items())
    return verdict_of(parts), measured


def bn_high_lr(runs: Runs) -> tuple[str, dict]:
    lrs = lrs_of(runs, "vgg1d", ("none", "batchnorm"))
    if len(lrs) < 2:  # "high" is relative: with one learning rate there is nothing to compare it with
        return NOT_MEASURED, {"learning_rates": lrs, "reason": "needs at least two learning rates"}
    lr = max(lrs)
    none, bn = select(runs, "vgg1d", "none", lr), select(runs, "vgg1d", "batchnorm", lr)
    bn_trains = all(censored_steps(r)[1] for r in bn)
    measured = {"lr": lr, "none_stuck": stuck(none), "bn_reached_threshold_all_seeds": bn_trains,
                "none_final_train_acc": spread([r["history"]["final_train_acc"] for r in none]),
                "none_diverged": sum(r["history"]["diverged_at"] is not None for r in none),
                "bn_final_train_acc": spread([r["history"]["final_train_acc"] for r in bn]),
                "bn_steps_to_threshold": spread([censored_steps(r)[0] for r in bn])}
    measured["headline"] = (
        f"lr {lr:g}: none ends at training accuracy {measured['none_final_train_acc']['mean']:.3f} "
        f"({measured['none_diverged']} of {len(none)} diverged); BN reaches the threshold in "
        f"{sum(censored_steps(r)[1] for r in bn)} of {len(bn)} seeds "
        f"({measured['bn_steps_to_threshold']['mean']:,.0f} steps on average)")
    return verdict_of([stuck(none), bn_trains]), measured


def _drift(run: dict) -> float | None:
    """Mean over layers and probe intervals of the per-step change of per-unit means and variances."""
    probes = run.get("probes", {})
    steps = probes.get("hist/step")
    if steps is None or len(steps) < 2:
        return None
    changes = []
    layer = 0
    while f"hist/mean_{layer}" in probes:
        drift = distribution_drift(probes[f"hist/mean_{layer}"], probes[f"hist/var_{layer}"], steps)
        changes.append(np.concatenate([drift["mean_change"], drift["var_change"]]))
        layer += 1
    values = np.concatenate(changes) if changes else np.array([])
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def noisy_bn(runs: Runs) -> tuple[str, dict]:
    lrs = lrs_of(runs, "vgg1d", ("none", "batchnorm", "noisy_batchnorm"))
    if not lrs:
        return NOT_MEASURED, {}
    lr = lrs[0]
    steps = {norm: steps_summary(select(runs, "vgg1d", norm, lr))
             for norm in ("none", "batchnorm", "noisy_batchnorm", "noisy_none")}
    drift = {norm: spread([_drift(r) for r in select(runs, "vgg1d", norm, lr)])
             for norm in ("batchnorm", "noisy_batchnorm")}
    as_fast = steps["noisy_batchnorm"]["mean"] <= ABOUT_AS_FAST * steps["batchnorm"]["mean"]
    faster_than_none = steps["noisy_batchnorm"]["mean"] < steps["none"]["mean"]
    drifts_more = (drift["noisy_batchnorm"]["mean"] is not None and drift["batchnorm"]["mean"] is not None
                   and drift["noisy_batchnorm"]["mean"] > drift["batchnorm"]["mean"])
    measured = {"lr": lr, "steps_to_threshold": steps, "noisy_over_bn_steps": _ratio(steps["noisy_batchnorm"],
                                                                                         steps["batchnorm"]),
                "drift_per_step": drift, "drift_noisy_over_bn": _ratio(drift["noisy_batchnorm"], drift["batchnorm"]),
                "about_as_fast_as_bn": as_fast, "faster_than_none": faster_than_none, "drifts_more": drifts_more}
    measured["headline"] = (
        f"steps to threshold at lr {lr:g}: noisy BN {_steps_text(steps['noisy_batchnorm'])}, BN "
        f"{_steps_text(steps['batchnorm'])}, none {_steps_text(steps['none'])}, noisy none "
        f"{_steps_text(steps['noisy_none'])}; distribution drift noisy BN / BN = {_x(measured['drift_noisy_over_bn'])}")
    return verdict_of([as_fast, faster_than_none, drifts_more]), measured


def _ics(kind: str):
    def evaluate(runs: Runs) -> tuple[str, dict]:
        lrs = lrs_of(runs, kind, ("none", "batchnorm"))
        medians = {lr: {norm: {key: spread([probe_median(r, f"ics/{key}", skip_first_layer=True)
                                            for r in select(runs, kind, norm, lr)]) for key in ("ics_l2", "ics_cos")}
                        for norm in ("none", "batchnorm")} for lr in lrs}
        measured, parts = {}, []
        for lr, by_norm in medians.items():
            if by_norm["none"]["ics_l2"]["mean"] is None or by_norm["batchnorm"]["ics_l2"]["mean"] is None:
                continue
            l2_not_lower = by_norm["batchnorm"]["ics_l2"]["mean"] >= by_norm["none"]["ics_l2"]["mean"]
            cos_not_higher = by_norm["batchnorm"]["ics_cos"]["mean"] <= by_norm["none"]["ics_cos"]["mean"]
            measured[f"lr={lr:g}"] = {**by_norm, "bn_over_none_l2": _ratio(by_norm["batchnorm"]["ics_l2"],
                                                                             by_norm["none"]["ics_l2"]),
                                      "l2_not_lower": l2_not_lower, "cos_not_higher": cos_not_higher}
            parts += [l2_not_lower, cos_not_higher]
        measured["headline"] = "; ".join(
            f"{key.replace('=', ' ')}: l2 ICS BN / none = {_x(v['bn_over_none_l2'])}, cosine BN "
            f"{v['batchnorm']['ics_cos']['mean']:.3f} vs none {v['none']['ics_cos']['mean']:.3f}"
            for key, v in measured.items())
        return verdict_of(parts), measured
    return evaluate


def _landscape(kind: str, key: str):
    """none / BN ratio of the per-run median of `landscape/<key>`, at lrs where 'none' is not stuck."""
    def evaluate(runs: Runs) -> tuple[str, dict]:
        measured, parts, excluded = {}, [], []
        for lr in lrs_of(runs, kind, ("none", "batchnorm")):
            none, bn = select(runs, kind, "none", lr), select(runs, kind, "batchnorm", lr)
            values = {"none": spread([probe_median(r, f"landscape/{key}") for r in none]),
                      "batchnorm": spread([probe_median(r, f"landscape/{key}") for r in bn])}
            if values["none"]["mean"] is None or values["batchnorm"]["mean"] is None:
                continue
            if kind == "vgg1d" and stuck(none):
                excluded.append(lr)
                continue
            ratio = _ratio(values["none"], values["batchnorm"])
            measured[f"lr={lr:g}"] = {**values, "ratio_none_over_bn": ratio,
                                      "ratio_over_paper_two_orders": ratio / PAPER_SMOOTHNESS_RATIO if ratio else None}
            parts.append(ratio is not None and ratio > 1)
        text = [f"{k.replace('=', ' ')}: none / BN = {_x(v['ratio_none_over_bn'])} (paper: ~100×)"
                for k, v in measured.items()]
        if excluded:
            measured["excluded_lrs_none_stuck"] = excluded
            text.append(f"not compared at lr {', '.join(f'{lr:g}' for lr in excluded)} (standard network stuck)")
        measured["headline"] = "; ".join(text)
        return verdict_of(parts), measured
    return evaluate


def lp_norms(runs: Runs) -> tuple[str, dict]:
    lp = sorted({r["spec"]["norm"] for r in runs if str(r["spec"]["norm"]).startswith("lp")
                 and r["spec"].get("kind", "vgg1d") == "vgg1d"})
    measured, parts = {}, []
    for norm in lp:
        lrs = lrs_of(runs, "vgg1d", (norm, "batchnorm"))
        if not lrs:
            continue
        lr = lrs[0]
        ours, bn, none = (select(runs, "vgg1d", n, lr) for n in (norm, "batchnorm", "none"))
        steps = {n: steps_summary(group) for n, group in ((norm, ours), ("batchnorm", bn))}
        test = {n: spread([r["history"]["final_test_acc"] for r in group]) for n, group in ((norm, ours), ("batchnorm", bn))}
        change = {n: spread([probe_median(r, "landscape/grad_change_max") for r in group])
                  for n, group in ((norm, ours), ("batchnorm", bn), ("none", none))}
        trains = (all(censored_steps(r)[1] for r in ours)
                  and steps[norm]["mean"] <= ABOUT_AS_FAST * steps["batchnorm"]["mean"]
                  and test[norm]["mean"] >= test["batchnorm"]["mean"] - COMPARABLE_TEST_ACC)
        smooth = (change[norm]["mean"] is not None and change["none"]["mean"] is not None
                  and change[norm]["mean"] < change["none"]["mean"])
        measured[norm] = {"lr": lr, "steps_to_threshold": steps, "final_test_acc": test,
                          "grad_change_max_median": change, "trains_comparably": trains, "smoother_than_none": smooth}
        parts += [trains, smooth]
    measured["headline"] = "; ".join(
        f"{norm}: {_steps_text(v['steps_to_threshold'][norm])} steps (BN {_steps_text(v['steps_to_threshold']['batchnorm'])}),"
        f" test {v['final_test_acc'][norm]['mean']:.3f} (BN {v['final_test_acc']['batchnorm']['mean']:.3f}), gradient "
        f"change {_x(_ratio(v['grad_change_max_median'][norm], v['grad_change_max_median']['none']))} the standard "
        "network's" for norm, v in measured.items())
    return verdict_of(parts), measured


def default_claims() -> tuple[EmpiricalClaim, ...]:
    two_orders = "'close to two orders of magnitude' (paper-notes: its own plot looks like 5-10x)"
    return (
        EmpiricalClaim(
            "bn-faster", "Fig. 1", "BN networks train faster than standard ones at the same learning rate.",
            "BN converges markedly faster (CIFAR-10 VGG, lr 0.1 and 0.5)",
            "at every learning rate with both: BN reaches the training-accuracy threshold in every seed and its mean "
            "steps to it are fewer than the standard network's (censored at steps done)", bn_faster),
        EmpiricalClaim(
            "bn-high-lr", "Fig. 1", "At a high learning rate the standard network fails while BN trains.",
            "standard stays at chance at lr 0.5; BN trains",
            f"at the highest learning rate: the standard network is stuck (every seed diverged or ended at training "
            f"accuracy <= {CHANCE + STUCK_MARGIN:g}) and BN reaches the threshold in every seed", bn_high_lr),
        EmpiricalClaim(
            "noisy-bn", "Fig. 2", "BN with injected distributional noise trains about as fast as BN and much faster "
            "than a standard network, although its activation distributions are less stable.",
            "noisy BN close to BN in training accuracy; distributions visibly unstable",
            f"noisy BN's mean steps to threshold <= {ABOUT_AS_FAST:g} x BN's and < the standard network's, and its "
            "drift (mean per-step change of per-unit activation means and variances) > BN's", noisy_bn),
        EmpiricalClaim(
            "ics-not-reduced", "Fig. 3", "BN does not reduce internal covariate shift (Definition 2.1).",
            "BN's ICS similar or larger: l2 distance larger, cosine lower",
            "per learning rate: BN's median l2 ICS (layers 2.., probe steps; mean over seeds) >= the standard "
            "network's, and its median cosine <= the standard network's", _ics("vgg1d")),
        EmpiricalClaim(
            "smoother-loss", "Fig. 4a", "BN's loss changes less along the gradient direction.",
            "standard's loss band spikes to ~10, BN's thin",
            "ratio standard / BN of the median loss range along -g (over eta in the probe grid) > 1 at every "
            "learning rate where the standard network trains; reported against " + two_orders,
            _landscape("vgg1d", "loss_range")),
        EmpiricalClaim(
            "predictive-gradients", "Fig. 4b", "BN's gradients are more predictive: they change less along the step.",
            "gradient change up to ~250 standard vs ~10-40 BN; " + two_orders,
            "ratio standard / BN of the median max_eta ||grad(x - eta g) - g|| > 1 at every learning rate where the "
            "standard network trains", _landscape("vgg1d", "grad_change_max")),
        EmpiricalClaim(
            "lower-beta", "Fig. 4c", "BN has a smaller effective beta-smoothness.",
            "beta ~20 for both, the standard network's spikier",
            "ratio standard / BN of the median effective beta > 1 at every learning rate where the standard network "
            "trains", _landscape("vgg1d", "beta_eff")),
        EmpiricalClaim(
            "lp-norms", "Fig. 11-13", "l_p normalisations train about as well as BN and smooth the landscape similarly.",
            "all l_p train comparably to BN (l1 best on the DLN)",
            f"for every l_p norm trained: threshold reached in every seed, mean steps <= {ABOUT_AS_FAST:g} x BN's, "
            f"final test accuracy >= BN's - {COMPARABLE_TEST_ACC:g}; and its median gradient change < the "
            "standard network's", lp_norms),
        EmpiricalClaim(
            "dln-ics-not-reduced", "Fig. 3 (DLN)", "In the deep linear network too, BN does not reduce ICS.",
            "BN's ICS similar or larger (layers #9, #17)",
            "as ics-not-reduced, on the deep linear network's probed layers", _ics("dln")),
        EmpiricalClaim(
            "dln-smoother-loss", "Fig. 9a", "The DLN with BN has a smoother loss along the gradient.",
            "gaps of many orders of magnitude", "as smoother-loss, on the deep linear network",
            _landscape("dln", "loss_range")),
        EmpiricalClaim(
            "dln-predictive-gradients", "Fig. 9b", "The DLN with BN has more predictive gradients.",
            "gaps of many orders of magnitude", "as predictive-gradients, on the deep linear network",
            _landscape("dln", "grad_change_max")),
        EmpiricalClaim(
            "dln-lower-beta", "Fig. 9c", "The DLN with BN has a smaller effective beta-smoothness.",
            "gaps of many orders of magnitude", "as lower-beta, on the deep linear network",
            _landscape("dln", "beta_eff")),
    )


def evaluate_claims(runs: Runs, claims: tuple[EmpiricalClaim, ...] | None = None) -> list[dict]:
    """results.json's `claims`: [{id, figure, statement, paper, criterion, verdict, measured}]."""
    records = []
    for claim in claims or default_claims():
        verdict, measured = claim.evaluate(runs)
        records.append({"id": claim.id, "figure": claim.figure, "statement": claim.statement, "paper": claim.paper,
                        "criterion": claim.criterion, "verdict": verdict, "measured": measured})
    return records
