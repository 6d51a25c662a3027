"""Figures drawn from a finished output directory DIR; this module only reads results and draws.

Inputs (never written here): `DIR/results.json`, `DIR/runs/<run_id>/{history,spec}.json`,
`DIR/checks/<normaliser>__<claim>.npz`. Outputs: PNGs in `DIR/figures/`; every public drawing
function returns the paths it wrote. `matplotlib.figure.Figure` is used directly (no pyplot), so
nothing here touches global backend state.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

DPI = 110
MAX_POINTS_PER_PANEL = 5000  # scatter panels beyond this are subsampled (PNG size, overdraw)
SUBSAMPLE_SEED = 0  # fixed so the same DIR always gives the same figure
NORM_COLOURS = {"none": "#555555", "batchnorm": "#1f77b4"}
_OTHER_COLOURS = ["#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


# ---------------------------------------------------------------- locating inputs and outputs


def figures_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "figures"


def checks_files(out_dir: Path) -> list[tuple[str, str, Path]]:
    """(normaliser, claim, path) for every `DIR/checks/<normaliser>__<claim>.npz`, sorted."""
    found = []
    for path in sorted((Path(out_dir) / "checks").glob("*.npz")):
        normaliser, sep, claim = path.name[: -len(".npz")].partition("__")
        if not sep or not normaliser or not claim:
            raise ValueError(
                f"checks file {path.name!r} is not named <normaliser>__<claim>.npz; rename it, "
                f"e.g. batchnorm__thm4.1.npz"
            )
        found.append((normaliser, claim, path))
    return found


def check_figure_path(out_dir: Path, kind: str, normaliser: str, claim: str) -> Path:
    """Where the `kind` figure ('bound_check') of one checks file goes."""
    return figures_dir(out_dir) / f"{kind}__{normaliser}__{claim}.png"


def training_curves_path(out_dir: Path) -> Path:
    return figures_dir(out_dir) / "training_curves.png"


def norm_colour(norm: str, all_norms: list[str]) -> str:
    if norm in NORM_COLOURS:
        return NORM_COLOURS[norm]
    others = [n for n in all_norms if n not in NORM_COLOURS]
    return _OTHER_COLOURS[others.index(norm) % len(_OTHER_COLOURS)]


def suptitle(fig: Figure, text: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the canvas width, so no line is cut at the edges (about 0.6 em per character)."""
    chars = max(30, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    lines = [wrapped for line in text.splitlines() for wrapped in textwrap.wrap(line, chars) or [""]]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def save_png(fig: Figure, path: Path) -> None:
    """Write `fig` as a PNG of at most 256 colours: plots hold few colours, and the palette image is about a
    third of the RGBA one, which matters because the HTML report embeds every figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


# ---------------------------------------------------------------- small numeric helpers


def format_ratio(value) -> str:
    """~6 significant digits; a ratio within 1e-5 of 1 (but not 1) keeps its deviation visible."""
    if value is None:
        return "—"
    value = float(value)
    if math.isfinite(value) and value != 1 and abs(value - 1) < 1e-5:
        return f"1 {'+' if value > 1 else '−'} {abs(value - 1):.2e}"
    return f"{value:.6g}"


def _as_float(values) -> np.ndarray:
    """JSON list with nulls (non-finite values of a diverged run) -> float array with NaN."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _seed_stats(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min, max over seeds (axis 0) of finite entries; NaN where no seed has one.

    Written out instead of np.nanmean so an all-missing column is NaN, not a RuntimeWarning.
    """
    finite = np.isfinite(table)
    count = finite.sum(axis=0)
    has = count > 0
    total = np.where(finite, table, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(count.shape, np.nan), where=has)
    low = np.where(has, np.where(finite, table, np.inf).min(axis=0), np.nan)
    high = np.where(has, np.where(finite, table, -np.inf).max(axis=0), np.nan)
    return mean, low, high


def _aligned(histories: list[dict], split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps (union over seeds) and a (seeds, steps) table of `metric`, NaN where a seed has none."""
    steps = np.unique(np.concatenate([np.asarray(h[split]["step"], dtype=float) for h in histories]))
    table = np.full((len(histories), len(steps)), np.nan)
    for row, history in enumerate(histories):
        columns = np.searchsorted(steps, np.asarray(history[split]["step"], dtype=float))
        table[row, columns] = _as_float(history[split][metric])
    return steps, table


def _last_finite_at(steps, values, step: float) -> float | None:
    """Value of the last finite point at or before `step` (where to draw a divergence mark)."""
    steps, values = np.asarray(steps, dtype=float), _as_float(values)
    keep = np.isfinite(values) & (steps <= step)
    return float(values[keep][-1]) if keep.any() else None


def _subsample(n: int) -> np.ndarray:
    """Indices of at most MAX_POINTS_PER_PANEL of n rows, deterministic (fixed-seed generator)."""
    if n <= MAX_POINTS_PER_PANEL:
        return np.arange(n)
    rng = np.random.default_rng(SUBSAMPLE_SEED)
    return np.sort(rng.choice(n, size=MAX_POINTS_PER_PANEL, replace=False))


def _load_checks(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in ("layer", "step", "lhs", "rhs", "tol")}


def _panel_grid(n_panels: int, width: float, height: float, extra_width: float = 0.0):
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols + extra_width, height * nrows + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _note(ax, text: str, loc: str = "lower right") -> None:
    x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
    y, va = (0.02, "bottom") if "lower" in loc else (0.98, "top")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=7.5,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "#bbbbbb"})


# ---------------------------------------------------------------- training curves (paper Fig. 1)


def _load_runs(out_dir: Path) -> list[tuple[dict, dict]]:
    """(spec, history) of every run listed in results.json's `training` (all run dirs if it has none).

    The listed set is authoritative: a stale run directory of another configuration is not drawn.
    """
    results_file = Path(out_dir) / "results.json"
    listed = json.loads(results_file.read_text()).get("training") if results_file.is_file() else None
    run_dirs = ([Path(out_dir) / "runs" / r["run_id"] for r in listed] if listed
                else sorted((Path(out_dir) / "runs").glob("*")))
    runs = []
    for run_dir in run_dirs:
        spec_file, history_file = run_dir / "spec.json", run_dir / "history.json"
        if spec_file.is_file() and history_file.is_file():
            runs.append((json.loads(spec_file.read_text()), json.loads(history_file.read_text())))
    return runs


def _accuracy_threshold(out_dir: Path) -> float | None:
    results_file = Path(out_dir) / "results.json"
    if not results_file.is_file():
        return None
    summary = json.loads(results_file.read_text()).get("training_summary") or {}
    return summary.get("threshold")


def _draw_setting(ax_acc, ax_loss, histories: list[dict], colour: str) -> None:
    """One (norm, lr): seed mean as a line, min-max band, test markers, divergence crosses."""
    for ax, split, metric in ((ax_acc, "train", "acc"), (ax_loss, "train", "loss")):
        steps, table = _aligned(histories, split, metric)
        mean, low, high = _seed_stats(table)
        ax.plot(steps, mean, color=colour, linewidth=1.4)
        ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
    if all(h.get("test", {}).get("step") for h in histories):
        steps, table = _aligned(histories, "test", "acc")
        mean, _, _ = _seed_stats(table)
        ax_acc.plot(steps, mean, linestyle="none", marker="o", markersize=4, color=colour,
                    markeredgecolor="white", markeredgewidth=0.6)
    for history in histories:
        step = history.get("diverged_at")
        if step is None:
            continue
        for ax, metric in ((ax_acc, "acc"), (ax_loss, "loss")):
            y = _last_finite_at(history["train"]["step"], history["train"][metric], step)
            if y is None:  # nothing finite to sit on: mark at the top of the panel
                ax.plot([step], [0.95], marker="x", markersize=9, mew=2.2, color=colour,
                        transform=ax.get_xaxis_transform())
            else:
                ax.plot([step], [y], marker="x", markersize=9, mew=2.2, color=colour)


def _training_legend(fig, norms: list[str], threshold: float | None, n_columns: int) -> None:
    handles = [Patch(color=norm_colour(n, norms), label=f"norm = {n}") for n in norms]
    handles += [
        Line2D([], [], color="black", label="train, mean over seeds"),
        Patch(color="black", alpha=0.2, label="train, min–max over seeds"),
        Line2D([], [], color="black", marker="o", linestyle="none", label="test accuracy, mean over seeds"),
        Line2D([], [], color="black", marker="x", mew=2.2, linestyle="none", label="run diverged here"),
    ]
    if threshold is not None:
        handles.append(Line2D([], [], color="#999999", linestyle=":", label=f"accuracy threshold {threshold:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2 if n_columns == 1 else 4, fontsize=8)


def training_curves(out_dir: Path) -> list[Path]:
    """Training accuracy (top) and loss (bottom) vs step, one column per lr, norms as colours."""
    runs = _load_runs(out_dir)
    if not runs:
        return []
    groups: dict[tuple[str, float], list[dict]] = {}
    for spec, history in runs:
        groups.setdefault((spec["norm"], float(spec["lr"])), []).append(history)
    lrs = sorted({lr for _, lr in groups})
    norms = sorted({norm for norm, _ in groups}, key=lambda n: (n != "none", n))
    seeds = sorted({len(h) for h in groups.values()})
    threshold = _accuracy_threshold(out_dir)

    fig = Figure(figsize=(4.3 * len(lrs) + 0.6, 6.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, len(lrs), squeeze=False, sharex="col")
    for col, lr in enumerate(lrs):
        ax_acc, ax_loss = axes[0, col], axes[1, col]
        for norm in norms:
            if (norm, lr) in groups:
                _draw_setting(ax_acc, ax_loss, groups[(norm, lr)], norm_colour(norm, norms))
        if threshold is not None:
            ax_acc.axhline(threshold, color="#999999", linestyle=":", linewidth=1)
        ax_acc.set_title(f"learning rate = {lr:g}")
        ax_acc.set_ylim(-0.02, 1.02)
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("SGD step")
        for ax in (ax_acc, ax_loss):
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (fraction correct)")
    axes[1, 0].set_ylabel("training loss (cross-entropy, log scale)")
    suptitle(fig, f"Training curves (paper Fig. 1); seeds per setting: {', '.join(map(str, seeds))}")
    _training_legend(fig, norms, threshold, len(lrs))

    path = training_curves_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return [path]


# ---------------------------------------------------------------- bound checks: LHS vs RHS


def _draw_signed_scatter_panel(ax, rows: dict[str, np.ndarray], colour_norm: Normalize):
    """Both sides can be negative (Hessian quadratic forms): symmetric-log axes, every finite row drawn."""
    lhs, rhs, tol, step = rows["lhs"], rows["rhs"], rows["tol"], rows["step"]
    finite = np.isfinite(lhs) & np.isfinite(rhs)
    violation = finite & (lhs > rhs + tol)
    x, y, c = rhs[finite], lhs[finite], step[finite]
    magnitudes = np.abs(np.concatenate([x, y]))
    magnitudes = magnitudes[magnitudes > 0]
    linthresh = float(np.quantile(magnitudes, 0.05)) if magnitudes.size else 1.0
    pick = _subsample(len(x))
    points = ax.scatter(x[pick], y[pick], c=c[pick], cmap="viridis", norm=colour_norm, s=7, alpha=0.7, linewidths=0)
    bad = np.flatnonzero(violation[finite])
    if len(bad):
        drawn = bad[_subsample(len(bad))]
        ax.scatter(x[drawn], y[drawn], marker="x", color="#d62728", s=28, linewidths=1.2)
    if len(x):
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--")
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.minorticks_off()
    _note(ax, f"rows: {len(lhs):,}; violations: {int(violation.sum()):,}\nsymmetric-log axes, linear within "
              f"±{linthresh:.2g}", loc="upper left")
    return points


def _draw_scatter_panel(ax, rows: dict[str, np.ndarray], colour_norm: Normalize):
    lhs, rhs, tol, step = rows["lhs"], rows["rhs"], rows["tol"], rows["step"]
    if np.any(lhs < 0):  # signed measured side: log axes would drop rows
        return _draw_signed_scatter_panel(ax, rows, colour_norm)
    violation = lhs > rhs + tol
    nonpositive_rhs = rhs <= 0
    nonpositive_lhs = (lhs <= 0) & ~nonpositive_rhs
    shown = ~nonpositive_rhs & ~nonpositive_lhs
    lines = [f"rows: {len(lhs):,}; violations: {int(violation.sum()):,}",
             f"rows with RHS ≤ 0 not shown: {int(nonpositive_rhs.sum()):,},\n"
             f"  of which violations: {int((violation & nonpositive_rhs).sum()):,}"]
    if nonpositive_lhs.any():
        lines.append(f"rows with LHS ≤ 0 < RHS not shown: {int(nonpositive_lhs.sum()):,}")
    points = None
    if shown.any():
        x, y, c = rhs[shown], lhs[shown], step[shown]
        pick = _subsample(len(x))
        points = ax.scatter(x[pick], y[pick], c=c[pick], cmap="viridis", norm=colour_norm, s=7,
                            alpha=0.7, linewidths=0)
        bad = np.flatnonzero(violation[shown])
        if len(bad):  # violations are drawn on top, from all rows, not from the subsample
            drawn = bad[_subsample(len(bad))]
            ax.scatter(x[drawn], y[drawn], marker="x", color="#d62728", s=28, linewidths=1.2)
            if len(drawn) < len(bad):
                lines.append(f"violations drawn: {len(drawn):,} of {len(bad):,} (random, seed {SUBSAMPLE_SEED})")
        low = min(x.min(), y.min()) / 1.5
        high = max(x.max(), y.max()) * 1.5
        ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()  # labelled minor ticks of log axes were half the drawing time of the report
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        if len(x) > MAX_POINTS_PER_PANEL:
            lines.append(f"drawn: {MAX_POINTS_PER_PANEL:,} of {len(x):,} (random, seed {SUBSAMPLE_SEED})")
    else:
        ax.text(0.5, 0.55, "no rows with LHS > 0 and RHS > 0", transform=ax.transAxes, ha="center")
    _note(ax, "\n".join(lines), loc="upper left")  # upper left is where violations would sit
    return points


def _legend_handles() -> list[Line2D]:
    return [Line2D([], [], color="black", linestyle="--", label="LHS = RHS (bound met with equality)"),
            Line2D([], [], color="#d62728", marker="x", linestyle="none", label="violation: LHS > RHS + tol")]


# ---------------------------------------------------------------- bound checks: ratio histogram


def _draw_ratio_panel(ax, rows: dict[str, np.ndarray]) -> None:
    positive = rows["rhs"] > 0
    ratio = rows["lhs"][positive] / rows["rhs"][positive]
    ratio = ratio[np.isfinite(ratio)]
    violations = int((rows["lhs"][positive] > rows["rhs"][positive] + rows["tol"][positive]).sum())
    if len(ratio) == 0:
        ax.text(0.5, 0.5, "no rows with RHS > 0", transform=ax.transAxes, ha="center")
        return
    low, high = float(ratio.min()), float(ratio.max())
    if 1 - 1e-3 <= low and high <= 1 + 1e-3:  # all within 0.1% of 1: show the deviation itself
        ax.hist(ratio - 1, bins=50, color="#1f77b4")
        ax.axvline(0, color="#d62728", linestyle="--")
        ax.set_xlabel("LHS / RHS − 1")
    elif low > 0 and high / low > 100:  # spans decades
        ax.hist(ratio, bins=np.geomspace(low, high * (1 + 1e-12), 50), color="#1f77b4")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.axvline(1, color="#d62728", linestyle="--")
        ax.set_xlabel("LHS / RHS (log scale)")
    else:
        ax.hist(ratio, bins=50, color="#1f77b4")
        ax.axvline(1, color="#d62728", linestyle="--")
        ax.set_xlabel("LHS / RHS")
    _note(ax, f"rows with RHS > 0: {len(ratio):,}\nratio > 1: {int((ratio > 1).sum()):,}; "
              f"violations: {violations:,}\nmin {format_ratio(low)}, max {format_ratio(high)}", loc="upper left")


def bound_check_file(out_dir: Path, normaliser: str, claim: str, checks_file: Path) -> Path:
    """One figure per checks file, every layer's rows pooled (the per-layer records are tables in the report):
    measured LHS against bound RHS (log-log, or symmetric-log for signed sides; colour = training step; red crosses
    the violations) and the histogram of LHS / RHS over the rows with RHS > 0, with a line at ratio 1."""
    data = _load_checks(checks_file)
    fig = Figure(figsize=(9.0, 3.9), dpi=DPI, layout="constrained")
    scatter_ax, ratio_ax = fig.subplots(1, 2, width_ratios=[1.15, 1.0])
    colour_norm = Normalize(vmin=float(data["step"].min()) if len(data["step"]) else 0.0,
                            vmax=float(data["step"].max()) if len(data["step"]) else 1.0)
    mappable = _draw_scatter_panel(scatter_ax, data, colour_norm)
    scatter_ax.set_xlabel("bound RHS")
    scatter_ax.set_ylabel("measured LHS")
    scatter_ax.grid(alpha=0.3, which="major")
    if mappable is not None:
        fig.colorbar(mappable, ax=scatter_ax, label="training step", shrink=0.9)
    _draw_ratio_panel(ratio_ax, data)
    ratio_ax.set_ylabel("number of rows")
    ratio_ax.grid(alpha=0.3)
    fig.legend(handles=_legend_handles(), loc="outside lower center", ncols=2, fontsize=8)
    layers = len(np.unique(data["layer"]))
    suptitle(fig, f"{claim} ({normaliser}): measured LHS vs bound RHS (points below the dashed line satisfy it) and "
                  f"the ratio LHS / RHS; {layers} layers pooled, at most {MAX_POINTS_PER_PANEL:,} points drawn at "
                  f"random (seed {SUBSAMPLE_SEED})", fontsize=10)
    path = check_figure_path(out_dir, "bound_check", normaliser, claim)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return path


def check_figures(out_dir: Path, normaliser: str, claim: str, checks_file: Path) -> list[Path]:
    """The figure of one checks file (`bound_check_file`)."""
    return [bound_check_file(out_dir, normaliser, claim, checks_file)]


def drawing_jobs(out_dir: Path) -> list[tuple]:
    """(function, args) of every figure of this module, each independent of the others (see `draw_all`)."""
    return [(training_curves, (out_dir,))] + [(check_figures, (out_dir, n, c, p)) for n, c, p in checks_files(out_dir)]


def draw_all(out_dir: Path) -> list[Path]:
    """Every figure of DIR, one after the other; returns the paths written."""
    return [path for function, args in drawing_jobs(out_dir) for path in function(*args)]
