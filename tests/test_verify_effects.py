"""The empirical-claims table is computed from runs: synthetic runs with a known outcome flip each verdict."""

from __future__ import annotations

import numpy as np
import pytest

from verify import effects

STEPS = 1000


def make_run(norm: str, lr: float, seed: int = 0, *, reach_at: int | None = None, final_acc: float = 1.0,
             kind: str = "vgg1d", probes: dict | None = None, diverged_at: int | None = None) -> dict:
    """A run whose logged training accuracy jumps from 0.1 to 1.0 at `reach_at` (never, if None)."""
    steps = list(range(0, STEPS, 10))
    acc = [1.0 if reach_at is not None and s >= reach_at else 0.1 for s in steps]
    return {"spec": {"run_id": f"{norm}-{lr}-{seed}", "kind": kind, "norm": norm, "lr": lr, "seed": seed},
            "history": {"train": {"step": steps, "loss": [1.0] * len(steps), "acc": acc},
                        "steps_done": STEPS, "diverged_at": diverged_at, "final_train_acc": final_acc,
                        "final_test_acc": final_acc},
            "probes": probes or {}}


def landscape(values: float, steps=(0, 100, 200)) -> dict:
    n = len(steps)
    return {"landscape/step": np.asarray(steps), "landscape/loss_range": np.full(n, values),
            "landscape/grad_change_max": np.full(n, values), "landscape/beta_eff": np.full(n, values)}


def ics(l2: float, cos: float, layers: int = 4) -> dict:
    column = lambda value: np.column_stack([np.zeros(3)] + [np.full(3, value)] * (layers - 1))
    return {"ics/step": np.array([0, 100, 200]), "ics/ics_l2": column(l2), "ics/ics_cos": column(cos)}


def claim(claim_id: str) -> effects.EmpiricalClaim:
    return next(c for c in effects.default_claims() if c.id == claim_id)


def verdict(claim_id: str, runs) -> str:
    return claim(claim_id).evaluate(runs)[0]


@pytest.mark.parametrize(("bn_at", "none_at", "expected"), [
    (60, 600, effects.REPRODUCED),      # BN faster
    (600, 60, effects.NOT_REPRODUCED),  # BN slower: the verdict flips
    (60, None, effects.REPRODUCED),     # the standard net never reaches it: censored at steps done
    (None, 60, effects.NOT_REPRODUCED),
])
def test_bn_faster_verdict_follows_the_measurements(bn_at, none_at, expected):
    runs = [make_run("batchnorm", 0.1, s, reach_at=bn_at) for s in (0, 1)]
    runs += [make_run("none", 0.1, s, reach_at=none_at) for s in (0, 1)]
    assert verdict("bn-faster", runs) == expected


def test_bn_faster_is_mixed_when_it_holds_at_one_lr_only():
    runs = [make_run("batchnorm", 0.1, reach_at=60), make_run("none", 0.1, reach_at=600),
            make_run("batchnorm", 0.5, reach_at=600), make_run("none", 0.5, reach_at=60)]
    assert verdict("bn-faster", runs) == effects.MIXED


def test_bn_high_lr_needs_a_stuck_standard_net_and_a_training_bn():
    base = [make_run("batchnorm", 0.1, reach_at=60), make_run("none", 0.1, reach_at=600)]
    stuck = make_run("none", 0.5, final_acc=0.1)
    diverged = make_run("none", 0.5, final_acc=0.5, diverged_at=40)
    trains = make_run("none", 0.5, reach_at=300)
    bn = make_run("batchnorm", 0.5, reach_at=100)
    assert verdict("bn-high-lr", base + [stuck, bn]) == effects.REPRODUCED
    assert verdict("bn-high-lr", base + [diverged, bn]) == effects.REPRODUCED
    assert verdict("bn-high-lr", base + [trains, bn]) == effects.MIXED
    assert verdict("bn-high-lr", base + [trains, make_run("batchnorm", 0.5)]) == effects.NOT_REPRODUCED
    assert verdict("bn-high-lr", base) == effects.NOT_MEASURED  # one learning rate: nothing is "high"


@pytest.mark.parametrize(("none_value", "bn_value", "expected"), [
    (10.0, 1.0, effects.REPRODUCED), (1.0, 10.0, effects.NOT_REPRODUCED)])
@pytest.mark.parametrize("claim_id", ["smoother-loss", "predictive-gradients", "lower-beta"])
def test_landscape_claims_follow_the_ratio(claim_id, none_value, bn_value, expected):
    runs = [make_run("none", 0.1, reach_at=600, probes=landscape(none_value)),
            make_run("batchnorm", 0.1, reach_at=60, probes=landscape(bn_value))]
    found, measured = claim(claim_id).evaluate(runs)
    assert found == expected
    assert measured["lr=0.1"]["ratio_none_over_bn"] == pytest.approx(none_value / bn_value)


def test_landscape_is_not_compared_where_the_standard_net_is_stuck():
    runs = [make_run("none", 0.5, final_acc=0.1, probes=landscape(0.0)),
            make_run("batchnorm", 0.5, reach_at=60, probes=landscape(1.0))]
    found, measured = claim("predictive-gradients").evaluate(runs)
    assert found == effects.NOT_MEASURED
    assert measured["excluded_lrs_none_stuck"] == [0.5]


def test_dln_landscape_claims_read_only_dln_runs():
    vgg = [make_run("none", 0.1, reach_at=600, probes=landscape(10.0)),
           make_run("batchnorm", 0.1, reach_at=60, probes=landscape(1.0))]
    assert verdict("dln-lower-beta", vgg) == effects.NOT_MEASURED
    dln = [make_run("none", 1e-3, kind="dln", probes=landscape(1.0)),
           make_run("batchnorm", 1e-3, kind="dln", probes=landscape(5.0))]
    assert verdict("dln-lower-beta", vgg + dln) == effects.NOT_REPRODUCED


@pytest.mark.parametrize(("bn", "none", "expected"), [
    ((2.0, 0.8), (1.0, 0.9), effects.REPRODUCED),      # l2 larger, cosine lower: ICS not reduced
    ((0.5, 0.99), (1.0, 0.9), effects.NOT_REPRODUCED),  # BN's ICS lower by both measures
    ((2.0, 0.99), (1.0, 0.9), effects.MIXED),
])
def test_ics_verdict_follows_both_measures(bn, none, expected):
    runs = [make_run("batchnorm", 0.1, reach_at=60, probes=ics(*bn)), make_run("none", 0.1, reach_at=600,
                                                                              probes=ics(*none))]
    assert verdict("ics-not-reduced", runs) == expected


def test_ics_ignores_the_first_layer_which_never_shifts():
    probes = ics(1.0, 0.9)
    probes["ics/ics_l2"][:, 0] = 1e9  # would dominate the median if it were included
    runs = [make_run("batchnorm", 0.1, probes=ics(2.0, 0.8)), make_run("none", 0.1, probes=probes)]
    assert verdict("ics-not-reduced", runs) == effects.REPRODUCED


def histograms(drift: float, units: int = 3, steps=(0, 100, 200)) -> dict:
    t = np.arange(len(steps), dtype=np.float64)[:, None]
    return {"hist/step": np.asarray(steps), "hist/mean_0": np.tile(drift * t, (1, units)),
            "hist/var_0": np.ones((len(steps), units))}


@pytest.mark.parametrize(("noisy_drift", "noisy_at", "expected"), [
    (5.0, 80, effects.REPRODUCED),
    (0.1, 80, effects.MIXED),               # trains fast but does not drift more
    (0.1, None, effects.NOT_REPRODUCED),    # never trains and does not drift more
])
def test_noisy_bn_verdict(noisy_drift, noisy_at, expected):
    runs = [make_run("none", 0.1, reach_at=600), make_run("noisy_none", 0.1),
            make_run("batchnorm", 0.1, reach_at=60, probes=histograms(1.0)),
            make_run("noisy_batchnorm", 0.1, reach_at=noisy_at, probes=histograms(noisy_drift))]
    found, measured = claim("noisy-bn").evaluate(runs)
    assert found == expected
    assert measured["drift_noisy_over_bn"] == pytest.approx(noisy_drift)


def test_lp_norms_need_training_and_smoothing():
    base = [make_run("none", 0.1, reach_at=600, probes=landscape(10.0)),
            make_run("batchnorm", 0.1, reach_at=60, probes=landscape(1.0))]
    good = make_run("lp1", 0.1, reach_at=70, probes=landscape(2.0))
    slow = make_run("lpinf", 0.1, reach_at=900, probes=landscape(2.0))
    assert verdict("lp-norms", base + [good]) == effects.REPRODUCED
    assert verdict("lp-norms", base + [good, slow]) == effects.MIXED
    assert verdict("lp-norms", base) == effects.NOT_MEASURED


def test_every_claim_evaluates_to_a_record_on_no_runs():
    records = effects.evaluate_claims([])
    assert {r["verdict"] for r in records} == {effects.NOT_MEASURED}
    assert all({"id", "verdict", "measured", "paper", "criterion"} <= set(r) for r in records)
