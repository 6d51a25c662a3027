"""Ratios over seeds with bootstrap confidence intervals, and verdicts decided by where the interval lies.

A comparison of two configurations A and B yields one log-ratio per seed (seeds are paired: runs with
the same seed share their initialisation stream and batch order, `empirics.train`). The reported ratio is
the geometric mean exp(mean_s log r_s); its 95% interval is the percentile bootstrap of that mean over
seeds (BOOTSTRAP_RESAMPLES resamples from a fixed generator, so the same data always give the same
interval). A verdict needs at least MIN_SEEDS seeds; below that it is inconclusive, whatever the ratio.

Verdicts (`decide`): `reproduced` when the whole interval lies on the paper's side of the claim's
threshold, `not reproduced` when it lies wholly on the other side, `inconclusive` otherwise. Several
readings of one statement (the matched-progress and early-window axes) must `agree`; several statements
that the paper asserts together (a `conjunction`) fail when one of them is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED = "reproduced", "not reproduced", "inconclusive", "not measured"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED)
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
MIN_SEEDS = 3  # with fewer paired seeds an interval says little: the verdict is inconclusive
_BOOTSTRAP_SEED = 20181  # any fixed value: intervals are a deterministic function of the data


@dataclass(frozen=True)
class Threshold:
    """The paper's side of a ratio: `above` (ratio > value) or `below` (ratio < value), e.g. smoother:
    none/BN above 1; "about as fast": noisy/BN steps below 2; "similar or larger": BN/none above 0.5."""

    side: str  # "above" | "below"
    value: float

    def __post_init__(self):
        if self.side not in ("above", "below") or not self.value > 0:
            raise ValueError(f"Threshold({self.side!r}, {self.value}): side must be 'above' or 'below', value > 0")

    def text(self) -> str:
        return f"{'>' if self.side == 'above' else '<'} {self.value:g}"


def ratio_interval(log_ratios) -> dict:
    """{"ratio", "ci": [low, high] or None, "n", "per_seed"} of exp(mean log-ratio) over seeds.

    Non-finite log-ratios (a metric that was 0 or undefined in one run) are dropped and counted in
    "dropped". With one seed the interval is None.
    """
    values = np.asarray([v for v in log_ratios if v is not None], dtype=np.float64)
    finite = values[np.isfinite(values)]
    record = {"n": int(finite.size), "dropped": int(values.size - finite.size),
              "per_seed": [float(np.exp(v)) for v in finite]}
    if finite.size == 0:
        return {**record, "ratio": None, "ci": None}
    record["ratio"] = float(np.exp(finite.mean()))
    if finite.size < 2:
        return {**record, "ci": None}
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    means = finite[rng.integers(0, finite.size, size=(BOOTSTRAP_RESAMPLES, finite.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {**record, "ci": [float(np.exp(low)), float(np.exp(high))]}


def decide(interval: dict | None, threshold: Threshold) -> str:
    """Where the interval lies relative to the threshold (module doc); not measured without data."""
    if interval is None or interval.get("ratio") is None:
        return NOT_MEASURED
    if interval["n"] < MIN_SEEDS or interval["ci"] is None:
        return INCONCLUSIVE
    low, high = interval["ci"]
    paper_side = low > threshold.value if threshold.side == "above" else high < threshold.value
    other_side = high < threshold.value if threshold.side == "above" else low > threshold.value
    return REPRODUCED if paper_side else NOT_REPRODUCED if other_side else INCONCLUSIVE


def agree(verdicts) -> str:
    """Readings of one statement: reproduced (or not) only if every measured reading says so."""
    measured = [v for v in verdicts if v != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if all(v == REPRODUCED for v in measured):
        return REPRODUCED
    if all(v == NOT_REPRODUCED for v in measured):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def conjunction(verdicts) -> str:
    """Statements asserted together: not reproduced if any is, reproduced if all are."""
    measured = [v for v in verdicts if v != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if any(v == NOT_REPRODUCED for v in measured):
        return NOT_REPRODUCED
    return REPRODUCED if all(v == REPRODUCED for v in measured) else INCONCLUSIVE


def interval_text(interval: dict | None, digits: int = 3) -> str:
    """'4.2× [3.1, 5.6], 5 seeds' (or 'n/a')."""
    if interval is None or interval.get("ratio") is None:
        return "n/a"
    text = f"{interval['ratio']:.{digits}g}×"
    if interval.get("ci"):
        low, high = interval["ci"]
        text += f" [{low:.{digits}g}, {high:.{digits}g}]"
    return text + f", {interval['n']} seed{'s' if interval['n'] != 1 else ''}"
