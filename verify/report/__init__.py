"""The verification report, ordered by the reader's questions, built from results.json and rendered by
`verify.document` to `report.md` and a self-contained `report.html`.

    headline   one paragraph: the counts of `verify.summary.headline_lines` (the README and CLI print the same)
    1. claims       the paper's empirical claims: verdict, ratio [95% CI], the paper's magnitude (`claims`)
    2. statements   the statement x normaliser matrix (`statements`)
    3. bounds       how tight the bounds are on trained networks (`bounds`)
    figures of the claims, reproducibility
    details    collapsed: criteria, derivations, bound-check records and tolerances, training runs, the
               paper's figures, performance, environment (`claims`, `statements`, `bounds`, `runs`)

`write_report(DIR)` reads `DIR/results.json`, draws the figures (`verify.figures`, `verify.paper_figures`,
`verify.claim_figures`) and writes both files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from verify import claim_figures, figures, paper_figures, sharpness_figures
from verify.document import (
    TITLE,
    Block,
    Details,
    Heading,
    Link,
    Paragraph,
    draw_formulas,
    parts,
    render_html,
    render_markdown,
)
from verify.report.bounds import bounds_details, bounds_section
from verify.report.claims import claim_figures_section, claims_details, claims_section
from verify.report.runs import (
    _PAPER_FIGURE_CAPTIONS,
    environment_blocks,
    paper_figure_blocks,
    performance_blocks,
    reproducibility_blocks,
    training_blocks,
)
from verify.report.sharpness import sharpness_details
from verify.report.statements import derivations_details, matrix_section
from verify.summary import headline_lines

__all__ = ["build_document", "draw_figures", "render_html", "render_markdown", "write_report",
           "write_theory_report"]

PAPER = "Santurkar, Tsipras, Ilyas and Mądry (NeurIPS 2018, arXiv:1805.11604)"


def headline_blocks(results: dict) -> list[Block]:
    return [Heading(1, TITLE), Paragraph(parts(f"Checks the claims of {PAPER}. " + " ".join(headline_lines(results)),
                                               " Details, collapsed, are at the ", Link("end", "#details"), "."))]


def _details(title: str, blocks: list[Block]) -> list[Block]:
    return [Details(title, tuple(blocks))] if blocks else []


def build_document(results: dict, out_dir: Path, figure_paths: list[Path]) -> list[Block]:
    """The report as blocks; figures must already exist under DIR/figures."""
    curves = [p for p in figure_paths if p == figures.training_curves_path(out_dir)]
    paper = [p for p in figure_paths if p.parent == figures.figures_dir(out_dir) and p.name.startswith(
        tuple(_PAPER_FIGURE_CAPTIONS))]
    claim_paths = [p for p in figure_paths if p.name.startswith("claim__")]
    details = (claims_details(results) + derivations_details(results) + bounds_details(results, out_dir)
               + _details("Training runs (paper Fig. 1): speed, accuracy, divergence", training_blocks(
                   results, out_dir, curves))
               + _details("The paper's figures, re-drawn from these runs", paper_figure_blocks(out_dir, paper))
               + sharpness_details(out_dir, figure_paths)  # beyond the paper (issue 16)
               + _details("Performance of the instrument", performance_blocks(out_dir))
               + _details("Environment and reproduction", environment_blocks(results, out_dir)))
    return (headline_blocks(results) + claims_section(results) + matrix_section(results)
            + bounds_section(results, out_dir) + claim_figures_section(results, out_dir, claim_paths)
            + reproducibility_blocks(out_dir, (results.get("environment") or {}).get("git_revision"))
            + [Heading(2, "Details")] + details)


def _call(function, args) -> list[Path]:
    return function(*args)


def draw_figures(out_dir: Path, processes: int | None = None, meanwhile=None) -> list[Path]:
    """Every figure of DIR, drawn by independent jobs in parallel processes (fork: matplotlib and the loaded
    modules are inherited, nothing is re-imported); the paths come back in report order.

    Drawing is CPU-bound rendering (constrained layout, PNG encoding) and the figures share no state, so
    one process per core divides the report's drawing time by the cores. `processes=1` draws in this process.
    `meanwhile()`, if given, runs in this process while the others draw (before drawing where it draws itself).
    """
    jobs = figures.drawing_jobs(out_dir) + paper_figures.drawing_jobs(out_dir) + claim_figures.drawing_jobs(out_dir) \
        + sharpness_figures.drawing_jobs(out_dir)
    processes = min(len(jobs), processes or os.cpu_count() or 1)
    if (Path(out_dir) / "results.json").exists():
        paper_figures.load_report_runs(out_dir)  # once, here: the forked processes inherit the loaded runs
    if processes <= 1:
        if meanwhile is not None:
            meanwhile()
        return [path for function, args in jobs for path in function(*args)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        # one job at a time per process (the default chunks of ~len/8 jobs leave one process drawing alone)
        drawn = pool.starmap_async(_call, jobs, chunksize=1)
        if meanwhile is not None:
            meanwhile()
        return [path for paths in drawn.get() for path in paths]


def write_report(out_dir: Path) -> dict[str, Path]:
    """Draw the figures of DIR, then write DIR/report.md and DIR/report.html from DIR/results.json."""
    out_dir = Path(out_dir)
    results = json.loads((out_dir / "results.json").read_text())

    def formulas() -> None:  # the formulas' SVGs (mathtext, seconds), cached for the real rendering below
        draw_formulas(build_document(results, out_dir, []))

    blocks = build_document(results, out_dir, draw_figures(out_dir, meanwhile=formulas))
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["md"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(render_html(blocks, out_dir), encoding="utf-8")
    return paths


def write_theory_report(out_dir: Path) -> Path:
    """DIR/theory.md from DIR/theory.json alone: every statement, status, derived form, counterexample."""
    out_dir = Path(out_dir)
    theory = json.loads((out_dir / "theory.json").read_text())
    results = {"theory": theory}
    blocks = [Heading(1, "Theory: statements of Santurkar et al. (2018), derived and checked by SymPy"),
              Paragraph(parts(headline_lines(results)[1]))]
    blocks += matrix_section(results) + list(derivations_details(results)[0].blocks if theory else [])
    path = out_dir / "theory.md"
    path.write_text(render_markdown(blocks), encoding="utf-8")
    return path
