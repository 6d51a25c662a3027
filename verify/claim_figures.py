"""One figure per empirical claim. A compared probe metric: the deciding metric of each run against training step and
against training loss, so a reader sees the convergence confound the matched-progress axis removes; a claim decided
by one number per run (steps to threshold, final loss, drift): its seed pairs' ratios with the interval and the
threshold (`ratio_figure`); a claim that counts which runs train: their training curves (`curves_figure`); a claim
decided by a rank correlation: its probes' scatter (`scatter_figure`). Reads only.

Inputs: `DIR/results.json` (the claims and the runs that belong to the report) and the runs' probes.
Outputs: `DIR/figures/claim__<claim id>.png`, one row per compared learning rate (or normaliser):
    left   the metric at every probe against the training step (log scale: the fast network's matched
           probes all lie in its first hundred steps)
    right  the same probes against the smoothed training loss at the probe (high loss left: training
           proceeds to the right); filled markers are the probes taken where a progress level was reached
The title of each row gives the ratio and its 95% interval on each axis, and the paper's side.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from verify import progress
from verify.effects import metric_named, pairs, select
from verify.figures import DPI, figures_dir, norm_colour, save_png, suptitle
from verify.paper_figures import load_report_runs
from verify.statistics import interval_text
from verify.training import ACCURACY_THRESHOLD, SMOOTHING_POINTS, smoothed_accuracy
from verify.summary import ratio_records, comparisons_of

NAMES = {"none": "standard", "batchnorm": "BN"}
CHANCE = 0.1  # accuracy at chance: every classification dataset here has ten classes (mnist1d, digits, CIFAR-10)


def _save(fig: Figure, out_dir: Path, record: dict) -> list[Path]:
    path = figures_dir(out_dir) / f"claim__{record['id']}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return [path]


def _draw_runs(ax_step, ax_loss, group: list[dict], metric, colour: str) -> None:
    for run in group:
        series = progress.metric_series(run, metric)
        if series is None:
            continue
        ok = np.isfinite(series["value"]) & (series["value"] > 0)
        steps, loss, value, level = series["step"][ok], series["progress_loss"][ok], series["value"][ok], series["level"][ok]
        ax_step.plot(steps + 1, value, color=colour, alpha=0.45, linewidth=0.9, marker="o", markersize=2)
        order = np.argsort(steps)
        ax_loss.plot(loss[order], value[order], color=colour, alpha=0.3, linewidth=0.8)
        triggered = level >= 0
        ax_loss.scatter(loss[triggered], value[triggered], color=colour, s=14, zorder=3)
        ax_loss.scatter(loss[~triggered], value[~triggered], facecolors="none", edgecolors=colour, s=10, alpha=0.6)


def _row_title(comparison: dict) -> str:
    decided = comparison["decided_by"]
    a, b = (NAMES.get(n, n) for n in comparison["pair"])
    axes = decided["axes"]
    parts = [f"{axis} {interval_text(axes[axis]['interval'], 2)}" for axis in progress.AXES if axis in axes]
    return (f"{comparison['kind']}, lr {comparison['lr']:g}: {a} / {b} of {decided['metric']} ({decided['aggregate']}); "
            f"paper's side {decided['threshold']}; verdict {decided['verdict']}\n" + "; ".join(parts))


def claim_figure(out_dir: Path, runs: list[dict], record: dict) -> list[Path]:
    comparisons = comparisons_of(record.get("measured") or {})
    if not comparisons:
        return []
    fig = Figure(figsize=(9.0, 3.2 * len(comparisons) + 0.9), dpi=DPI, layout="constrained")
    grid = fig.subplots(len(comparisons), 2, squeeze=False)
    for (ax_step, ax_loss), comparison in zip(grid, comparisons):
        kind, lr, norms = comparison["kind"], comparison["lr"], comparison["pair"]
        run_pairs = pairs(runs, kind, norms[0], norms[1], lr)
        if not run_pairs:
            continue
        metric = metric_named(comparison["decided_by"]["metric"], run_pairs[0][0])
        for index, norm in enumerate(norms):
            _draw_runs(ax_step, ax_loss, [pair[index] for pair in run_pairs], metric, norm_colour(norm, list(norms)))
        for ax in (ax_step, ax_loss):
            ax.set_yscale("log")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.set_ylabel(metric.description, fontsize=8)
        ax_step.set_xlabel("training step + 1", fontsize=9)
        ax_loss.set_xlabel("smoothed training loss at the probe\n(high loss left: training proceeds →)", fontsize=9)
        ax_loss.invert_xaxis()
        ax_step.set_title("\n".join(textwrap.wrap(_row_title(comparison), 62)), fontsize=7.5, loc="left")
        ax_loss.set_title("filled: probes where a progress level was reached\n(the matched axis)", fontsize=7.5,
                          loc="left")
    all_norms = sorted({n for c in comparisons for n in c["pair"]}, key=lambda n: (n != "none", n != "batchnorm", n))
    fig.legend(handles=[Line2D([], [], color=norm_colour(n, all_norms), marker="o", label=NAMES.get(n, n))
                        for n in all_norms], loc="outside lower center", ncols=len(all_norms), fontsize=8)
    suptitle(fig, f"{record['id']} ({record['figure']}): {record['statement']} One line per seed.", fontsize=10)
    return _save(fig, out_dir, record)


def _threshold(text: str) -> tuple[str, float] | None:
    """("above" | "below", value) from a threshold text such as "> 1" or "< 2"."""
    parts = str(text).split()
    if len(parts) != 2 or parts[0] not in (">", "<"):
        return None
    return ("above" if parts[0] == ">" else "below"), float(parts[1])


def ratio_figure(out_dir: Path, record: dict) -> list[Path]:
    """The figure of a claim decided by one number per run (steps to threshold, final loss, drift): per row, every
    seed pair's ratio (dots), their geometric mean and 95% bootstrap interval (bar), and the threshold with the
    paper's side shaded -- the claims table's line, seed by seed."""
    rows = [(label, ratio) for label, ratio in ratio_records(record.get("measured") or {})
            if (ratio.get("interval") or {}).get("per_seed")]
    if not rows:
        return []
    fig = Figure(figsize=(9.0, 0.75 * len(rows) + 1.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    values = []
    for position, (label, ratio) in enumerate(rows):
        interval = ratio["interval"]
        seeds = np.asarray(interval["per_seed"], dtype=np.float64)
        ax.scatter(seeds, np.full(seeds.shape, position), color="#1f77b4", s=18, alpha=0.7, zorder=3)
        if interval.get("ci"):
            ax.plot(interval["ci"], [position, position], color="black", linewidth=2.5, zorder=2)
        if interval.get("ratio"):
            ax.scatter([interval["ratio"]], [position], marker="D", color="black", s=36, zorder=4)
        side = _threshold(ratio.get("threshold", ""))
        if side is not None:
            ax.plot([side[1]] * 2, [position - 0.4, position + 0.4], color="#d62728", linestyle="--", linewidth=1.2)
        values += [*seeds, *(interval.get("ci") or [])]
    values = np.asarray([v for v in values if v and np.isfinite(v) and v > 0])
    if values.size:
        low, high = values.min() / 1.5, values.max() * 1.5
        for position, (_, ratio) in enumerate(rows):
            side = _threshold(ratio.get("threshold", ""))
            if side is not None:
                start, end = (side[1], high) if side[0] == "above" else (low, side[1])
                ax.fill_betweenx([position - 0.4, position + 0.4], start, end, color="#2ca02c", alpha=0.08, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if high / low < 20 else NullFormatter())
    ax.set_yticks(range(len(rows)), ["\n".join(textwrap.wrap(f"{label}: {r.get('metric', '')} "
                                                            f"({r.get('verdict', '')})", 42)) for label, r in rows],
                  fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (log scale): dots = seed pairs, diamond and bar = geometric mean and 95% interval")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(handles=[Line2D([], [], color="#d62728", linestyle="--", label="threshold"),
                        Line2D([], [], color="#2ca02c", alpha=0.3, linewidth=6, label="the paper's side")],
               loc="outside lower center", ncols=2, fontsize=8)
    suptitle(fig, f"{record['id']} ({record['figure']}): {record['statement']}", fontsize=10)
    return _save(fig, out_dir, record)


def curves_figure(out_dir: Path, runs: list[dict], record: dict) -> list[Path]:
    """The figure of a claim that counts which runs train (its measured `curves`: kind, lr, norms): every such
    run's training-batch accuracy (mean of `training.SMOOTHING_POINTS` logged points, as the threshold reads it)
    against step, one line per seed, with the accuracy threshold and chance."""
    spec = (record.get("measured") or {}).get("curves")
    groups = [(norm, select(runs, spec["kind"], norm, spec["lr"])) for norm in spec["norms"]] if spec else []
    if not any(group for _, group in groups):
        return []
    fig = Figure(figsize=(9.0, 3.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    norms = [norm for norm, _ in groups]
    for norm, group in groups:
        for run in group:
            ax.plot(*smoothed_accuracy(run["history"]), color=norm_colour(norm, norms), alpha=0.6, linewidth=1)
    ax.axhline(ACCURACY_THRESHOLD, color="#d62728", linestyle="--", linewidth=1)
    ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training-batch accuracy\n(mean of {SMOOTHING_POINTS} logged steps)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{spec['kind']}, {record['measured'].get('headline', '')}; verdict "
                 f"{record.get('verdict', '')}", fontsize=8, loc="left")
    fig.legend(handles=[*(Line2D([], [], color=norm_colour(n, norms), label=NAMES.get(n, n)) for n in norms),
                        Line2D([], [], color="#d62728", linestyle="--", label=f"threshold {ACCURACY_THRESHOLD:g}"),
                        Line2D([], [], color="grey", linestyle=":", label="chance")],
               loc="outside lower center", ncols=len(norms) + 2, fontsize=8)
    suptitle(fig, f"{record['id']} ({record['figure']}): {record['statement']} One line per seed.", fontsize=10)
    return _save(fig, out_dir, record)


def scatter_figure(out_dir: Path, record: dict) -> list[Path]:
    """The figure of a claim decided by a rank correlation (its measured `scatter` names the axes): per compared
    model and learning rate, every probe's (x, y) of its `xy`, by network, log-log, with the line y = x."""
    measured = record.get("measured") or {}
    axes_names = measured.get("scatter")
    panels = [(key, value) for key, value in measured.items() if isinstance(value, dict) and value.get("xy")]
    if not axes_names or not panels:
        return []
    fig = Figure(figsize=(3.4 * len(panels) + 0.6, 3.9), dpi=DPI, layout="constrained")
    grid = fig.subplots(1, len(panels), squeeze=False)[0]
    norms = sorted({n for _, v in panels for n in v["xy"]}, key=lambda n: (n != "none", n))
    for ax, (key, value) in zip(grid, panels):
        xy = np.asarray([p for points in value["xy"].values() for p in points], dtype=np.float64).reshape(-1, 2)
        for norm, points in value["xy"].items():
            if points:
                data = np.asarray(points, dtype=np.float64)
                ax.scatter(data[:, 0], data[:, 1], color=norm_colour(norm, norms), s=14, alpha=0.75)
        positive = xy[(xy > 0).all(axis=1)]
        if positive.size:
            low, high = positive.min() / 1.3, positive.max() * 1.3
            ax.plot([low, high], [low, high], color="grey", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(low, high)  # the same log range on both: y = x is the diagonal
            ax.set_ylim(low, high)
            ax.tick_params(which="both", labelsize=6.5)
        ci = value.get("ci")
        rho = value.get("rho")
        ax.set_title("\n".join(textwrap.wrap(
            f"{key.replace('=', ' ')}: rho {rho:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            + f", paper's side {value.get('threshold', '')}; {value.get('verdict', '')}", 44)), fontsize=8, loc="left")
        ax.set_xlabel(axes_names["x"], fontsize=8)
        ax.set_ylabel(axes_names["y"], fontsize=8)
        ax.grid(alpha=0.3)
    fig.legend(handles=[*(Line2D([], [], color=norm_colour(n, norms), marker="o", linestyle="", label=NAMES.get(n, n))
                          for n in norms), Line2D([], [], color="grey", linestyle=":", label="y = x")],
               loc="outside lower center", ncols=len(norms) + 1, fontsize=8)
    suptitle(fig, f"{record['id']} ({record['figure']}): {record['statement']} One dot per probe.", fontsize=10)
    return _save(fig, out_dir, record)


def claim_figures(out_dir: Path, only: int | None = None) -> list[Path]:
    """The figure of every claim in DIR/results.json (or of the `only`-th), in claim order: the deciding metric
    against step and training loss for a compared probe metric (`claim_figure`), else the seed-by-seed ratios
    (`ratio_figure`)."""
    results = json.loads((Path(out_dir) / "results.json").read_text())
    records = results.get("claims") or []
    if only is not None:
        records = records[only:only + 1]
    runs = load_report_runs(out_dir)
    return [path for record in records for path in (claim_figure(out_dir, runs, record) or ratio_figure(out_dir, record)
                                                     or curves_figure(out_dir, runs, record)
                                                     or scatter_figure(out_dir, record))]


def drawing_jobs(out_dir: Path) -> list[tuple]:
    """One job per claim (a second each): the drawing processes share them evenly."""
    results_path = Path(out_dir) / "results.json"
    claims = (json.loads(results_path.read_text()).get("claims") or []) if results_path.exists() else []
    return [(claim_figures, (out_dir, n)) for n in range(len(claims))]
