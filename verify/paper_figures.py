"""The paper's figures re-drawn from the probes of a finished output directory (reads only).

Inputs: `DIR/results.json` (which runs belong to the report) and each run's `probes.npz` and
`history.json`. Outputs: PNGs in `DIR/figures/`, one function per figure, each returning the paths it
wrote (none when the runs it needs are absent). Seeds are aggregated as mean (line) and min-max (band);
`matplotlib.figure.Figure` is used directly, so no global backend state is touched.

    landscape__<kind>__<lr>.png   Fig. 4 / 9: loss band, gradient-change band and effective beta along
                                  -g at every probe step (band = min..max over the step-size grid)
    predictiveness__<kind>.png    Fig. 4b detail: ||grad(x - eta g) - g|| against eta, one line per probe step
    ics__<kind>.png               Fig. 3: ICS l2 and cosine (Definition 2.1) at two layers over training
    noisy.png                     Fig. 2: training curves with noise, and activation histograms over time
    lp.png                        Fig. 11-13: l_p normalisations, training curves and landscape
    dln_loss.png                  the deep linear network's training loss
    normaliser__<norm>.png        every trained normaliser beside BatchNorm and the unnormalised network: training
                                  accuracy and the landscape probes (the norms experiment)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from empirics.runner import load_run
from verify.figures import DPI, _aligned, _seed_stats, figures_dir, norm_colour, save_png, suptitle

BASELINE = ("none", "batchnorm")


# (directory, results.json's mtime and size) -> its runs: `draw_figures` loads them once before forking the
# drawing processes, which inherit them; figures read runs and never change them
_LOADED: dict[tuple, list[dict]] = {}


def load_report_runs(out_dir: Path) -> list[dict]:
    """Every run listed in results.json (`training` and `dln_training`), loaded with its probes (once per
    results.json: a rewritten one is read again)."""
    path = Path(out_dir).resolve() / "results.json"
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _load_listed_runs(out_dir)
    return _LOADED[key]


def _load_listed_runs(out_dir: Path) -> list[dict]:
    results = json.loads((Path(out_dir) / "results.json").read_text())
    listed = (results.get("training") or []) + (results.get("dln_training") or [])
    runs = []
    for record in listed:
        directory = Path(out_dir) / "runs" / record["run_id"]
        if (directory / "done").exists():
            runs.append(load_run(directory))
    return runs


def _select(runs, kind: str, norm: str, lr: float | None = None) -> list[dict]:
    return [r for r in runs if r["spec"].get("kind", "vgg1d") == kind and r["spec"]["norm"] == norm
            and (lr is None or float(r["spec"]["lr"]) == lr)]


def _with_probe(runs, key: str) -> list[dict]:
    return [r for r in runs if key in r["probes"] and np.size(r["probes"][key]) > 0]


def _seed_band(runs, key: str, column=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds of a per-step probe value (column of a 2-D value if given)."""
    steps = np.unique(np.concatenate([r["probes"][key.split("/")[0] + "/step"] for r in runs]))
    table = np.full((len(runs), len(steps)), np.nan)
    for row, run in enumerate(runs):
        values = np.asarray(run["probes"][key], dtype=np.float64)
        values = values[:, column] if column is not None else values
        table[row, np.searchsorted(steps, run["probes"][key.split("/")[0] + "/step"])] = values
    mean, low, high = _seed_stats(table)
    return steps, mean, low, high


def _save(fig: Figure, out_dir: Path, name: str) -> Path:
    path = figures_dir(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return path


def _positive_log(ax, *arrays) -> None:
    values = np.concatenate([np.ravel(a) for a in arrays])
    if np.any(np.isfinite(values) & (values > 0)):
        ax.set_yscale("log")
        ax.minorticks_off()


# ---------------------------------------------------------------- landscape (Fig. 4, 9, 12)


def landscape_figure(out_dir: Path, runs, kind: str, lr: float, norms=BASELINE, name: str | None = None,
                     title: str = "") -> list[Path]:
    """Three panels over training: loss along -g (band min..max over eta), gradient change (band), beta."""
    groups = {n: _with_probe(_select(runs, kind, n, lr), "landscape/loss") for n in norms}
    groups = {n: g for n, g in groups.items() if g}
    if not groups:
        return []
    fig = Figure(figsize=(13.5, 3.9), dpi=DPI, layout="constrained")
    ax_loss, ax_grad, ax_beta = fig.subplots(1, 3)
    all_norms = list(groups)
    for norm, group in groups.items():
        colour = norm_colour(norm, all_norms)
        steps, _, low, _ = _seed_band(group, "landscape/loss_min")
        _, _, _, high = _seed_band(group, "landscape/loss_max")
        ax_loss.fill_between(steps, low, high, color=colour, alpha=0.35, linewidth=0)
        steps, _, low, _ = _seed_band(group, "landscape/grad_change_min")
        _, _, _, high = _seed_band(group, "landscape/grad_change_max")
        ax_grad.fill_between(steps, low, high, color=colour, alpha=0.35, linewidth=0)
        steps, mean, low, high = _seed_band(group, "landscape/beta_eff")
        ax_beta.plot(steps, mean, color=colour, linewidth=1.4)
        ax_beta.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
    eta = np.asarray(next(iter(groups.values()))[0]["probes"]["landscape/eta"])[0] / lr
    ax_loss.set_title("(a) loss L(x - eta g)\nband: min..max over eta", fontsize=9)
    ax_grad.set_title("(b) gradient predictiveness ||grad(x - eta g) - g||\nband: min..max over eta", fontsize=9)
    ax_beta.set_title("(c) effective beta\nmax over eta of ||grad(x - eta g) - g|| / ||eta g||", fontsize=9)
    for ax in (ax_loss, ax_grad, ax_beta):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in (ax_grad, ax_beta):
        _positive_log(ax, *[_seed_band(g, "landscape/grad_change_max")[1] for g in groups.values()])
    ax_loss.set_ylabel("training loss on the step's batch")
    ax_grad.set_ylabel("gradient change (l2)")
    ax_beta.set_ylabel("effective beta-smoothness")
    handles = [Patch(color=norm_colour(n, all_norms), label=f"norm = {n}") for n in groups]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    seeds = sorted({len(g) for g in groups.values()})
    suptitle(fig, title or f"Loss landscape along the gradient ({kind}, lr = {lr:g}; eta from {eta.min():g} to "
                 f"{eta.max():g} x lr, {eta.size} values; bands over eta and seeds ({', '.join(map(str, seeds))}); "
                 "beta: line = mean over seeds)", fontsize=10)
    return [_save(fig, out_dir, name or f"landscape__{kind}__lr{lr:g}.png")]


def predictiveness_figure(out_dir: Path, runs, kind: str, lr: float) -> list[Path]:
    """Gradient change against step size, one line per probe step coloured by step, first seed of each norm."""
    chosen = {n: _with_probe(_select(runs, kind, n, lr), "landscape/grad_change")[:1] for n in BASELINE}
    chosen = {n: g[0] for n, g in chosen.items() if g}
    if not chosen:
        return []
    fig = Figure(figsize=(5.2 * len(chosen) + 1.0, 4.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(chosen), squeeze=False, sharey=True)[0]
    steps_all = np.concatenate([run["probes"]["landscape/step"] for run in chosen.values()])
    colours = Normalize(vmin=float(steps_all.min()), vmax=float(max(steps_all.max(), steps_all.min() + 1)))
    mappable = None
    for ax, (norm, run) in zip(axes, chosen.items()):
        probes = run["probes"]
        for step, eta, change in zip(probes["landscape/step"], probes["landscape/eta"], probes["landscape/grad_change"]):
            mappable = ax.plot(eta, change, color=colormaps["viridis"](colours(step)), marker="o", markersize=3,
                               linewidth=1)
        ax.set_xscale("log")
        _positive_log(ax, probes["landscape/grad_change"])
        ax.minorticks_off()
        ax.set_title(f"norm = {norm}, seed {run['spec']['seed']}")
        ax.set_xlabel("step size eta")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("||grad(x - eta g) - g||")
    if mappable is not None:
        fig.colorbar(ScalarMappable(norm=colours, cmap="viridis"), ax=list(axes), label="training step")
    suptitle(fig, f"Gradient change against step size ({kind}, lr = {lr:g}), one line per probe step", fontsize=10)
    return [_save(fig, out_dir, f"predictiveness__{kind}.png")]


# ---------------------------------------------------------------- ICS (Fig. 3)


def _ics_layers(runs, kind: str) -> list[int]:
    """Two measured layers at the paper's relative depths (#5 and #10 of VGG's 16; the DLN's probed ones)."""
    values = np.asarray(runs[0]["probes"]["ics/ics_l2"], dtype=np.float64)
    measured = [i for i in range(1, values.shape[1]) if np.isfinite(values[:, i]).any()]
    if kind == "dln" or len(measured) <= 2:
        return measured[:2]
    n = values.shape[1]
    picks = sorted({min(max(1, round(n * k / 16) - 1), n - 1) for k in (5, 10)})
    return [p for p in picks if p in measured] or measured[:2]


def ics_figure(out_dir: Path, runs, kind: str) -> list[Path]:
    groups = {n: _with_probe(_select(runs, kind, n), "ics/ics_l2") for n in BASELINE}
    groups = {n: g for n, g in groups.items() if g}
    if len(groups) < 1:
        return []
    lr = min(float(r["spec"]["lr"]) for g in groups.values() for r in g)
    groups = {n: [r for r in g if float(r["spec"]["lr"]) == lr] for n, g in groups.items()}
    layers = _ics_layers(next(iter(groups.values())), kind)
    if not layers:
        return []
    fig = Figure(figsize=(4.6 * len(layers) + 0.4, 6.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, len(layers), squeeze=False, sharex=True)
    for col, layer in enumerate(layers):
        for norm, group in groups.items():
            colour = norm_colour(norm, list(groups))
            for row, key in enumerate(("ics/ics_l2", "ics/ics_cos")):
                steps, mean, low, high = _seed_band(group, key, column=layer)
                axes[row, col].plot(steps, mean, color=colour, marker="o", markersize=3, linewidth=1.2)
                axes[row, col].fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
        axes[0, col].set_title(f"layer {layer + 1} (1-based; ICS of layer 1 is 0 by definition)")
        _positive_log(axes[0, col], *[_seed_band(g, "ics/ics_l2", column=layer)[1] for g in groups.values()])
        axes[1, col].set_xlabel("training step")
        for row in (0, 1):
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].set_ylabel("||G - G'||_2")
    axes[1, 0].set_ylabel("cos(G, G')")
    fig.legend(handles=[Patch(color=norm_colour(n, list(groups)), label=f"norm = {n}") for n in groups],
               loc="outside lower center", ncols=len(groups), fontsize=8)
    suptitle(fig, f"Internal covariate shift (Definition 2.1; {kind}, lr = {lr:g}): G the layer's gradient, G' the "
                 "same after the earlier layers' update; line = mean over seeds, band = min..max", fontsize=10)
    return [_save(fig, out_dir, f"ics__{kind}.png")]


# ---------------------------------------------------------------- noisy BN (Fig. 2)


def _seed_curve(ax, group: list[dict], metric: str, colour: str) -> None:
    """A training-history metric of one setting: mean over seeds as a line, min..max as a band."""
    steps, table = _aligned([r["history"] for r in group], "train", metric)
    mean, low, high = _seed_stats(table)
    ax.plot(steps, mean, color=colour, linewidth=1.3)
    ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)


def _curves(ax_acc, runs, norms, lr) -> list[str]:
    drawn = []
    for norm in norms:
        group = _select(runs, "vgg1d", norm, lr)
        if group:
            _seed_curve(ax_acc, group, "acc", norm_colour(norm, list(norms)))
            drawn.append(norm)
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_xlabel("SGD step")
    ax_acc.set_ylabel("training accuracy")
    ax_acc.grid(alpha=0.3)
    return drawn


def _histogram_panel(ax, run: dict, layer: int) -> None:
    probes = run["probes"]
    counts = np.asarray(probes[f"hist/counts_{layer}"], dtype=np.float64)
    edges = np.asarray(probes[f"hist/edges_{layer}"], dtype=np.float64)
    steps = np.asarray(probes["hist/step"])
    density = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) / np.diff(edges)
    positive = density[density > 0]
    ax.imshow(density, aspect="auto", origin="lower", cmap="magma",
              extent=(edges[0], edges[-1], -0.5, len(steps) - 0.5),
              norm=LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks, [str(steps[t]) for t in ticks])
    ax.set_xlabel("activation value (normaliser output, noise included)")


def noisy_figure(out_dir: Path, runs) -> list[Path]:
    norms = ("none", "batchnorm", "noisy_batchnorm", "noisy_none")
    noisy = _select(runs, "vgg1d", "noisy_batchnorm")
    if not noisy:
        return []
    lr = float(noisy[0]["spec"]["lr"])
    pair = [g[0] for g in (_with_probe(_select(runs, "vgg1d", n, lr), "hist/step") for n in ("batchnorm",
                                                                                               "noisy_batchnorm")) if g]
    layer_count = sum(1 for key in noisy[0]["probes"] if key.startswith("hist/counts_"))
    layers = sorted({0, max(layer_count - 1, 0)}) if layer_count else []
    fig = Figure(figsize=(13.0, 3.6 * (1 + len(layers)) ), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(1 + len(layers), 2)
    drawn = _curves(fig.add_subplot(grid[0, :]), runs, norms, lr)
    for row, layer in enumerate(layers, start=1):
        for col, run in enumerate(pair):
            ax = fig.add_subplot(grid[row, col])
            _histogram_panel(ax, run, layer)
            ax.set_title(f"{run['spec']['norm']}, layer {layer + 1}: activation density over training "
                         f"(seed {run['spec']['seed']})", fontsize=9)
            ax.set_ylabel("training step")
    fig.legend(handles=[Patch(color=norm_colour(n, list(norms)), label=f"norm = {n}") for n in drawn],
               loc="outside lower center", ncols=len(drawn), fontsize=8)
    suptitle(fig, f"Noisy BatchNorm (paper Fig. 2, lr = {lr:g}): training accuracy (mean and min..max over seeds), and "
                 "the distribution of a layer's outputs at each probe step (log colour scale)", fontsize=10)
    return [_save(fig, out_dir, "noisy.png")]


# ---------------------------------------------------------------- l_p (Fig. 11-13) and the DLN


def lp_figures(out_dir: Path, runs) -> list[Path]:
    lp = sorted({r["spec"]["norm"] for r in runs if str(r["spec"]["norm"]).startswith("lp")})
    if not lp:
        return []
    lr = float(_select(runs, "vgg1d", lp[0])[0]["spec"]["lr"])
    norms = ("none", "batchnorm", *lp)
    fig = Figure(figsize=(6.5, 4.0), dpi=DPI, layout="constrained")
    drawn = _curves(fig.add_subplot(), runs, norms, lr)
    fig.legend(handles=[Patch(color=norm_colour(n, list(norms)), label=f"norm = {n}") for n in drawn],
               loc="outside lower center", ncols=len(drawn), fontsize=8)
    suptitle(fig, f"l_p normalisations (paper Fig. 11): training accuracy at lr = {lr:g}", fontsize=10)
    paths = [_save(fig, out_dir, "lp.png")]
    return paths + landscape_figure(out_dir, runs, "vgg1d", lr, norms=norms, name="lp_landscape.png",
                                    title=f"l_p normalisations (paper Fig. 12-13): landscape along the gradient, "
                                          f"lr = {lr:g}")


def _trained_normalisers(runs) -> list[str]:
    """The classification runs' normalisers other than the references (none, BatchNorm) and the training variants,
    in first-seen order (the norms experiment's, the l_p experiment's, a --normaliser-file's)."""
    names = []
    for run in runs:
        norm = str(run["spec"]["norm"])
        if run["spec"].get("kind", "vgg1d") == "vgg1d" and norm not in (*BASELINE, "noisy_batchnorm", "noisy_none") \
                and norm not in names:
            names.append(norm)
    return names


def normaliser_figure(out_dir: Path, runs, norm: str) -> list[Path]:
    """One trained normaliser beside BatchNorm and the unnormalised network, on the seeds it was trained on: training
    accuracy, and the landscape along the gradient (loss band, gradient-change band, effective beta) over training."""
    own = _select(runs, "vgg1d", norm)
    if not own:
        return []
    lr = float(own[0]["spec"]["lr"])
    seeds = {r["spec"]["seed"] for r in own}
    norms = ("none", "batchnorm", norm)
    groups = {n: [r for r in _select(runs, "vgg1d", n, lr) if r["spec"]["seed"] in seeds] for n in norms}
    fig = Figure(figsize=(16.0, 3.9), dpi=DPI, layout="constrained")
    ax_acc, ax_loss, ax_grad, ax_beta = fig.subplots(1, 4)
    for name, group in groups.items():
        if not group:
            continue
        colour = norm_colour(name, list(norms))
        _seed_curve(ax_acc, group, "acc", colour)
        probed = _with_probe(group, "landscape/loss")
        if probed:
            steps, _, low, _ = _seed_band(probed, "landscape/loss_min")
            ax_loss.fill_between(steps, low, _seed_band(probed, "landscape/loss_max")[3], color=colour, alpha=0.35,
                                 linewidth=0)
            steps, _, low, _ = _seed_band(probed, "landscape/grad_change_min")
            ax_grad.fill_between(steps, low, _seed_band(probed, "landscape/grad_change_max")[3], color=colour,
                                 alpha=0.35, linewidth=0)
            steps, mean, low, high = _seed_band(probed, "landscape/beta_eff")
            ax_beta.plot(steps, mean, color=colour, linewidth=1.4)
            ax_beta.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_ylabel("training accuracy (batch)")
    ax_acc.set_title("training accuracy", fontsize=9)
    ax_loss.set_ylabel("training loss on the step's batch")
    ax_loss.set_title("loss L(x - eta g), band min..max over eta", fontsize=9)
    ax_grad.set_ylabel("gradient change (l2)")
    ax_grad.set_title("||grad(x - eta g) - g||, band over eta", fontsize=9)
    ax_beta.set_ylabel("effective beta-smoothness")
    ax_beta.set_title("effective beta (lower: smoother)", fontsize=9)
    for ax in (ax_acc, ax_loss, ax_grad, ax_beta):
        ax.set_xlabel("SGD step")
        ax.grid(alpha=0.3)
    for ax in (ax_grad, ax_beta):
        _positive_log(ax, *[_seed_band(g, "landscape/grad_change_max")[1] for g in
                            (_with_probe(group, "landscape/loss") for group in groups.values()) if g])
    drawn = [n for n, g in groups.items() if g]
    fig.legend(handles=[Patch(color=norm_colour(n, list(norms)), label=f"norm = {n}") for n in drawn],
               loc="outside lower center", ncols=len(drawn), fontsize=8)
    suptitle(fig, f"{norm} beside BatchNorm and the unnormalised network (VGG-1d, lr = {lr:g}, seeds "
                  f"{', '.join(map(str, sorted(seeds)))}; line = mean, band = min..max over seeds and the eta grid)",
             fontsize=10)
    return [_save(fig, out_dir, f"normaliser__{norm}.png")]


def normaliser_figures(out_dir: Path, runs) -> list[Path]:
    """`normaliser_figure` for every trained normaliser (`_trained_normalisers`)."""
    return [path for norm in _trained_normalisers(runs) for path in normaliser_figure(out_dir, runs, norm)]


def dln_loss_figure(out_dir: Path, runs) -> list[Path]:
    dln = [r for r in runs if r["spec"].get("kind") == "dln"]
    if not dln:
        return []
    lrs = sorted({float(r["spec"]["lr"]) for r in dln})
    fig = Figure(figsize=(4.6 * len(lrs) + 0.4, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(lrs), squeeze=False)[0]
    norms = sorted({r["spec"]["norm"] for r in dln}, key=lambda n: (n != "none", n))
    for ax, lr in zip(axes, lrs):
        for norm in norms:
            group = _select(runs, "dln", norm, lr)
            if group:
                _seed_curve(ax, group, "loss", norm_colour(norm, norms))
        _positive_log(ax, *[r["history"]["train"]["loss"] for r in dln if r["history"]["train"]["loss"]])
        ax.set_title(f"lr = {lr:g}")
        ax.set_xlabel("gradient-descent step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (mean squared error)")
    fig.legend(handles=[Line2D([], [], color=norm_colour(n, norms), label=f"norm = {n}") for n in norms],
               loc="outside lower center", ncols=len(norms), fontsize=8)
    suptitle(fig, "Deep linear network: training loss (mean and min..max over seeds)", fontsize=10)
    return [_save(fig, out_dir, "dln_loss.png")]


def _part_figures(out_dir: Path, part: str) -> list[Path]:
    """The figures of one part ('vgg1d', 'dln', 'other': noisy BN, l_p, DLN loss, or 'normalisers': one per trained
    normaliser), from the runs of DIR."""
    runs = load_report_runs(out_dir)
    if part == "other":
        return noisy_figure(out_dir, runs) + lp_figures(out_dir, runs) + dln_loss_figure(out_dir, runs)
    if part == "normalisers":
        return normaliser_figures(out_dir, runs)
    paths: list[Path] = []
    lrs = sorted({float(r["spec"]["lr"]) for r in runs if r["spec"].get("kind", "vgg1d") == part})
    for lr in lrs:
        paths += landscape_figure(out_dir, runs, part, lr)
    if lrs:
        paths += predictiveness_figure(out_dir, runs, part, lrs[0])
    return paths + ics_figure(out_dir, runs, part)


def drawing_jobs(out_dir: Path) -> list[tuple]:
    """(function, args) per independent part, in report order (each part loads the runs it draws from)."""
    return [(_part_figures, (out_dir, part)) for part in ("vgg1d", "dln", "other", "normalisers")]


def draw_paper_figures(out_dir: Path) -> list[Path]:
    """Every paper figure the runs of DIR support, in report order."""
    return [path for function, args in drawing_jobs(out_dir) for path in function(*args)]
