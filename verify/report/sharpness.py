"""The report's details section beyond the paper (issue 16): what the sharpness probes measure, their estimate
quality and cost per run kind, and the figures of `verify.sharpness_figures`. Reads saved data only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from verify.document import Block, Code, Details, FigureBlock, Paragraph, parts, table
from verify.paper_figures import load_report_runs
from verify.sharpness_figures import FILTER_LANDSCAPE_FIGURE, SHARPNESS_FIGURE

TITLE = "Beyond the paper: sharpness, the effective sharpness and the filter-normalised landscape"
NAMES = {"none": "standard", "batchnorm": "BN"}

READING = (
    "Not the paper's measurements (issue 16): the paper's Fig. 4c measures the curvature along the gradient only. "
    "λmax(H) is the top eigenvalue of the training loss's Hessian over every trainable parameter, on the step's batch "
    "in train mode (Lanczos with full reorthogonalisation on Hessian-vector products, each value with its residual "
    "‖Hv − λv‖; converged = residual ≤ 1% of ‖H‖); the 2/η line marks where plain (S)GD stops being stable along the "
    "top eigenvector (Cohen et al. 2021). tr H is Hutchinson's estimate from Rademacher probes, with its standard "
    "error. λmax(DHD) is the effective sharpness (Lyu, Li and Arora 2022): D rescales every layer feeding a "
    "normaliser to unit norm, which leaves a scale-invariant loss unchanged, so it does not move when those weights "
    "are rescaled while the raw λmax moves as 1/c²; for the standard network D = I. The claim bn-lower-sharpness is "
    "decided by the raw λmax (both networks take the same step η; η·λraw = η_eff·λeff for a scale-invariant layer), "
    "beta-tracks-sharpness by the rank correlation of the effective β with the raw λmax. The filter-normalised "
    "landscape follows Li et al. (2018): random directions with every filter rescaled to its weights' filter norm, "
    "biases and BN parameters not moved, train mode (batch statistics), not the eval mode of their code.")


def _median(values) -> float | None:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def sharpness_rows(runs: list[dict]) -> list[list[str]]:
    """Per (model, lr, norm): probes, median lambda_max, lambda_eff, trace +- se, converged fraction, HVPs a probe."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        probes = run["probes"]
        if np.size(probes.get("sharpness/step", [])) == 0:
            continue
        spec = run["spec"]
        groups.setdefault((spec.get("kind", "vgg1d"), float(spec["lr"]), spec["norm"]), []).append(probes)
    rows = []
    for (kind, lr, norm), tables in sorted(groups.items(), key=lambda item: (item[0][0] != "vgg1d", *item[0])):
        column = lambda key: np.concatenate([np.asarray(t[f"sharpness/{key}"], dtype=np.float64).ravel()  # noqa: E731
                                             for t in tables])
        converged = np.concatenate([np.asarray(t["sharpness/converged"])[:, 0] for t in tables])
        rows.append([f"{'VGG-1d' if kind == 'vgg1d' else 'DLN'} lr {lr:g}", NAMES.get(norm, norm),
                     f"{column('step').size} ({len(tables)} seed{'s' if len(tables) != 1 else ''})", _fmt(_median(column("lambda_max"))),
                     _fmt(2.0 / lr), _fmt(_median(column("lambda_eff"))),
                     f"{_fmt(_median(column('trace')))} ± {_fmt(_median(column('trace_se')))}",
                     f"{converged.mean():.0%}", _fmt(_median(column("hvps")))])
    return rows


def sharpness_details(out_dir: Path, figure_paths: list[Path]) -> list[Block]:
    """The collapsed section (empty when no run carries the sharpness probe)."""
    runs = load_report_runs(out_dir)
    rows = sharpness_rows(runs)
    figures = [p for p in figure_paths if p.name in (SHARPNESS_FIGURE, FILTER_LANDSCAPE_FIGURE)]
    if not rows and not figures:
        return []
    blocks: list[Block] = [Paragraph(parts(READING, " Definitions and tests: ", Code("empirics/sharpness.py"), ", ",
                                           Code("empirics/filter_landscape.py"), ", ", Code("verify/sharpness_claims.py"),
                                           "."))]
    if rows:
        blocks.append(table(["model", "network", "probes", "median λmax(H)", "2/η", "median λmax(DHD)",
                             "median tr H ± s.e.", "λmax converged", "HVPs a probe"], rows,
                            [False, False, True, True, True, True, True, True, True]))
    captions = {SHARPNESS_FIGURE: "Sharpness against the step with the 2/η line, the effective sharpness with BN's "
                                  "weight norms, and the paper's effective β against λmax at the same probes.",
                FILTER_LANDSCAPE_FIGURE: "Filter-normalised random-direction landscapes at the last step, 1-D and 2-D, "
                                         "the standard network beside BN."}
    blocks += [FigureBlock(p.relative_to(out_dir).as_posix(), captions[p.name]) for p in figures]
    return [Details(TITLE, tuple(blocks))]
