"""Question 3 of the report: how tight are the bounds on trained networks?

One table (`verify.summary.bound_rows`: rows checked, violations, worst and median LHS/RHS per measured
statement) and one figure per measured (normaliser, statement): LHS against RHS and the ratio's distribution; in the
details, every check record (layer x learning rate), the conditions measured on the same rows and the tolerance each
check used.
"""

from __future__ import annotations

from pathlib import Path

from verify import figures
from verify.document import (
    Alert,
    Block,
    Code,
    Details,
    FigureBlock,
    FigureGrid,
    Heading,
    Paragraph,
    StatusBadge,
    Strong,
    Table,
    fmt_count,
    fmt_ratio,
    fmt_value,
    parts,
    table,
)
from verify.summary import BoundRow, bound_rows, glyph

BOUNDS_HEADING = "3. How tight are the bounds on trained networks?"


def bug_alert(row: BoundRow) -> Alert:
    return Alert(parts(f"BUG: {row.statement} ({row.normaliser}) is proved in theory, yet "
                       f"{fmt_count(row.n_violations)} measured rows violate it (worst ratio {row.worst}). Either the "
                       "derivation, the measurement or the tolerance is wrong; do not trust these results until it "
                       "is found."))


def _figure(out_dir: Path, kind: str, row: BoundRow, caption: str) -> FigureBlock:
    path = figures.check_figure_path(out_dir, kind, row.normaliser, row.statement)
    return FigureBlock(path.relative_to(out_dir).as_posix(), caption)


def bounds_section(results: dict, out_dir: Path) -> list[Block]:
    rows = bound_rows(results)
    if not rows:
        return []
    batch = ((results.get("config") or {}).get("train") or {}).get("batch_size")
    drawn = {(n, c) for n, c, _ in figures.checks_files(out_dir)}
    blocks: list[Block] = [Heading(2, BOUNDS_HEADING), Paragraph(parts(
        "Each bound evaluated on gradients captured in the training-mode network, per layer and channel, at the "
        "capture steps of every run (for convolutional layers m = batch size × length"
        + (f", batch size {batch}" if batch else "") + "). Ratio = measured LHS / bound RHS over rows whose bound "
        "is positive: 1 is a tight bound, far below 1 a loose one; a violation is a row with LHS > RHS + tol. "
        "Worst = largest over all records, median = median of the records' medians.")),
        table(["statement", "normaliser", "status", "records", "rows checked", "violations", "worst LHS/RHS",
               "median LHS/RHS"],
              [[Code(r.statement), Code(r.normaliser), StatusBadge(r.status, glyph(r.status)), fmt_count(r.records),
                fmt_count(r.n_checked), fmt_count(r.n_violations), r.worst, r.median] for r in rows],
              [False, False, False, True, True, True, True, True])]
    blocks += [bug_alert(r) for r in rows if r.bug]
    scatter = [_figure(out_dir, "bound_check", r, f"{r.statement} ({r.normaliser}): measured LHS against bound "
                       "RHS (log–log, layers pooled; dashed LHS = RHS, red crosses violations) and the distribution of "
                       "LHS / RHS (ratio 1: the bound met with equality; within 0.1% of 1 the panel shows LHS / RHS − 1)")
               for r in rows if (r.normaliser, r.statement) in drawn]
    if scatter:
        blocks.append(FigureGrid(tuple(scatter)))
    return blocks


def _records_table(records: list[dict]) -> Table:
    return table(["layer", "lr", "rows checked", "violations", "worst ratio", "median ratio"],
                 [[fmt_value(r.get("layer")), fmt_value(r.get("lr")), fmt_count(r.get("n_checked")),
                   fmt_count(r.get("n_violations")), fmt_ratio(r.get("worst_ratio")), fmt_ratio(r.get("median_ratio"))]
                  for r in records], [True] * 6)


def _conditions_table(records: list[dict]) -> Table | None:
    """How often each measured condition held, and the violations on rows where all held."""
    records = [r for r in records if r.get("conditions_held")]
    if not records:
        return None
    names = list(records[0]["conditions_held"])
    share = lambda count, total: f"{count:,} ({100 * count / total:.0f}%)" if total else "—"
    return table(["layer", "lr", "rows checked", *names, "all hold", "violations where all hold"],
                 [[fmt_value(r.get("layer")), fmt_value(r.get("lr")), fmt_count(r.get("n_checked")),
                   *(share(r["conditions_held"].get(n, 0), r.get("n_checked") or 0) for n in names),
                   share(r.get("n_all_conditions_held", 0), r.get("n_checked") or 0),
                   fmt_count(r.get("n_violations_under_conditions"))] for r in records],
                 [True] * (len(names) + 5))


def bounds_details(results: dict, out_dir: Path) -> list[Block]:
    """Per statement: its records, conditions, tolerance, and the ratio histogram (collapsed)."""
    rows = bound_rows(results)
    if not rows:
        return []
    blocks: list[Block] = []
    for row in rows:
        records = [r for r in results.get("checks") or []
                   if r.get("normaliser", "?") == row.normaliser and r.get("claim", "?") == row.statement]
        blocks += [Heading(3, f"{row.statement} ({row.normaliser})"), Paragraph(parts(
            "Theory status: ", StatusBadge(row.status, glyph(row.status)),
            f"; {fmt_count(row.n_checked)} rows checked, {fmt_count(row.n_violations)} violations.")),
            _records_table(records)]
        conditions = _conditions_table(records)
        if conditions is not None:
            blocks += [Paragraph(parts("Conditions measured on the same rows (the statement's reading of 'smoother' "
                                       "or of its premise; not required for the check):")), conditions]
        if row.status == "refuted":
            blocks.append(Paragraph(parts(
                f"The measurements also violate this refuted statement ({fmt_count(row.n_violations)} rows)."
                if row.n_violations else "No measured row violates this refuted statement: its refutation rests "
                "on the symbolic counterexample, whose configuration did not arise in these runs.")))
        tolerances = sorted({str(r["tolerance"]) for r in records if r.get("tolerance")})
        if tolerances:
            blocks.append(Paragraph(parts(Strong("Tolerance:"), " " + "; ".join(tolerances))))
    return [Details(f"Bound checks: every record, condition and tolerance ({len(rows)} statements)", tuple(blocks))]
