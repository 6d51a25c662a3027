"""Figures beyond the paper (issue 16), drawn from the saved `sharpness/` and `filter_landscape/` probe tables of a
finished output directory (reads only; `matplotlib.figure.Figure` directly, no global backend state).

    sharpness.png         one row per (model, learning rate) with sharpness probes (VGG-1d at each lr, the DLN),
                          the standard network beside BN, one marker per probe and seed:
                          (a) the sharpness lambda_max(H) against the step, with the 2/eta line of Cohen et al.
                              (2021): plain (S)GD is stable along the top eigenvector only while lambda_max < 2/eta
                          (b) the effective sharpness lambda_max(D H D) (BN's scale-invariant layers at unit norm; the
                              standard network's equals its (a)) and, dashed, BN's sum of squared weight norms of
                              those layers on the right axis: (a) falls with that norm alone
                          (c) the paper's effective beta (Fig. 4c) at the same probe steps, against lambda_max:
                              the points of beta-tracks-sharpness, with the line beta = lambda_max
    filter_landscape.png  one row per (model, learning rate) with a filter-normalised landscape (Li et al. 2018):
                          the 1-D curves L(theta + alpha d1) of both networks, then the 2-D contours
                          L(theta + alpha d1 + beta d2) of the standard network and of BN (log-spaced levels)

`drawing_jobs(DIR)` lists them for the report's drawing pool (`verify.report.draw_figures`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from verify.figures import DPI, figures_dir, norm_colour, save_png, suptitle
from verify.paper_figures import load_report_runs

BASELINE = ("none", "batchnorm")
NAMES = {"none": "standard", "batchnorm": "BN"}
SHARPNESS_FIGURE = "sharpness.png"
FILTER_LANDSCAPE_FIGURE = "filter_landscape.png"


def _runs_with(runs: list[dict], table: str) -> dict[tuple[str, float], dict[str, list[dict]]]:
    """{(kind, lr): {norm: runs with a `table` table}} for the baseline norms, VGG-1d first, lrs ascending."""
    found: dict[tuple[str, float], dict[str, list[dict]]] = {}
    for run in runs:
        spec = run["spec"]
        if spec["norm"] in BASELINE and np.size(run["probes"].get(f"{table}/step", [])) > 0:
            key = (spec.get("kind", "vgg1d"), float(spec["lr"]))
            found.setdefault(key, {}).setdefault(spec["norm"], []).append(run)
    return dict(sorted(found.items(), key=lambda item: (item[0][0] != "vgg1d", item[0][0], item[0][1])))


def _label(kind: str, lr: float) -> str:
    return f"{'VGG-1d' if kind == 'vgg1d' else 'DLN'}, lr {lr:g}"


def _positive(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _beta_at(run: dict, steps: np.ndarray) -> np.ndarray:
    probes = run["probes"]
    if "landscape/step" not in probes:
        return np.full(steps.shape, np.nan)
    at = dict(zip(np.asarray(probes["landscape/step"]).tolist(), np.asarray(probes["landscape/beta_eff"]).tolist()))
    return np.asarray([at.get(int(s), np.nan) for s in steps], dtype=np.float64)


def sharpness_figure(out_dir: Path, runs: list[dict]) -> list[Path]:
    groups = _runs_with(runs, "sharpness")
    if not groups:
        return []
    fig = Figure(figsize=(14.0, 3.5 * len(groups) + 0.8), dpi=DPI, layout="constrained")
    grid = fig.subplots(len(groups), 3, squeeze=False)
    for (ax_raw, ax_eff, ax_beta), ((kind, lr), by_norm) in zip(grid, groups.items()):
        ax_norm = ax_eff.twinx()
        points: list[np.ndarray] = []
        for norm, group in by_norm.items():
            colour = norm_colour(norm, list(BASELINE))
            for run in group:
                probes = run["probes"]
                steps = np.asarray(probes["sharpness/step"])
                raw, eff = _positive(probes["sharpness/lambda_max"]), _positive(probes["sharpness/lambda_eff"])
                order = np.argsort(steps)
                ax_raw.plot(steps[order] + 1, raw[order], color=colour, marker="o", markersize=3, alpha=0.6, linewidth=0.8)
                ax_eff.plot(steps[order] + 1, eff[order], color=colour, marker="o", markersize=3, alpha=0.6, linewidth=0.8)
                if norm != "none" and np.any(np.asarray(probes["sharpness/invariant_groups"]) > 0):
                    ax_norm.plot(steps[order] + 1, np.asarray(probes["sharpness/invariant_norm_sq"])[order],
                                 color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
                beta = _positive(_beta_at(run, steps))
                ax_beta.scatter(raw, beta, color=colour, s=14, alpha=0.7)
                points += [raw, beta]
        ax_raw.axhline(2.0 / lr, color="#d62728", linewidth=1.0, linestyle=":")
        ax_raw.text(1.0, 2.0 / lr, " 2/eta", color="#d62728", fontsize=7, va="bottom", ha="left",
                    transform=ax_raw.get_yaxis_transform())
        finite = np.concatenate(points) if points else np.zeros(0)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            low, high = float(finite.min()), float(finite.max())
            ax_beta.plot([low, high], [low, high], color="#999999", linewidth=0.8, linestyle="--")
        for ax in (ax_raw, ax_eff, ax_beta):
            ax.set_yscale("log")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            for axis in (ax.xaxis, ax.yaxis):  # labels at 1, 2, 5 x 10^k only: a decade or two per panel
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FormatStrFormatter("%g"))
                axis.set_minor_formatter(NullFormatter())
            ax.tick_params(labelsize=7)
        for ax in (ax_raw, ax_eff):
            ax.set_xlabel("training step + 1", fontsize=8)
        ax_norm.set_ylabel("BN: sum of ||W||^2 of its\nscale-invariant layers (dashed)", fontsize=7)
        ax_raw.set_ylabel("lambda_max(H)", fontsize=8)
        ax_eff.set_ylabel("lambda_max(D H D)", fontsize=8)
        ax_beta.set_xlabel("lambda_max(H) at the probe", fontsize=8)
        ax_beta.set_ylabel("effective beta (Fig. 4c)", fontsize=8)
        ax_raw.set_title(f"{_label(kind, lr)}: (a) sharpness, 2/eta dotted", fontsize=8.5, loc="left")
        ax_eff.set_title("(b) effective sharpness: scale-invariant layers at unit norm", fontsize=8.5, loc="left")
        ax_beta.set_title("(c) effective beta against lambda_max (dashed: equal)", fontsize=8.5, loc="left")
    fig.legend(handles=[Line2D([], [], color=norm_colour(n, list(BASELINE)), marker="o", label=NAMES[n]) for n in BASELINE],
               loc="outside lower center", ncols=2, fontsize=8)
    suptitle(fig, "Beyond the paper: top Hessian eigenvalue of the training loss (Lanczos on Hessian-vector products, "
                  "train mode, the step's batch) at the sharpness probes; one line per seed", fontsize=10)
    return [_save(fig, out_dir, SHARPNESS_FIGURE)]


def _contour_levels(surfaces: list[np.ndarray], count: int = 14) -> np.ndarray:
    values = np.concatenate([s[np.isfinite(s) & (s > 0)].ravel() for s in surfaces])
    if values.size == 0:
        return np.linspace(0, 1, count)
    low, high = float(values.min()), float(values.max())
    return np.geomspace(low, high if high > low else low * 1.01, count)


def filter_landscape_figure(out_dir: Path, runs: list[dict]) -> list[Path]:
    groups = _runs_with(runs, "filter_landscape")
    if not groups:
        return []
    fig = Figure(figsize=(13.0, 3.6 * len(groups) + 0.8), dpi=DPI, layout="constrained")
    grid = fig.subplots(len(groups), 3, squeeze=False)
    for (ax_1d, *ax_2d), ((kind, lr), by_norm) in zip(grid, groups.items()):
        chosen = {norm: min(group, key=lambda r: r["spec"]["seed"]) for norm, group in by_norm.items()}
        surfaces = {norm: np.asarray(run["probes"]["filter_landscape/loss_2d"], dtype=np.float64)[-1]
                    for norm, run in chosen.items()}
        levels = _contour_levels(list(surfaces.values()))
        for norm, run in chosen.items():
            probes = run["probes"]
            colour = norm_colour(norm, list(BASELINE))
            step = int(probes["filter_landscape/step"][-1])
            ax_1d.plot(np.asarray(probes["filter_landscape/alpha"])[-1], np.asarray(probes["filter_landscape/loss_1d"])[-1],
                       color=colour, marker="o", markersize=2.5, label=f"{NAMES[norm]} (step {step})")
        for ax, norm in zip(ax_2d, BASELINE):
            if norm not in chosen:
                ax.set_axis_off()
                continue
            probes = chosen[norm]["probes"]
            alpha = np.asarray(probes["filter_landscape/grid_alpha"])[-1]
            surface = surfaces[norm]
            if alpha.size >= 2:
                filled = ax.contourf(alpha, alpha, surface.T, levels=levels, cmap="viridis",
                                     norm=_log_norm(levels))
                ax.contour(alpha, alpha, surface.T, levels=levels, colors="white", linewidths=0.4)
                fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.02, format="%.3g").ax.tick_params(labelsize=6)
            ax.plot([0], [0], marker="+", color="red")
            ax.set_xlabel("alpha along d1", fontsize=8)
            ax.set_ylabel("beta along d2", fontsize=8)
            ax.set_title(f"{_label(kind, lr)}, {NAMES[norm]}: L(theta + alpha d1 + beta d2)", fontsize=8.5, loc="left")
        ax_1d.set_yscale("log")
        ax_1d.grid(alpha=0.3)
        ax_1d.set_xlabel("alpha (filter-normalised units)", fontsize=8)
        ax_1d.set_ylabel("training loss on the probe batch", fontsize=8)
        ax_1d.set_title(f"{_label(kind, lr)}: 1-D, L(theta + alpha d1)", fontsize=8.5, loc="left")
        ax_1d.legend(fontsize=7)
    suptitle(fig, "Beyond the paper: filter-normalised random-direction landscapes (Li et al. 2018) at the last step, "
                  "train mode, the step's batch; each filter of d1, d2 has the norm of its weights' filter, biases and "
                  "BN parameters are not moved; contour levels log-spaced and shared by the two networks of a row",
             fontsize=10)
    return [_save(fig, out_dir, FILTER_LANDSCAPE_FIGURE)]


def _log_norm(levels: np.ndarray):
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=float(levels[0]), vmax=float(levels[-1])) if levels[0] > 0 else None


def _save(fig: Figure, out_dir: Path, name: str) -> Path:
    path = figures_dir(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return path


def sharpness_figures(out_dir: Path) -> list[Path]:
    """Both figures of DIR (module doc), those the runs support, in report order."""
    runs = load_report_runs(out_dir)
    return sharpness_figure(out_dir, runs) + filter_landscape_figure(out_dir, runs)


def _sharpness_only(out_dir: Path) -> list[Path]:
    return sharpness_figure(out_dir, load_report_runs(out_dir))


def _filter_landscape_only(out_dir: Path) -> list[Path]:
    return filter_landscape_figure(out_dir, load_report_runs(out_dir))


def drawing_jobs(out_dir: Path) -> list[tuple]:
    """The two figures as two jobs (seconds each), in report order."""
    return [(_sharpness_only, (out_dir,)), (_filter_landscape_only, (out_dir,))]
