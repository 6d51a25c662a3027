"""Every kind of empirical claim gets its figure, drawn from what the claim's record and runs hold."""

from __future__ import annotations

import numpy as np
from PIL import Image

from verify import claim_figures, effects, sharpness_claims


def _run(norm: str, seed: int, trains: bool) -> dict:
    steps = np.arange(0, 300, 1)
    acc = np.clip(0.1 + (steps / 150 if trains else 0 * steps), 0, 1) + 0.01 * np.sin(steps + seed)
    return {"spec": {"kind": "vgg1d", "norm": norm, "lr": 0.5, "seed": seed, "run_id": f"{norm}-{seed}"},
            "history": {"train": {"step": steps.tolist(), "loss": [1.0] * steps.size, "acc": acc.tolist()},
                        "final_train_acc": float(acc[-1]), "diverged_at": None, "steps_done": 300}}


def _decodes(path) -> bool:
    with Image.open(path) as image:
        image.load()
        return image.size[0] > 0 and image.size[1] > 0


def test_a_counting_claim_is_drawn_as_the_training_curves_it_counts(tmp_path):
    runs = [_run("none", s, False) for s in range(3)] + [_run("batchnorm", s, True) for s in range(3)]
    verdict, measured = effects.bn_high_lr(runs + [{**r, "spec": {**r["spec"], "lr": 0.1}} for r in runs])
    assert measured["curves"] == {"kind": "vgg1d", "lr": 0.5, "norms": ["none", "batchnorm"]}
    record = {"id": "bn-high-lr", "figure": "Fig. 1", "statement": "s.", "verdict": verdict, "measured": measured}
    (path,) = claim_figures.curves_figure(tmp_path, runs, record)
    assert path.name == "claim__bn-high-lr.png" and _decodes(path)
    assert claim_figures.curves_figure(tmp_path, runs, {**record, "measured": {"headline": "x"}}) == []
    assert claim_figures.curves_figure(tmp_path, [], record) == []  # no run of the claim at hand: no figure


def test_a_rank_correlation_claim_is_drawn_as_its_probes_scatter(tmp_path):
    points = {"none": [[1.0, 2.0], [3.0, 5.0], [10.0, 9.0]], "batchnorm": [[0.5, 0.7], [2.0, 2.5], [4.0, 3.0]]}
    measured = {"vgg1d lr=0.1": {"rho": 0.9, "ci": [0.5, 1.0], "seeds": 3, "points": 6, "xy": points, "threshold": "> 0.5",
                                 "verdict": "reproduced"},
                "headline": "h", "short": "s", "seeds": [3], "scatter": {"x": "beta", "y": "lambda"}}
    record = {"id": "beta-tracks-sharpness", "figure": "extension", "statement": "s.", "verdict": "reproduced",
              "measured": measured}
    (path,) = claim_figures.scatter_figure(tmp_path, record)
    assert _decodes(path)
    assert claim_figures.scatter_figure(tmp_path, {**record, "measured": {"headline": "h"}}) == []


def test_the_rank_correlation_records_keep_the_points_they_rank():
    """beta_tracks_sharpness stores each probe's (beta, lambda_max) beside rho, so its figure needs no runs."""
    def run(norm, seed, values):
        steps = np.arange(len(values))
        return {"spec": {"kind": "vgg1d", "norm": norm, "lr": 0.1, "seed": seed},
                "probes": {"landscape/step": steps, "landscape/beta_eff": np.asarray(values, dtype=float),
                           "sharpness/step": steps, "sharpness/lambda_max": 2 * np.asarray(values, dtype=float)}}
    runs = [run(norm, seed, [1.0 + seed, 2.0 + seed, 4.0]) for norm in ("none", "batchnorm") for seed in range(3)]
    _, measured = sharpness_claims.beta_tracks_sharpness(runs)
    record = measured["vgg1d lr=0.1"]
    assert sorted(map(tuple, record["xy"]["none"])) == sorted(
        (b, 2 * b) for seed in range(3) for b in (1.0 + seed, 2.0 + seed, 4.0))
    assert measured["scatter"]["y"].startswith("raw lambda_max")
