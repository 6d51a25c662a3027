"""One summary of results.json, shared by the report, the README block and the command line's closing lines,
so that they can never disagree: each function returns plain rows of already formatted strings.
"""

from __future__ import annotations

from verify.claim_figures import comparisons_of
from verify.statistics import interval_text

NAMES = {"none": "standard", "batchnorm": "BN", "noisy_batchnorm": "noisy BN", "noisy_none": "noisy standard"}


def _label(comparison: dict, several: bool) -> str:
    if not several:
        return ""
    a, b = (NAMES.get(n, n) for n in comparison["pair"])
    return f"{a}/{b}, lr {comparison['lr']:g}: "


def _ratio_records(measured: dict) -> list[tuple[str, dict]]:
    """(label, record with an `interval`) for claims decided by one number per run (steps, losses, drift)."""
    found = []
    for key, value in measured.items():
        if isinstance(value, dict) and "interval" in value and "verdict" in value:
            found.append((key.replace("=", " ").replace("_", " "), value))
        elif isinstance(value, dict):
            found += [(f"{key} {label}".strip(), record) for label, record in _ratio_records(value)]
    return found


def claim_row(record: dict) -> dict:
    """{"id", "figure", "verdict", "matched", "early", "whole", "paper", "source"}: one line per claim."""
    measured = record.get("measured") or {}
    row = {"id": record["id"], "figure": record.get("figure", ""), "verdict": record["verdict"],
           "matched": "—", "early": "—", "whole": "—", "paper": record.get("paper", ""),
           "source": record.get("paper_source", ""), "threshold": record.get("threshold") or "—"}
    comparisons = comparisons_of(measured)
    if comparisons:
        several = len(comparisons) > 1
        for axis in ("matched", "early", "whole"):
            cells = [_label(c, several) + interval_text(c["decided_by"]["axes"][axis]["interval"], 2)
                     for c in comparisons if axis in c["decided_by"]["axes"]]
            row[axis] = "; ".join(cells) or "—"
        return row
    ratios = _ratio_records(measured)
    if ratios:
        several = len(ratios) > 1
        row["whole"] = "; ".join((f"{label}: " if several else "") + interval_text(r["interval"], 2) for label, r in ratios)
    else:
        row["whole"] = measured.get("headline", "—")
    return row


def claim_rows(results: dict) -> list[dict]:
    return [claim_row(record) for record in results.get("claims") or []]


def verdict_counts(results: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in results.get("claims") or []:
        counts[record["verdict"]] = counts.get(record["verdict"], 0) + 1
    return counts
