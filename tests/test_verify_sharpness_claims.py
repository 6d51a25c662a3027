"""The claims beyond the paper (issue 16) on synthetic runs with known outcomes: bn-lower-sharpness follows the raw
sharpness at matched training loss, whatever the effective one says; beta-tracks-sharpness follows the rank
correlation; both are marked as extensions and drawn like the paper's claims."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import rankdata

from verify import effects
from verify.sharpness_claims import RANK_TRACKING, average_ranks, rho_interval, spearman
from verify.statistics import INCONCLUSIVE, NOT_MEASURED, NOT_REPRODUCED, REPRODUCED
from tests.test_verify_effects import SEEDS, make_run

LEVEL_STEPS = {0: 40, 1: 90}  # sharpness level index -> the step where it was first reached


def sharpness_table(raw: float, effective: float, factor: float, level_steps=LEVEL_STEPS, beta=None) -> dict:
    """Sharpness probes at the two sharpness levels (and a landscape row at each, beta = `beta(lambda)`)."""
    steps = np.array(sorted(level_steps.values()))
    levels = np.array([k for k, _ in sorted(level_steps.items(), key=lambda kv: kv[1])])
    lam = raw * factor * (1 + 0.1 * np.arange(steps.size))
    table = {"sharpness/step": steps, "sharpness/level": levels, "sharpness/progress_loss": np.ones(steps.size),
             "sharpness/lambda_max": lam, "sharpness/lambda_eff": effective * factor * np.ones(steps.size),
             "sharpness/trace": 10 * lam}
    if beta is not None:
        table.update({"landscape/step": steps, "landscape/level": levels, "landscape/beta_eff": beta(lam)})
    return table


def runs_of(norm, lr, raw, effective, kind="vgg1d", beta=None, **kwargs):
    return [make_run(norm, lr, seed, kind=kind, probes=sharpness_table(raw, effective, 1 + 0.05 * (seed - 2), beta=beta),
                     **kwargs) for seed in SEEDS]


def claim(claim_id):
    return next(c for c in effects.default_claims() if c.id == claim_id)


@pytest.mark.parametrize(("none_raw", "bn_raw", "expected"), [(30.0, 10.0, REPRODUCED), (10.0, 30.0, NOT_REPRODUCED)])
def test_bn_lower_sharpness_follows_the_raw_ratio_at_matched_loss_not_the_effective_one(none_raw, bn_raw, expected):
    """BN's effective sharpness (layers at unit norm) is 10x the standard network's in both cases: it does not decide."""
    runs = runs_of("none", 0.1, none_raw, none_raw, reach_at=600) + runs_of("batchnorm", 0.1, bn_raw, 300.0, reach_at=60)
    found, measured = claim("bn-lower-sharpness").evaluate(runs)
    record = measured["vgg1d lr=0.1"]
    assert found == expected
    assert record["decided_by"]["metric"] == "lambda_max"
    assert record["decided_by"]["axes"]["matched"]["interval"]["ratio"] == pytest.approx(none_raw / bn_raw, rel=1e-6)
    effective = next(c for c in record["supporting"] if c["metric"] == "lambda_eff")
    assert effective["axes"]["matched"]["interval"]["ratio"] == pytest.approx(none_raw / 300.0, rel=1e-6)


def test_bn_lower_sharpness_skips_a_stuck_standard_network_and_reads_the_dln_too():
    runs = runs_of("none", 0.5, 1e-3, 1e-3, final_acc=0.1) + runs_of("batchnorm", 0.5, 10.0, 100.0, reach_at=60)
    runs += runs_of("none", 1e-3, 50.0, 50.0, kind="dln") + runs_of("batchnorm", 1e-3, 10.0, 100.0, kind="dln")
    found, measured = claim("bn-lower-sharpness").evaluate(runs)
    assert measured["excluded_lrs_stuck"] == [0.5]
    assert list(k for k in measured if k.startswith(("vgg1d", "dln"))) == ["dln lr=0.001"]
    assert found == REPRODUCED


def test_two_seeds_decide_nothing_and_no_probes_measure_nothing():
    runs = [r for r in runs_of("none", 0.1, 30.0, 30.0, reach_at=600) + runs_of("batchnorm", 0.1, 10.0, 100.0,
                                                                                  reach_at=60) if r["spec"]["seed"] < 2]
    assert claim("bn-lower-sharpness").evaluate(runs)[0] == INCONCLUSIVE
    assert claim("bn-lower-sharpness").evaluate([make_run("none", 0.1, 0), make_run("batchnorm", 0.1, 0)])[0] \
        == NOT_MEASURED


@pytest.mark.parametrize(("beta", "expected"), [
    (lambda lam: 0.5 * lam, REPRODUCED),  # monotone in lambda_max: rank correlation 1
    (lambda lam: 100.0 / lam, NOT_REPRODUCED),  # anti-monotone: -1
])
def test_beta_tracks_sharpness_follows_the_rank_correlation(beta, expected):
    runs = runs_of("none", 0.1, 30.0, 30.0, beta=beta, reach_at=600) + \
        runs_of("batchnorm", 0.1, 10.0, 100.0, beta=beta, reach_at=60)
    found, measured = claim("beta-tracks-sharpness").evaluate(runs)
    record = measured["vgg1d lr=0.1"]
    assert found == expected
    assert record["points"] == 2 * 2 * len(SEEDS) and record["seeds"] == len(SEEDS)
    assert record["rho"] == pytest.approx(1.0 if expected == REPRODUCED else -1.0)
    assert (record["ci"][0] > RANK_TRACKING) == (expected == REPRODUCED)


def test_rank_correlation_and_its_seed_bootstrap():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x[:2], x[:2]))
    noisy = {seed: (np.arange(4.0) + seed, np.arange(4.0)[::-1] * (seed % 2 * 2 - 1)) for seed in range(5)}
    record = rho_interval(noisy)
    assert record["seeds"] == 5 and record["points"] == 20 and record["ci"][0] < record["rho"] < record["ci"][1]
    assert rho_interval(noisy) == record  # a fixed generator: the same data give the same interval


def test_extension_claims_are_marked_and_their_metrics_resolve_for_the_figures():
    records = {r["id"]: r for r in effects.evaluate_claims([])}
    for claim_id in ("bn-lower-sharpness", "beta-tracks-sharpness"):
        assert records[claim_id]["extension"] and records[claim_id]["figure"].startswith("extension")
    assert not records["lower-beta"]["extension"]
    for name in ("lambda_max", "lambda_eff", "hessian_trace"):
        assert effects.metric_named(name, make_run("none", 0.1)).table == "sharpness"


@given(st.lists(st.sampled_from([-2.5, 0.0, 1e-300, 1.0, 3.0]) | st.floats(-1e6, 1e6), min_size=1, max_size=40))
def test_average_ranks_are_scipys_average_ranks_ties_included(values):
    np.testing.assert_array_equal(average_ranks(np.array(values)), rankdata(values))
