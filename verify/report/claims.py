"""Question 1 of the report: what did the paper claim, and does it hold here?

One line per empirical claim (`verify.summary.claim_rows`): verdict, the measured ratio with its 95% interval
on the deciding axes, and the paper's side and magnitude; then one small figure per claim, and in the
details the criterion and the per-axis ratios of every claim.
"""

from __future__ import annotations

from pathlib import Path

from verify.document import Block, Code, Details, FigureBlock, FigureGrid, Heading, Paragraph, StatusBadge, parts, table
from verify.statistics import MIN_SEEDS
from verify.summary import claim_rows

CLAIMS_HEADING = "1. The paper's empirical claims: do they hold here?"
FIGURES_ANCHOR = "claim-figures"

READING = ("Ratio = the paper's 'worse' network over the 'better' one (per claim: the criterion in the details); "
           "geometric mean over seeds paired by seed, [95% bootstrap interval]. Reproduced: the interval lies on "
           "the paper's side; not reproduced: on the other side; inconclusive: it straddles the threshold, or "
           f"fewer than {MIN_SEEDS} seeds. Matched = at matched training loss, early = in the window where both "
           f"networks still train; both must agree, and an axis with fewer than {MIN_SEEDS} seed pairs is shown "
           "but does not vote.")


def claims_table(results: dict):
    rows = claim_rows(results)
    return table(["claim", "verdict", "measured ratio [95% CI]", "seeds", "paper's side", "the paper"],
                 [[(Code(r.id), f" {r.figure}" if r.figure else ""), StatusBadge(r.verdict, target=FIGURES_ANCHOR),
                   r.measured, r.seeds or "—", r.threshold, r.paper] for r in rows], kind="claims")


def claims_section(results: dict) -> list[Block]:
    if not results.get("claims"):
        return []
    return [Heading(2, CLAIMS_HEADING), Paragraph(parts(READING)), claims_table(results)]


def claim_figures_section(results: dict, out_dir: Path, paths: list[Path]) -> list[Block]:
    """One small figure per claim, in claim order; the claims without one are named."""
    by_id = {path.name[len("claim__"):-len(".png")]: path for path in paths}
    rows = claim_rows(results)
    shown = [r for r in rows if r.id in by_id]
    if not shown:
        return []
    missing = [r.id for r in rows if r.id not in by_id]
    grid = FigureGrid(tuple(FigureBlock(by_id[r.id].relative_to(out_dir).as_posix(),
                                        f"{r.id} ({r.figure}): {r.verdict}; {r.measured}") for r in shown),
                      anchor=FIGURES_ANCHOR)
    blocks: list[Block] = [Heading(2, "Figures of the claims"), Paragraph(parts(
        "A claim decided by a probe metric: that metric of every run against training step (left) and against "
        "training loss (right), one line per seed. One decided by one number per run: the seed pairs' ratios with "
        "their interval and the threshold. One that counts which runs train: their training curves. A rank "
        "correlation: its probes' scatter. The paper's expected side is marked where there is one.")), grid]
    if missing:
        blocks.append(Paragraph(parts(f"No figure for {', '.join(missing)} (nothing measured to draw).")))
    return blocks


def claims_details(results: dict) -> list[Block]:
    """Criterion, per-axis ratios and the paper's source of every claim (collapsed)."""
    claims = [c for c in results.get("claims") or [] if isinstance(c, dict)]
    if not claims:
        return []
    rows = claim_rows(results)
    axes = table(["claim", "at matched loss", "early window", "whole run (the paper's reading)", "paper's source"],
                 [[Code(r.id), r.matched, r.early, r.whole, r.source] for r in rows])
    criteria = [Paragraph(parts(Code(str(c.get("id"))), f" ({c.get('figure', '')}): {c.get('statement', '')} "
                                f"Criterion: {c.get('criterion', '—')}. Measured: "
                                f"{(c.get('measured') or {}).get('headline', '—')}.")) for c in claims]
    return [Details("Claims: criteria and the ratio on every axis", (
        Paragraph(parts("Each criterion was fixed in ", Code("verify/effects.py"), " before any result was seen. "
                        "The whole-run ratio mixes smoothness with convergence (a converged network has tiny "
                        "gradients); it is shown, not used. Censored steps (a run that never reaches the accuracy "
                        "threshold) bound a ratio on one side only. Per-seed values are in results.json under ",
                        Code("claims"), ".")), axes, *criteria))]
