"""Training outcomes of the runs, per run and per (norm, lr), computed from saved histories.

`steps_to_threshold` is the first logged step at which the running mean of the last
`SMOOTHING_POINTS` logged training-batch accuracies reaches the threshold: single-batch accuracy
at batch 128 is too noisy to time a crossing by itself.
"""

from __future__ import annotations

import numpy as np

ACCURACY_THRESHOLD = 0.8  # training accuracy that counts as "trained" for the speed comparison
SMOOTHING_POINTS = 5


def smoothed_accuracy(history: dict) -> tuple[np.ndarray, np.ndarray]:
    """(steps, accuracy): the mean of the last SMOOTHING_POINTS logged training-batch accuracies at each logged step
    from the SMOOTHING_POINTS-th on; NaN where the window holds a missing or non-finite one."""
    steps = np.asarray(history["train"]["step"])
    acc = np.array([np.nan if a is None else a for a in history["train"]["acc"]], dtype=np.float64)
    if acc.size < SMOOTHING_POINTS:
        return steps[:0], acc[:0]
    return steps[SMOOTHING_POINTS - 1:], np.lib.stride_tricks.sliding_window_view(acc, SMOOTHING_POINTS).mean(axis=1)


def steps_to_threshold(history: dict, threshold: float = ACCURACY_THRESHOLD) -> int | None:
    steps, smooth = smoothed_accuracy(history)
    reached = np.flatnonzero(smooth >= threshold)  # a NaN window compares False
    return int(steps[reached[0]]) if reached.size else None


def run_record(run: dict) -> dict:
    spec, history = run["spec"], run["history"]
    return {
        "run_id": spec["run_id"],
        "kind": spec.get("kind", "vgg1d"),
        "norm": spec["norm"],
        "lr": spec["lr"],
        "seed": spec["seed"],
        "final_train_acc": history["final_train_acc"],
        "final_test_acc": history["final_test_acc"],
        "final_train_loss": history.get("final_train_loss"),
        "steps_done": history["steps_done"],
        "diverged_at": history["diverged_at"],
        "steps_to_threshold": steps_to_threshold(history),
        "wall_s": history["wall_s"],
    }


def _mean_std(values: list) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None]
    if not finite:
        return None, None
    return float(np.mean(finite)), float(np.std(finite))


def summarise(records: list[dict]) -> dict:
    """Per (norm, lr): seeds, final accuracies mean +- std, mean steps to threshold, divergences.

    Runs that never reach the threshold are counted, not averaged in (`n_reached`).
    """
    rows = []
    for norm, lr in sorted({(r["norm"], r["lr"]) for r in records}, key=lambda key: (key[1], key[0])):
        group = [r for r in records if r["norm"] == norm and r["lr"] == lr]
        train_mean, train_std = _mean_std([r["final_train_acc"] for r in group])
        test_mean, test_std = _mean_std([r["final_test_acc"] for r in group])
        reached = [r["steps_to_threshold"] for r in group if r["steps_to_threshold"] is not None]
        rows.append({
            "norm": norm,
            "lr": lr,
            "n_seeds": len(group),
            "final_train_acc_mean": train_mean,
            "final_train_acc_std": train_std,
            "final_test_acc_mean": test_mean,
            "final_test_acc_std": test_std,
            "steps_to_threshold_mean": float(np.mean(reached)) if reached else None,
            "n_reached": len(reached),
            "n_diverged": sum(r["diverged_at"] is not None for r in group),
        })
    return {"threshold": ACCURACY_THRESHOLD, "metric": f"training accuracy, running mean of {SMOOTHING_POINTS} "
            "logged batches", "rows": rows}
