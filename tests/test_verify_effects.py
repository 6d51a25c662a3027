"""The empirical claims are decided from paired seeds: synthetic runs with a known outcome flip each verdict,
and where raw and matched-progress metrics disagree the verdict follows the matched one."""

from __future__ import annotations

import numpy as np
import pytest

from verify import effects, progress, statistics
from verify.statistics import INCONCLUSIVE, NOT_MEASURED, NOT_REPRODUCED, REPRODUCED

STEPS = 1000
SEEDS = (0, 1, 2, 3, 4)


def make_run(norm: str, lr: float, seed: int = 0, *, reach_at: int | None = None, final_acc: float | None = None,
             kind: str = "vgg1d", probes: dict | None = None, diverged_at: int | None = None,
             final_loss: float = 1.0, early_until: int = 100) -> dict:
    """A run whose logged training accuracy jumps from 0.1 to 1.0 at `reach_at` (never, if None)."""
    steps = list(range(0, STEPS, 10))
    acc = [1.0 if reach_at is not None and s >= reach_at else 0.1 for s in steps]
    final = final_acc if final_acc is not None else (1.0 if reach_at is not None else 0.1)
    classifies = kind == "vgg1d"
    config = {"model": {"name": "vgg1d", "channels": [8, 8, 16, 16, 32, 32]}, "dln": {"depth": 25}}
    return {"spec": {"run_id": f"{norm}-{lr}-{seed}", "kind": kind, "norm": norm, "lr": lr, "seed": seed,
                     "config": config, "probes": {"early_until": early_until}},
            "history": {"train": {"step": steps, "loss": [1.0] * len(steps), "acc": acc if classifies else [None] * len(steps)},
                        "steps_done": STEPS, "diverged_at": diverged_at,
                        "final_train_acc": final if classifies else None, "final_test_acc": final if classifies else None,
                        "final_train_loss": final_loss},
            "probes": probes or {}}


def seeds_of(norm: str, lr: float = 0.1, probes=None, jitter: float = 0.05, **kwargs) -> list[dict]:
    """One run per seed; `probes(seed_factor)` builds each seed's probe table (values jittered per seed)."""
    return [make_run(norm, lr, seed, probes=probes(1 + jitter * (seed - 2)) if probes else None, **kwargs)
            for seed in SEEDS]


def landscape_table(values_by_step: dict[int, float], levels: dict[int, int] | None = None) -> dict:
    """Landscape probes at the given steps, every metric column equal to the value (loss0 = grad_norm = 1)."""
    steps = sorted(values_by_step)
    values = np.array([values_by_step[s] for s in steps])
    level = np.array([(levels or {}).get(s, -1) for s in steps])
    n = len(steps)
    return {"landscape/step": np.array(steps), "landscape/level": level, "landscape/progress_loss": np.ones(n),
            "landscape/loss_range": values, "landscape/loss0": np.ones(n), "landscape/grad_change_max": values,
            "landscape/grad_norm": np.ones(n), "landscape/beta_eff": values}


def constant_landscape(value: float):
    """Probes every 10 steps to 100 and every 100 after; levels 0..5 reached at steps 10..60."""
    steps = [*range(0, 100, 10), *range(100, STEPS, 100)]
    levels = {10 * (k + 1): k for k in range(6)}
    return lambda factor: landscape_table({s: value * factor for s in steps}, levels)


def claim(claim_id: str) -> effects.EmpiricalClaim:
    return next(c for c in effects.default_claims() if c.id == claim_id)


def verdict(claim_id: str, runs) -> str:
    return claim(claim_id).evaluate(runs)[0]


# ---------------------------------------------------------------- statistics


def test_ratio_interval_is_the_geometric_mean_with_a_deterministic_bootstrap_interval():
    logs = np.log([2.0, 3.0, 4.0, 2.5, 3.5])
    first, second = statistics.ratio_interval(logs), statistics.ratio_interval(logs)
    assert first == second
    assert first["ratio"] == pytest.approx(np.exp(np.mean(logs)))
    low, high = first["ci"]
    assert 2.0 <= low < first["ratio"] < high <= 4.0


@pytest.mark.parametrize(("ratios", "expected"), [
    ([2.0, 3.0, 4.0], REPRODUCED), ([0.3, 0.5, 0.4], NOT_REPRODUCED), ([0.5, 2.0, 1.0], INCONCLUSIVE),
    ([5.0, 6.0], INCONCLUSIVE),  # fewer than MIN_SEEDS seeds decide nothing
])
def test_decide_reads_where_the_interval_lies(ratios, expected):
    interval = statistics.ratio_interval(np.log(ratios))
    assert statistics.decide(interval, statistics.Threshold("above", 1.0)) == expected


def test_agree_and_conjunction_combine_readings_and_statements_differently():
    assert statistics.agree([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert statistics.agree([NOT_REPRODUCED, NOT_REPRODUCED, NOT_MEASURED]) == NOT_REPRODUCED
    assert statistics.conjunction([REPRODUCED, NOT_REPRODUCED]) == NOT_REPRODUCED
    assert statistics.conjunction([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert statistics.conjunction([]) == NOT_MEASURED


# ---------------------------------------------------------------- matched progress


def test_a_probe_that_crosses_several_levels_serves_each_of_them():
    series = {"level": np.array([-1, 1, -1, 4]), "value": np.array([9.0, 1.0, 8.0, 2.0]), "step": np.arange(4)}
    assert progress._at_levels(series) == {0: 1.0, 1: 1.0, 2: 2.0, 3: 2.0, 4: 2.0}


def test_verdict_follows_matched_progress_where_the_raw_whole_run_ratio_disagrees():
    """A fast-converging BN net: rougher than the standard one at every matched loss and in the early window,
    but its late probes see a converged net with tiny values, so the whole-run ratio says 'smoother'."""
    early = [*range(0, 100, 10)]
    late = [*range(100, STEPS, 50)]  # most of the run: the converged part
    bn_values = {**{s: 2.0 for s in early}, **{s: 1e-3 for s in late}}
    bn_levels = {10 * (k + 1): k for k in range(6)}
    none_levels = {20: 0, **{late[k]: k + 1 for k in range(5)}}  # leaves its plateau at step 20
    bn = [make_run("batchnorm", 0.1, seed, reach_at=60,
                   probes=landscape_table({s: v * (1 + 0.02 * seed) for s, v in bn_values.items()}, bn_levels))
          for seed in SEEDS]
    none = [make_run("none", 0.1, seed, reach_at=600,
                     probes=landscape_table({s: 1.0 for s in early + late}, none_levels)) for seed in SEEDS]
    found, measured = claim("smoother-loss").evaluate(bn + none)
    axes = measured["lr=0.1"]["decided_by"]["axes"]
    assert axes["whole"]["interval"]["ratio"] > 100  # the confounded reading: "BN is 100x smoother"
    assert axes["matched"]["interval"]["ratio"] == pytest.approx(0.5, rel=0.05)
    # from step 20 (both train) until BN reaches the threshold: 4 of the 5 logged accuracies in the running
    # mean are 1.0 at step 90
    assert axes["early"]["covered"][0] == {"steps": [20, 90], "points": 8}
    assert found == NOT_REPRODUCED


def test_no_early_window_when_the_slow_network_leaves_its_plateau_after_the_fast_one_has_trained():
    """The standard network sits at chance until step 300, BN has reached the threshold by step 90: no step
    has both training, so the matched axis alone decides (the plateau is not compared with BN's descent)."""
    steps = [*range(0, 100, 10), *range(100, STEPS, 100)]
    bn = seeds_of("batchnorm", probes=lambda f: landscape_table({s: 1.0 * f for s in steps},
                                                                {10 * (k + 1): k for k in range(6)}), reach_at=60)
    none = seeds_of("none", probes=lambda f: landscape_table({s: (1e-3 if s < 300 else 3.0) * f for s in steps},
                                                             {300 + 100 * k: k for k in range(6)}), final_acc=0.6)
    found, measured = claim("predictive-gradients").evaluate(bn + none)
    axes = measured["lr=0.1"]["decided_by"]["axes"]
    assert "early" not in axes
    assert axes["matched"]["interval"]["ratio"] == pytest.approx(3.0, rel=0.05)
    assert found == REPRODUCED


def test_ics_verdict_follows_the_relative_ics_at_matched_loss_not_the_raw_one():
    """BN's raw ICS is 100x smaller (tiny gradients), its relative ICS is the same: similar, so not reduced."""
    def ics_table(l2: float, grad: float):
        steps = [*range(0, 100, 10), *range(100, STEPS, 100)]
        n, layers = len(steps), 6
        column = lambda value: np.full((n, layers), value)
        return lambda factor: {"ics/step": np.array(steps), "ics/level": np.array([k if k < 6 else -1 for k in range(n)]),
                               "ics/progress_loss": np.ones(n), "ics/ics_l2": column(l2 * factor),
                               "ics/grad_norm": column(grad), "ics/ics_cos": column(0.9),
                               "ics/earlier_update_norm": column(1.0)}
    runs = seeds_of("batchnorm", probes=ics_table(0.01, 0.01), reach_at=60) + \
        seeds_of("none", probes=ics_table(1.0, 1.0), reach_at=600)
    found, measured = claim("ics-not-reduced").evaluate(runs)
    raw = next(c for c in measured["lr=0.1"]["supporting"] if c["metric"] == "raw_ics_paper_layers")
    assert raw["axes"]["matched"]["interval"]["ratio"] == pytest.approx(0.01, rel=0.1)
    assert found == REPRODUCED
    assert measured["lr=0.1"]["layers"] == [1, 4]  # convs #2 and #5 of 6: the paper's #5, #10 of 13


@pytest.mark.parametrize(("none_value", "bn_value", "expected"), [
    (10.0, 1.0, REPRODUCED), (1.0, 10.0, NOT_REPRODUCED)])
@pytest.mark.parametrize("claim_id", ["smoother-loss", "predictive-gradients", "lower-beta"])
def test_landscape_claims_follow_the_ratio(claim_id, none_value, bn_value, expected):
    runs = seeds_of("none", probes=constant_landscape(none_value), reach_at=600) + \
        seeds_of("batchnorm", probes=constant_landscape(bn_value), reach_at=60)
    found, measured = claim(claim_id).evaluate(runs)
    assert found == expected
    assert measured["lr=0.1"]["decided_by"]["axes"]["matched"]["interval"]["ratio"] == \
        pytest.approx(none_value / bn_value, rel=0.01)


def test_two_seeds_are_never_enough_for_a_verdict():
    runs = [make_run("none", 0.1, s, reach_at=600, probes=constant_landscape(10.0)(1)) for s in (0, 1)]
    runs += [make_run("batchnorm", 0.1, s, reach_at=60, probes=constant_landscape(1.0)(1)) for s in (0, 1)]
    assert verdict("predictive-gradients", runs) == INCONCLUSIVE


def test_landscape_is_not_compared_where_the_standard_net_is_stuck():
    runs = seeds_of("none", 0.5, probes=constant_landscape(1e-6), final_acc=0.1) + \
        seeds_of("batchnorm", 0.5, probes=constant_landscape(1.0), reach_at=60)
    found, measured = claim("predictive-gradients").evaluate(runs)
    assert found == NOT_MEASURED
    assert measured["excluded_lrs_stuck"] == [0.5]


def test_dln_landscape_claims_read_only_dln_runs():
    vgg = seeds_of("none", probes=constant_landscape(10.0), reach_at=600) + \
        seeds_of("batchnorm", probes=constant_landscape(1.0), reach_at=60)
    assert verdict("dln-lower-beta", vgg) == NOT_MEASURED
    dln = seeds_of("none", 1e-3, probes=constant_landscape(1.0), kind="dln") + \
        seeds_of("batchnorm", 1e-3, probes=constant_landscape(5.0), kind="dln")
    assert verdict("dln-lower-beta", vgg + dln) == NOT_REPRODUCED


# ---------------------------------------------------------------- speed and counts


@pytest.mark.parametrize(("bn_at", "none_at", "expected"), [
    (60, 600, REPRODUCED),       # BN faster
    (600, 60, NOT_REPRODUCED),   # BN slower: the verdict flips
    (60, None, REPRODUCED),      # the standard net never reaches it: censored, a lower bound on the ratio
    (None, 60, NOT_REPRODUCED),  # BN censored: an upper bound, which can still show "not faster"
    (None, 600, INCONCLUSIVE),   # BN censored and apparently faster: an upper bound cannot show it
])
def test_bn_faster_verdict_follows_the_measurements_and_respects_censoring(bn_at, none_at, expected):
    runs = seeds_of("batchnorm", reach_at=bn_at) + seeds_of("none", reach_at=none_at)
    if bn_at is None and none_at == 600:
        for run in runs[:5]:
            run["history"]["steps_done"] = 300  # BN stopped early without reaching the threshold
    assert verdict("bn-faster", runs) == expected


def test_bn_faster_fails_when_it_fails_at_one_learning_rate():
    runs = seeds_of("batchnorm", 0.1, reach_at=60) + seeds_of("none", 0.1, reach_at=600) + \
        seeds_of("batchnorm", 0.5, reach_at=600) + seeds_of("none", 0.5, reach_at=60)
    assert verdict("bn-faster", runs) == NOT_REPRODUCED


def test_bn_high_lr_needs_a_stuck_standard_net_and_a_training_bn():
    base = seeds_of("batchnorm", 0.1, reach_at=60) + seeds_of("none", 0.1, reach_at=600)
    stuck = seeds_of("none", 0.5, final_acc=0.1)
    bn = seeds_of("batchnorm", 0.5, reach_at=100)
    assert verdict("bn-high-lr", base + stuck + bn) == REPRODUCED
    diverged = [make_run("none", 0.5, s, final_acc=0.5, diverged_at=40) for s in SEEDS]
    assert verdict("bn-high-lr", base + diverged + bn) == REPRODUCED
    assert verdict("bn-high-lr", base + seeds_of("none", 0.5, reach_at=300) + bn) == NOT_REPRODUCED
    mixed = stuck[:3] + [make_run("none", 0.5, s, reach_at=300) for s in (3, 4)]
    assert verdict("bn-high-lr", base + mixed + bn) == INCONCLUSIVE
    assert verdict("bn-high-lr", base) == NOT_MEASURED  # one learning rate: nothing is "high"


def histograms(drift: float, units: int = 3, steps=(0, 100, 200)):
    t = np.arange(len(steps), dtype=np.float64)[:, None]
    return lambda factor: {"hist/step": np.asarray(steps), "hist/mean_0": np.tile(drift * factor * t, (1, units)),
                           "hist/var_0": np.ones((len(steps), units))}


@pytest.mark.parametrize(("noisy_drift", "expected"), [(5.0, REPRODUCED), (0.1, NOT_REPRODUCED)])
def test_noisy_bn_unstable_compares_drift_per_probe(noisy_drift, expected):
    runs = seeds_of("batchnorm", probes=histograms(1.0), reach_at=60) + \
        seeds_of("noisy_batchnorm", probes=histograms(noisy_drift), reach_at=80)
    found, measured = claim("noisy-bn-unstable").evaluate(runs)
    assert found == expected
    assert measured["noisy BN / BN drift"]["interval"]["ratio"] == pytest.approx(noisy_drift, rel=0.05)


@pytest.mark.parametrize(("noisy_at", "expected"), [(80, REPRODUCED), (None, NOT_REPRODUCED), (500, NOT_REPRODUCED)])
def test_noisy_bn_fast_needs_bn_speed_and_to_beat_the_standard_net(noisy_at, expected):
    runs = seeds_of("none", reach_at=600) + seeds_of("batchnorm", reach_at=60) + \
        seeds_of("noisy_batchnorm", reach_at=noisy_at)
    assert verdict("noisy-bn-fast", runs) == expected


@pytest.mark.parametrize(("final_acc", "expected"), [(0.1, REPRODUCED), (0.84, NOT_REPRODUCED)])
def test_noisy_none_fails_is_a_finding_either_way(final_acc, expected):
    runs = seeds_of("none", reach_at=600) + seeds_of("noisy_none", final_acc=final_acc)
    assert verdict("noisy-none-fails", runs) == expected


def test_lp_claims_need_training_speed_and_smoothing():
    base = seeds_of("none", probes=constant_landscape(10.0), reach_at=600) + \
        seeds_of("batchnorm", probes=constant_landscape(1.0), reach_at=60)
    good = seeds_of("lp1", probes=constant_landscape(2.0), reach_at=70)
    slow = seeds_of("lpinf", probes=constant_landscape(20.0), reach_at=900)
    assert verdict("lp-trains-like-bn", base + good) == REPRODUCED
    assert verdict("lp-smoother", base + good) == REPRODUCED
    assert verdict("lp-trains-like-bn", base + good + slow) == NOT_REPRODUCED
    assert verdict("lp-smoother", base + good + slow) == NOT_REPRODUCED
    assert verdict("lp-trains-like-bn", base) == NOT_MEASURED


@pytest.mark.parametrize(("l1_loss", "expected"), [(1.0, REPRODUCED), (20.0, NOT_REPRODUCED)])
def test_l1_best_on_the_dln_compares_final_losses(l1_loss, expected):
    runs = [make_run(norm, 1e-3, s, kind="dln", final_loss=loss * (1 + 0.01 * s))
            for norm, loss in (("lp1", l1_loss), ("batchnorm", 5.0), ("lpinf", 8.0)) for s in SEEDS]
    assert verdict("l1-best-dln", runs) == expected


def test_every_claim_evaluates_to_a_record_on_no_runs():
    records = effects.evaluate_claims([])
    assert {r["verdict"] for r in records} == {NOT_MEASURED}
    assert all({"id", "verdict", "measured", "paper", "paper_source", "criterion"} <= set(r) for r in records)
    assert len({r["paper"] for r in records if r["id"].startswith(("smoother", "predictive", "lower"))}) == 3


def test_stability_comparison_counts_agreeing_verdicts_and_changed_runs():
    from verify.stability import compare_results

    run = {"kind": "vgg1d", "norm": "none", "lr": 0.1, "seed": 0, "final_train_loss": 0.5}
    first = {"claims": [{"id": "a", "verdict": REPRODUCED}, {"id": "b", "verdict": INCONCLUSIVE}], "training": [run]}
    second = {"claims": [{"id": "a", "verdict": REPRODUCED}, {"id": "b", "verdict": NOT_REPRODUCED}],
              "training": [{**run, "final_train_loss": 0.7}]}
    comparison = compare_results(first, second)
    assert (comparison["agreeing"], comparison["total"]) == (1, 2)
    assert comparison["runs_changed"] == [["vgg1d", "none", 0.1, 0]]


def test_an_axis_measured_on_too_few_seed_pairs_is_shown_but_does_not_decide():
    steps = [*range(0, 100, 10), *range(100, STEPS, 100)]
    bn = seeds_of("batchnorm", probes=lambda f: landscape_table({s: 1.0 * f for s in steps},
                                                                {10 * (k + 1): k for k in range(6)}), reach_at=60)
    none = seeds_of("none", probes=lambda f: landscape_table({s: 3.0 * f for s in steps},
                                                             {300 + 100 * k: k for k in range(6)}), final_acc=0.6)
    none[0]["probes"]["landscape/level"][2] = 0  # one seed leaves its plateau at step 20: an early window, 1 pair
    found, measured = claim("predictive-gradients").evaluate(bn + none)
    axes = measured["lr=0.1"]["decided_by"]["axes"]
    assert axes["early"]["interval"]["n"] == 1 and axes["early"]["verdict"] is None
    assert found == REPRODUCED
