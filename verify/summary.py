"""The one summary of results.json: the report, the README block and the command line's closing lines all
read it, so that they can never disagree. Every function is pure and returns already formatted strings.

    claim_rows        one row per empirical claim of the paper: verdict, measured ratio [95% interval] on the
                      deciding axes, the paper's side and magnitude
    statement_matrix  rows = formal statements (factC.1 ... lem4.5, printed forms, analogues), columns =
                      normalisers, cells = status glyph + violations / rows measured
    statement_groups  each statement once per distinct formula: normalisers whose record repeats another's
                      (`same_statement_as`, or the same status, statement, closed form and evidence) share it
    bound_rows        one row per measured (normaliser, statement): rows, violations, worst and median LHS/RHS
    headline          the counts of all three, and `headline_lines` their sentences

Statements, statuses, normalisers and claims come from the data; none is listed here, so new ones appear
without new code. Statuses without a glyph are shown as their own word.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from verify.figures import format_ratio

NAMES = {"none": "standard", "batchnorm": "BN", "noisy_batchnorm": "noisy BN", "noisy_none": "noisy standard"}
GLYPHS = {"proved": "✓", "checked": "≈", "conditional": "◐", "refuted": "✗"}
AXES = ("matched", "early", "whole")  # verify.progress.AXES: matched loss, early window, whole run
DECIDING_AXES = ("matched", "early")  # the whole-run ratio is the paper's reading, shown beside them


def glyph(status: str) -> str:
    """'✓ proved'; a status this module does not know keeps its own word."""
    return f"{GLYPHS[status]} {status}" if status in GLYPHS else status


# ---------------------------------------------------------------- empirical claims


def comparisons_of(measured: dict) -> list[dict]:
    """Every comparison record with a deciding metric inside a claim's measured values (nested for l_p)."""
    found = []
    for value in measured.values():
        if isinstance(value, dict):
            found += [value] if "decided_by" in value else comparisons_of(value)
    return found


def ratio_records(measured: dict) -> list[tuple[str, dict]]:
    """(label, record with an `interval`) for claims decided by one number per run (steps, losses, drift)."""
    found = []
    for key, value in measured.items():
        if isinstance(value, dict) and "interval" in value and "verdict" in value:
            found.append((key.replace("=", " ").replace("_", " "), value))
        elif isinstance(value, dict):
            found += [(f"{key} {label}".strip(), record) for label, record in ratio_records(value)]
    return found


def interval_short(interval: dict | None) -> str:
    """'1.9× [1.2, 3.0]' (2 significant digits), 'n/a' where no ratio was formed."""
    if not interval or interval.get("ratio") is None:
        return "n/a"
    text = f"{interval['ratio']:.2g}×"
    if interval.get("ci"):
        low, high = interval["ci"]
        text += f" [{low:.2g}, {high:.2g}]"
    return text


def _seeds(intervals: list[dict]) -> str:
    counts = sorted({int(i.get("n") or 0) for i in intervals if i})
    if not counts:
        return ""
    n = "–".join(map(str, (counts[0], counts[-1]) if len(counts) > 1 else counts))
    return f"{n} seed{'s' if counts[-1] != 1 else ''}"


def _label(comparison: dict, same_pair: bool) -> str:
    """'lr 0.1' where every comparison of the claim is of the same two networks, else 'BN/standard lr 0.1'."""
    a, b = (NAMES.get(n, n) for n in comparison.get("pair", ("?", "?")))
    return ("" if same_pair else f"{a}/{b} ") + f"lr {comparison.get('lr', float('nan')):g}"


@dataclass(frozen=True)
class ClaimRow:
    """One empirical claim as formatted text: `measured` is the headline cell (deciding axes only);
    `matched`, `early`, `whole` the per-axis cells of the details."""

    id: str
    figure: str
    verdict: str
    measured: str
    seeds: str
    threshold: str
    paper: str
    source: str
    matched: str = "—"
    early: str = "—"
    whole: str = "—"


def claim_row(record: dict) -> ClaimRow:
    measured = record.get("measured") or {}
    common = dict(id=str(record.get("id", "?")), figure=str(record.get("figure", "")),
                  verdict=str(record.get("verdict", "?")), threshold=str(record.get("threshold") or "—"),
                  paper=str(record.get("paper", "")), source=str(record.get("paper_source", "")))
    comparisons = comparisons_of(measured)
    if comparisons:
        several = len(comparisons) > 1
        label = lambda c: _label(c, len({tuple(c.get("pair", ())) for c in comparisons}) == 1)
        per_axis, headline, intervals = {}, [], []
        for axis in AXES:
            cells = []
            for c in comparisons:
                interval = ((c["decided_by"].get("axes") or {}).get(axis) or {}).get("interval")
                if interval is None:
                    continue
                intervals.append(interval)
                cells.append((f"{label(c)}: " if several else "") + interval_short(interval))
            per_axis[axis] = "; ".join(cells) or "—"
        for c in comparisons:
            axes = c["decided_by"].get("axes") or {}
            shown = [f"{axis} {interval_short(axes[axis].get('interval'))}" for axis in DECIDING_AXES if axis in axes]
            headline.append((f"{label(c)}: " if several else "") + (", ".join(shown) or "no deciding axis"))
        return ClaimRow(measured="; ".join(headline), seeds=_seeds(intervals), **per_axis, **common)
    ratios = ratio_records(measured)
    if ratios:
        several = len(ratios) > 1
        text = "; ".join((f"{label}: " if several else "") + interval_short(r["interval"]) for label, r in ratios)
        return ClaimRow(measured=text, seeds=_seeds([r["interval"] for _, r in ratios]), whole=text, **common)
    # a claim decided without ratios (a rank correlation) may give the table a shorter cell than its headline
    text = str(measured.get("headline") or "—")
    seeds = _seeds([{"n": n} for n in measured.get("seeds") or []])
    return ClaimRow(measured=str(measured.get("short") or text), seeds=seeds, whole=text, **common)


def claim_rows(results: dict) -> list[ClaimRow]:
    return [claim_row(record) for record in results.get("claims") or [] if isinstance(record, dict)]


def verdict_counts(results: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in claim_rows(results):
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    return counts


# ---------------------------------------------------------------- bound checks


@dataclass(frozen=True)
class BoundRow:
    """The measured checks of one (normaliser, statement), over all records (layers x learning rates)."""

    normaliser: str
    statement: str
    status: str
    records: int
    n_checked: int
    n_violations: int
    worst_ratio: float | None
    median_ratio: float | None  # the median of the records' median ratios
    measured_on: str = ""  # the normaliser whose networks were measured, where not its own (l2: BatchNorm's)

    @property
    def bug(self) -> bool:
        """Proved in theory yet violated by measurements: a bug in derivation, measurement or tolerance."""
        return self.status == "proved" and self.n_violations > 0

    @property
    def worst(self) -> str:
        return format_ratio(self.worst_ratio)

    @property
    def median(self) -> str:
        return format_ratio(self.median_ratio)


def _numbers(records: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]


def _status(results: dict, normaliser: str, statement: str, records: list[dict]) -> str:
    record = ((results.get("theory") or {}).get(normaliser) or {}).get(statement)
    if isinstance(record, dict) and record.get("status"):
        return str(record["status"])
    return next((str(r["status"]) for r in records if r.get("status")), "not derived")


def bound_rows(results: dict) -> list[BoundRow]:
    """One row per (normaliser, statement) with check records, in the order the records first appear."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in results.get("checks") or []:
        if isinstance(record, dict):
            groups.setdefault((str(record.get("normaliser", "?")), str(record.get("claim", "?"))), []).append(record)
    rows = []
    for (normaliser, statement), records in groups.items():
        worst, medians = _numbers(records, "worst_ratio"), _numbers(records, "median_ratio")
        rows.append(BoundRow(normaliser, statement, _status(results, normaliser, statement, records), len(records),
                             sum(int(r.get("n_checked") or 0) for r in records),
                             sum(int(r.get("n_violations") or 0) for r in records),
                             max(worst) if worst else None, statistics.median(medians) if medians else None,
                             str(records[0].get("measured_on") or "")))
    return rows


# ---------------------------------------------------------------- formal statements


def normalisers_of(results: dict) -> list[str]:
    """Normalisers in the order results.json lists them (theory first, then any only checked)."""
    names = [n for n, claims in (results.get("theory") or {}).items() if isinstance(claims, dict)]
    return names + [r.normaliser for r in bound_rows(results) if r.normaliser not in names]


def statements_of(results: dict) -> list[str]:
    """Statement ids in order of first appearance over the normalisers."""
    ids: list[str] = []
    for claims in (results.get("theory") or {}).values():
        ids += [s for s in (claims if isinstance(claims, dict) else {}) if s not in ids]
    return ids + [r.statement for r in bound_rows(results) if r.statement not in ids]


@dataclass(frozen=True)
class StatementGroup:
    """One statement as one formula: the normalisers it holds for (the first owns the record shown)."""

    statement: str
    normalisers: tuple[str, ...]
    record: dict

    @property
    def status(self) -> str:
        return str(self.record.get("status") or "not derived")


_FORMULA_KEYS = ("status", "statement_latex", "derived_latex", "evidence")


def _formula(record: dict) -> tuple[str, ...]:
    return tuple(str(record.get(key)) for key in _FORMULA_KEYS)


def statement_groups(results: dict) -> list[StatementGroup]:
    """Each statement's distinct formulas: `same_statement_as` where recorded, else identical records."""
    theory = {n: c for n, c in (results.get("theory") or {}).items() if isinstance(c, dict)}
    groups: list[StatementGroup] = []
    for statement in statements_of(results):
        members: dict[str, list[str]] = {}  # owner (the first normaliser of a formula) -> normalisers
        for normaliser, claims in theory.items():
            record = claims.get(statement)
            if not isinstance(record, dict):
                continue
            owner = record.get("same_statement_as")
            if owner not in members:
                key = _formula(record)
                owner = next((o for o in members if _formula(theory[o][statement]) == key), normaliser)
            members.setdefault(owner, []).append(normaliser)
        groups += [StatementGroup(statement, tuple(names), theory[owner][statement]) for owner, names in members.items()]
    return groups


@dataclass(frozen=True)
class MatrixCell:
    status: str  # "" where the normaliser has no such statement
    measured: str  # "violations/rows" or "—"
    evidence: str  # the first line of the evidence, for hover
    bug: bool = False
    same_as: str = ""  # the normaliser whose identical statement this repeats
    measured_on: str = ""  # the normaliser whose networks were measured, where not its own

    @property
    def text(self) -> str:
        return "" if not self.status else f"{glyph(self.status)} {self.measured}"


@dataclass(frozen=True)
class StatementMatrix:
    statements: tuple[str, ...]
    normalisers: tuple[str, ...]
    cells: dict  # (statement, normaliser) -> MatrixCell

    def cell(self, statement: str, normaliser: str) -> MatrixCell:
        return self.cells.get((statement, normaliser), MatrixCell("", "", ""))


def first_line(text) -> str:
    return str(text).strip().splitlines()[0] if text and str(text).strip() else "—"


def statement_matrix(results: dict) -> StatementMatrix:
    measured = {(r.statement, r.normaliser): r for r in bound_rows(results)}
    owner = {(g.statement, n): g.normalisers[0] for g in statement_groups(results) for n in g.normalisers}
    theory = results.get("theory") or {}
    cells = {}
    for statement in statements_of(results):
        for normaliser in normalisers_of(results):
            record = (theory.get(normaliser) or {}).get(statement)
            row = measured.get((statement, normaliser))
            if not isinstance(record, dict) and row is None:
                continue
            status = str((record or {}).get("status") or (row.status if row else "not derived"))
            same = owner.get((statement, normaliser), normaliser)
            cells[(statement, normaliser)] = MatrixCell(
                status, f"{row.n_violations:,}/{row.n_checked:,}" if row else "—",
                first_line((record or {}).get("evidence")), bool(row and row.bug), "" if same == normaliser else same,
                row.measured_on if row else "")
    return StatementMatrix(tuple(statements_of(results)), tuple(normalisers_of(results)), cells)


# ---------------------------------------------------------------- the headline


@dataclass(frozen=True)
class Headline:
    claims: dict[str, int]  # verdict -> count
    statements: dict[str, int]  # status -> distinct statements (one per formula)
    statement_records: int  # (normaliser, statement) records, shared formulas counted per normaliser
    normalisers: int
    rows_checked: int
    violations: int
    bugs: tuple[str, ...]  # "thm4.1 (batchnorm)" for each proved statement the measurements violate


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def headline(results: dict) -> Headline:
    statuses: dict[str, int] = {}
    for group in statement_groups(results):
        statuses[group.status] = statuses.get(group.status, 0) + 1
    rows = bound_rows(results)
    return Headline(verdict_counts(results), statuses, sum(len(g.normalisers) for g in statement_groups(results)),
                    len(normalisers_of(results)), sum(r.n_checked for r in rows), sum(r.n_violations for r in rows),
                    tuple(f"{r.statement} ({r.normaliser})" for r in rows if r.bug))


def headline_lines(results: dict) -> list[str]:
    """Three sentences: the paper's empirical claims, the formal statements, the bound checks."""
    h = headline(results)
    claims = sum(h.claims.values())
    lines = [f"Empirical claims: {claims} evaluated; {_counted(h.claims)}." if claims else
             "Empirical claims: none evaluated.",
             f"Formal statements: {sum(h.statements.values())} distinct over {h.normalisers} normalisers "
             f"({h.statement_records} statement records); {_counted(h.statements)}."]
    bugs = (f" BUG: proved yet violated: {', '.join(h.bugs)}." if h.bugs else
            " No proved statement is violated.")
    lines.append(f"Bound checks: {h.rows_checked:,} measured rows, {h.violations:,} violations "
                 f"in {len(bound_rows(results))} (normaliser, statement) pairs.{bugs}")
    return lines
