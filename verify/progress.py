"""Comparisons of two runs' probe metrics at matched progress, in an early window, and over the whole run.

Networks that converge at different speeds cannot be compared step for step: ICS and the landscape
quantities scale with the gradient, which shrinks as a network converges, so a fast network probed late
looks "smooth" only because it has finished. Each paired comparison (runs A and B of the same seed) is
therefore read on three axes:

    matched  at matched training loss: the probes each run took where its smoothed training loss first
             reached each progress level (`empirics.probes.ProgressTrigger`), over the levels both runs
             reached; no interpolation is needed, every run is probed at the same losses
    early    in the early window where both still train: the probe steps both runs share in
             [start, end], start = the first step by which both have begun to train (each run's smoothed
             loss has reached the first progress level: a network still on its initial plateau at chance
             is not training), end = the step where the faster run reaches the training-accuracy
             threshold (classification) or the end of the early probe schedule, whichever is first; a
             pair with start > end has no such window (e.g. BN has trained before the standard network
             leaves its plateau), and the matched axis alone decides
    whole    every probe of each run (the paper's reading, confounded by convergence; shown, not decisive)

On each axis a run's metric values are aggregated (median, or the 90th percentile for "spikiness"), and
the seed's log-ratio is log(agg A) - log(agg B). Metrics are per probe row; `Metric` says how one is
computed from the probe table (e.g. loss range / loss, the scale-free reading of the loss band).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from verify.training import steps_to_threshold

AXES = ("matched", "early", "whole")
DECIDING_AXES = ("matched", "early")
AGGREGATES = {"median": np.median, "p90": lambda values: np.quantile(values, 0.9)}


@dataclass(frozen=True)
class Metric:
    """A per-probe quantity: its table (landscape / ics), how it is computed, how a run aggregates it."""

    name: str
    table: str
    description: str
    compute: Callable[[dict], np.ndarray]  # the run's table columns -> one value per probe row
    aggregate: str = "median"


def _column(columns: dict, key: str) -> np.ndarray:
    return np.asarray(columns[key], dtype=np.float64)


def landscape_metric(name: str, description: str, numerator: str, denominator: str | None = None,
                     aggregate: str = "median") -> Metric:
    """numerator (/ denominator) of the landscape table, per probe."""
    def compute(columns: dict) -> np.ndarray:
        values = _column(columns, numerator)
        return values / _column(columns, denominator) if denominator else values

    return Metric(name, "landscape", description, compute, aggregate)


def _geometric_mean_over_layers(values: np.ndarray, layers: tuple[int, ...] | None) -> np.ndarray:
    """(P, groups) -> (P,): geometric mean over `layers` (None: every measured group but the first)."""
    values = np.atleast_2d(values)
    chosen = values[:, list(layers)] if layers is not None else values[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(chosen) & (chosen > 0), np.log(np.where(chosen > 0, chosen, 1.0)), np.nan)
    counts = np.sum(np.isfinite(logs), axis=1)
    sums = np.nansum(logs, axis=1)
    return np.where(counts > 0, np.exp(sums / np.maximum(counts, 1)), np.nan)


def ics_metric(name: str, description: str, reading: str, layers: tuple[int, ...] | None = None) -> Metric:
    """ICS of Definition 2.1 per probe, geometric mean over `layers` of one reading:
    raw ||G - G'||, relative ||G - G'||/||G||, per update ||G - G'||/||Delta_<i||, or cosine distance 1 - cos."""
    def compute(columns: dict) -> np.ndarray:
        l2 = _column(columns, "ics_l2")
        with np.errstate(divide="ignore", invalid="ignore"):
            per_layer = {"raw": l2, "relative": l2 / _column(columns, "grad_norm"),
                         "per_update": l2 / _column(columns, "earlier_update_norm"),
                         "cosine_distance": 1.0 - _column(columns, "ics_cos")}[reading]
        return _geometric_mean_over_layers(per_layer, layers)

    return Metric(name, "ics", description, compute)


# ---------------------------------------------------------------- a run's probe rows


def probe_rows(run: dict, table: str) -> dict | None:
    """The columns of one comparison table ({"step", "progress_loss", "level", ...}), or None if absent."""
    probes = run.get("probes", {})
    prefix = f"{table}/"
    columns = {key[len(prefix):]: value for key, value in probes.items() if key.startswith(prefix)}
    if "step" not in columns or np.size(columns["step"]) == 0:
        return None
    return columns


def metric_series(run: dict, metric: Metric) -> dict | None:
    """{"step", "progress_loss", "level", "value"} per probe row of `run`, or None if not measured."""
    columns = probe_rows(run, metric.table)
    if columns is None:
        return None
    n = np.size(columns["step"])
    level = np.asarray(columns.get("level", np.full(n, -1)), dtype=np.int64)
    loss = np.asarray(columns.get("progress_loss", np.full(n, np.nan)), dtype=np.float64)
    return {"step": np.asarray(columns["step"], dtype=np.int64), "progress_loss": loss, "level": level,
            "value": np.asarray(metric.compute(columns), dtype=np.float64)}


def _at_levels(series: dict) -> dict[int, float]:
    """{level: value of the first probe that reached it}; a probe that crossed several levels at once
    serves each of them."""
    out: dict[int, float] = {}
    deepest = -1
    for level, value in zip(series["level"], series["value"]):
        for k in range(deepest + 1, int(level) + 1):
            out[k] = float(value)
        deepest = max(deepest, int(level))
    return out


def training_start(series: dict) -> int | None:
    """The step of the run's first probe at a progress level (it has left its initial plateau); None if it
    never reached one; 1 for runs probed without progress levels (every level column -1 and no loss)."""
    reached = series["step"][series["level"] >= 0]
    if reached.size:
        return int(reached.min())
    return 1 if not np.isfinite(series["progress_loss"]).any() else None


def early_window_end(run_a: dict, run_b: dict, until: int | None) -> int:
    """The last step of the early window of a pair (module doc)."""
    ends = [until] if until else []
    reached = [steps_to_threshold(run["history"]) for run in (run_a, run_b)
               if run["history"].get("final_train_acc") is not None]
    reached = [step for step in reached if step is not None]
    if reached:
        ends.append(min(reached))
    return min(ends) if ends else int(max(run_a["history"]["steps_done"], run_b["history"]["steps_done"]))


def _early_until(run: dict) -> int | None:
    probes = run.get("spec", {}).get("probes", {})
    return int(probes["early_until"]) if probes.get("early_until") else None


def axis_values(run_a: dict, run_b: dict, metric: Metric) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """{axis: (values of A, values of B, what the axis covered)} for one seed pair; an axis without
    common points is left out."""
    a, b = metric_series(run_a, metric), metric_series(run_b, metric)
    if a is None or b is None:
        return {}
    out = {}
    levels_a, levels_b = _at_levels(a), _at_levels(b)
    common = sorted(set(levels_a) & set(levels_b))
    if common:
        out["matched"] = (np.array([levels_a[k] for k in common]), np.array([levels_b[k] for k in common]),
                          {"levels": common})
    until = _early_until(run_a) or _early_until(run_b)
    end = early_window_end(run_a, run_b, until)
    starts = [training_start(a), training_start(b)]
    start = max(max(starts), 1) if None not in starts else end + 1
    in_window = lambda series: series["step"][(series["step"] >= start) & (series["step"] <= end)].tolist()
    steps = sorted(set(in_window(a)) & set(in_window(b)))
    if steps:
        pick = lambda series: np.array([series["value"][np.flatnonzero(series["step"] == s)[0]] for s in steps])
        out["early"] = (pick(a), pick(b), {"steps": [int(steps[0]), int(steps[-1])], "points": len(steps)})
    out["whole"] = (a["value"], b["value"], {"points": [int(a["step"].size), int(b["step"].size)]})
    return out


def _aggregate(values: np.ndarray, how: str) -> float:
    finite = values[np.isfinite(values) & (values > 0)]
    return float(AGGREGATES[how](finite)) if finite.size else float("nan")


def paired_log_ratios(pairs: list[tuple[dict, dict]], metric: Metric) -> dict[str, dict]:
    """{axis: {"log_ratios": [per seed], "a": [agg A per seed], "b": [...], "covered": [...]}} over seed pairs."""
    out: dict[str, dict] = {}
    for run_a, run_b in pairs:
        for axis, (values_a, values_b, covered) in axis_values(run_a, run_b, metric).items():
            agg_a, agg_b = _aggregate(values_a, metric.aggregate), _aggregate(values_b, metric.aggregate)
            entry = out.setdefault(axis, {"log_ratios": [], "a": [], "b": [], "covered": []})
            with np.errstate(divide="ignore", invalid="ignore"):
                entry["log_ratios"].append(float(np.log(agg_a) - np.log(agg_b)))
            entry["a"].append(agg_a)
            entry["b"].append(agg_b)
            entry["covered"].append(covered)
    return out


def curve_against_loss(run: dict, metric: Metric) -> tuple[np.ndarray, np.ndarray] | None:
    """(progress loss, value) at every probe of `run`, for figures that plot a metric against training loss."""
    series = metric_series(run, metric)
    return None if series is None else (series["progress_loss"], series["value"])
