"""Question 2 of the report: which formal statements are true?

A matrix (`verify.summary.statement_matrix`): rows = statements, columns = normalisers, cells = status glyph
and measured violations / rows; hovering a cell shows its evidence, clicking it opens its derivation. The
derivations follow in the details, each distinct formula once with the normalisers that share it
(`verify.summary.statement_groups`).
"""

from __future__ import annotations

from verify.document import (
    Block,
    Bullets,
    Code,
    DisplayMath,
    Details,
    Heading,
    Math,
    Paragraph,
    StatusBadge,
    Strong,
    fmt_value,
    parts,
    slug,
    table,
)
from verify.summary import GLYPHS, StatementGroup, glyph, statement_groups, statement_matrix

MATRIX_HEADING = "2. Which formal statements are true?"

# Fields shown in a derivation; any other field of a theory record is listed as it is.
_SHOWN = ("status", "general_m", "statement_latex", "derived_latex", "slack_latex", "assumptions", "equality",
          "evidence", "concrete_m_checked", "numeric_crosscheck", "counterexample", "same_statement_as", "source",
          "measured_check", "conditions")


def group_heading(group: StatementGroup) -> str:
    return f"{group.statement}: {', '.join(group.normalisers)}"


def _anchors(results: dict) -> dict[tuple[str, str], str]:
    """(statement, normaliser) -> the anchor of the derivation it shares."""
    return {(g.statement, n): slug(group_heading(g)) for g in statement_groups(results) for n in g.normalisers}


def matrix_section(results: dict) -> list[Block]:
    matrix = statement_matrix(results)
    if not matrix.cells:
        return [Heading(2, MATRIX_HEADING), Paragraph(parts("results.json records no statements."))]
    anchors = _anchors(results)
    rows = []
    for statement in matrix.statements:
        row: list = [Code(statement)]
        for normaliser in matrix.normalisers:
            cell = matrix.cell(statement, normaliser)
            if not cell.status:
                row.append("")
                continue
            note = f"{statement} ({normaliser}): {cell.status}; measured violations/rows {cell.measured}" \
                   + (f" on {cell.measured_on}'s networks (the same function)" if cell.measured_on else "") + "; " \
                   + (f"same statement as {cell.same_as}; " if cell.same_as else "") + cell.evidence
            label = f"{GLYPHS.get(cell.status, cell.status)} {cell.measured}" + (" BUG" if cell.bug else "")
            row.append(StatusBadge(cell.status, label, note, anchors.get((statement, normaliser), "")))
        rows.append(row)
    legend = "; ".join(f"{mark} {status}" for status, mark in GLYPHS.items())
    hosted = sorted({(n, c.measured_on) for (_, n), c in matrix.cells.items() if c.measured_on})
    hosts = "".join(f" {n} is measured on {host}'s networks, which compute its function bit for bit (its own "
                    "bounds, their measurements)." for n, host in hosted)
    return [Heading(2, MATRIX_HEADING), Paragraph(parts(
        f"Status of each statement as derived symbolically ({legend}; any other status is written out), then "
        "measured violations / rows checked on the trained networks (— where the statement is not measured for "
        "that normaliser). Hover a cell for its evidence; click it for the derivation, shown once per formula."
        + hosts)),
        table(["statement", *matrix.normalisers], rows, kind="matrix")]


def _derivation(group: StatementGroup) -> list[Block]:
    record = group.record
    facts: list = [StatusBadge(group.status, glyph(group.status))]
    if "general_m" in record:
        facts.append(f"; established for general m: {'yes' if record['general_m'] else 'no'}")
    if record.get("concrete_m_checked"):
        facts.append(f"; concrete m checked: {', '.join(map(str, record['concrete_m_checked']))}")
    if record.get("measured_check"):
        facts.append(f"; a measured check tests: {record['measured_check']}")
    if record.get("source"):
        facts.append(f"; source: {record['source']}")
    blocks: list[Block] = [Heading(3, group_heading(group)), Paragraph(parts("Status: ", *facts))]
    for key, label in (("statement_latex", "Statement"), ("derived_latex", "Derived closed form"),
                       ("slack_latex", "Slack")):
        if record.get(key):
            blocks += [Paragraph(parts(Strong(f"{label}:"))), DisplayMath(record[key])]
    if record.get("assumptions"):
        blocks += [Paragraph(parts(Strong("Assumptions:"))),
                   Bullets(tuple(parts(Math(a)) for a in record["assumptions"]))]
    if record.get("conditions"):
        blocks += [Paragraph(parts(Strong("Conditions:"))), Bullets(tuple(parts(str(c)) for c in record["conditions"]))]
    for key, label in (("equality", "Equality"), ("evidence", "Evidence")):
        if record.get(key):
            blocks.append(Paragraph(parts(Strong(f"{label}:"), " " + str(record[key]))))
    if isinstance(record.get("numeric_crosscheck"), dict):
        blocks.append(Paragraph(parts(Strong("Numeric cross-check:"), " " + ", ".join(
            f"{k} = {fmt_value(v)}" for k, v in record["numeric_crosscheck"].items()))))
    if isinstance(record.get("counterexample"), dict):
        blocks += [Paragraph(parts(Strong("Counterexample:"))), table(
            ["field", "value"], [[k, Code(fmt_value(v))] for k, v in record["counterexample"].items()])]
    extra = {k: v for k, v in record.items() if k not in _SHOWN}
    if extra:
        blocks += [Paragraph(parts(Strong("Other recorded fields:"))),
                   table(["field", "value"], [[k, fmt_value(v)] for k, v in extra.items()])]
    return blocks


def derivations_details(results: dict) -> list[Block]:
    groups = statement_groups(results)
    if not groups:
        return []
    blocks: list[Block] = [Paragraph(parts(
        "Each statement as derived symbolically: its statement, the assumptions under which it was proved, the "
        "derived closed form and slack, when equality holds, and for refuted statements a counterexample. "
        "Normalisers whose statement is the same formula share one entry."))]
    for group in groups:
        blocks += _derivation(group)
    return [Details(f"Statements: derivations, assumptions, counterexamples ({len(groups)} distinct)", tuple(blocks))]
