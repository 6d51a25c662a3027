"""The verification report: one document model, rendered to Markdown and to self-contained HTML.

`write_report(DIR)` reads `DIR/results.json`, draws the figures (`verify.figures`), builds one list
of blocks and renders it twice, so `report.md` and `report.html` cannot drift apart. The HTML page
needs nothing outside itself: CSS inline, figures as base64 PNG data URIs, LaTeX drawn offline by
matplotlib's mathtext (shown as source where mathtext cannot parse it).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

from matplotlib import mathtext
from matplotlib.font_manager import FontProperties

from verify import figures

TITLE = "Verification report: How Does Batch Normalization Help Optimization?"

# ---------------------------------------------------------------- number formatting


def fmt_count(value) -> str:
    return "—" if value is None else f"{int(value):,}"


fmt_ratio = figures.format_ratio  # one formatting for figures and tables


def fmt_accuracy(mean, std=None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}%" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}%"


def fmt_value(value) -> str:
    """Any JSON value as one line of text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


# ---------------------------------------------------------------- document model

@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Math:
    latex: str


@dataclass(frozen=True)
class Status:
    """A verdict ('proved', 'refuted', ...), coloured in HTML."""

    status: str


@dataclass(frozen=True)
class Link:
    text: str
    target: str


Inline = Text | Code | Strong | Math | Status | Link


def parts(*items) -> tuple[Inline, ...]:
    """Inline runs; bare strings become Text."""
    return tuple(Text(item) if isinstance(item, str) else item for item in items)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[Inline, ...]


@dataclass(frozen=True)
class Bullets:
    items: tuple[tuple[Inline, ...], ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[tuple[Inline, ...], ...], ...]
    numeric: tuple[bool, ...]  # right-aligned columns


@dataclass(frozen=True)
class DisplayMath:
    latex: str


@dataclass(frozen=True)
class Alert:
    parts: tuple[Inline, ...]


@dataclass(frozen=True)
class FigureBlock:
    path: str  # relative to DIR, posix
    caption: str


@dataclass(frozen=True)
class CodeBlock:
    text: str


Block = Heading | Paragraph | Bullets | Table | DisplayMath | Alert | FigureBlock | CodeBlock


def table(header: list[str], rows: list[list], numeric: list[bool] | None = None) -> Table:
    cell = lambda c: parts(c) if isinstance(c, (str, Text, Code, Strong, Math, Status, Link)) else parts(*c)
    return Table(tuple(header), tuple(tuple(cell(c) for c in row) for row in rows),
                 tuple(numeric or [False] * len(header)))


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


# ---------------------------------------------------------------- Markdown rendering

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>$|])")


def _md_text(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def _md_inline(items: tuple[Inline, ...], in_table: bool = False) -> str:
    out = []
    for item in items:
        if isinstance(item, Text):
            out.append(_md_text(item.text))
        elif isinstance(item, Code):
            text = item.text.replace("\n", " ")
            text = text.replace("|", "\\|") if in_table else text  # GFM splits cells before code spans
            fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
            out.append(f"{fence} {text} {fence}" if "`" in text else f"`{text}`")
        elif isinstance(item, (Strong, Status)):
            out.append(f"**{_md_text(item.text if isinstance(item, Strong) else item.status)}**")
        elif isinstance(item, Math):
            out.append(f"${item.latex}$")
        elif isinstance(item, Link):
            out.append(f"[{_md_text(item.text)}]({item.target})")
    return "".join(out)


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md_text(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(_md_inline(block.parts))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md_inline(item)}" for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_text(h) for h in block.header) + " |",
                     "|" + "|".join("---:" if n else "---" for n in block.numeric) + "|"]
            lines += ["| " + " | ".join(_md_inline(c, in_table=True) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, DisplayMath):
            out.append(f"$$\n{block.latex}\n$$")
        elif isinstance(block, Alert):
            out.append(f"> [!CAUTION]\n> {_md_inline(block.parts)}")
        elif isinstance(block, FigureBlock):
            alt = _md_text(Path(block.path).stem)  # the caption follows; an alt of the same words is noise
            out.append(f"![{alt}]({block.path})\n\n*{_md_text(block.caption)}*")
        elif isinstance(block, CodeBlock):
            out.append(f"```\n{block.text}\n```")
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------- HTML rendering

# Spellings mathtext lacks, rewritten to ones it has (same meaning).
_MATHTEXT_REWRITES = ((r"\\le(?![A-Za-z])", r"\\leq"), (r"\\ge(?![A-Za-z])", r"\\geq"),
                      (r"\\ne(?![A-Za-z])", r"\\neq"), (r"\\[lr]Vert(?![A-Za-z])", r"\\Vert"),
                      (r"\\tfrac(?![A-Za-z])", r"\\frac"))


@functools.lru_cache(maxsize=None)
def mathtext_svg(latex: str, size: float) -> str | None:
    """Base64 SVG of `latex` drawn by mathtext, or None where mathtext cannot draw it faithfully."""
    source = latex.strip()
    if not source:
        return None
    for pattern, replacement in _MATHTEXT_REWRITES:
        source = re.sub(pattern, replacement, source)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a missing glyph only warns; its box would misstate the formula
            mathtext.math_to_image(f"${source}$", buffer, prop=FontProperties(size=size), format="svg")
    except Exception:  # parse errors are ValueError, unsupported constructs vary; the source is shown instead
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html_math(latex: str, display: bool) -> str:
    svg = mathtext_svg(latex, 16.0 if display else 12.0)
    if svg is None:
        source = html.escape(latex)
        return (f'<pre class="latex" title="LaTeX source (mathtext cannot draw it)"><code>{source}</code></pre>'
                if display else f'<code class="latex" title="LaTeX source">{source}</code>')
    img = f'<img class="math" alt="{html.escape(latex)}" title="{html.escape(latex)}" src="data:image/svg+xml;base64,{svg}">'
    return f'<div class="display-math">{img}</div>' if display else img


def _html_inline(items: tuple[Inline, ...]) -> str:
    out = []
    for item in items:
        if isinstance(item, Text):
            out.append(html.escape(item.text))
        elif isinstance(item, Code):
            out.append(f"<code>{html.escape(item.text)}</code>")
        elif isinstance(item, Strong):
            out.append(f"<strong>{html.escape(item.text)}</strong>")
        elif isinstance(item, Status):
            kind = re.sub(r"[^a-z0-9-]", "", item.status.lower())
            out.append(f'<span class="status status-{kind}">{html.escape(item.status)}</span>')
        elif isinstance(item, Math):
            out.append(_html_math(item.latex, display=False))
        elif isinstance(item, Link):
            out.append(f'<a href="{html.escape(item.target)}">{html.escape(item.text)}</a>')
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1150px;
 margin:2em auto;padding:0 1.2em;line-height:1.5;color:#1f2328;background:#fff}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2.2em}
h3{margin-top:1.8em}
.table-wrap{overflow-x:auto;margin:.8em 0}
table{border-collapse:collapse;font-size:.88em}
th,td{border:1px solid #d0d7de;padding:.3em .65em;vertical-align:top}
th{background:#f0f3f6;text-align:left}
tbody tr:nth-child(even) td{background:#f8f9fa}
td code{white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;background:#f3f4f6;
 padding:.05em .3em;border-radius:4px}
pre{background:#f6f8fa;padding:.8em 1em;overflow-x:auto;border-radius:6px}
pre code{background:none;padding:0}
.display-math{text-align:center;margin:.9em 0;overflow-x:auto}
img.math{vertical-align:middle}
figure{margin:1.4em 0;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #e5e7eb}
figcaption{font-size:.88em;color:#57606a;max-width:60em;margin:.4em auto 0;text-align:left}
.alert{border-left:6px solid #cf222e;background:#ffebe9;padding:.7em 1em;margin:1em 0;font-weight:600;color:#82071e}
.status{display:inline-block;padding:0 .55em;border-radius:1em;font-weight:600;font-size:.9em;background:#eaeef2}
.status-proved,.status-holds,.status-pass{background:#dafbe1;color:#116329}
.status-refuted,.status-violated,.status-fail{background:#ffebe9;color:#a40e26}
"""


def render_html(blocks: list[Block], out_dir: Path) -> str:
    body, seen = [], {}
    for block in blocks:
        if isinstance(block, Heading):
            anchor = slug(block.text)
            seen[anchor] = seen.get(anchor, -1) + 1  # repeated headings get -1, -2, ... as on GitHub
            anchor += f"-{seen[anchor]}" if seen[anchor] else ""
            body.append(f'<h{block.level} id="{anchor}">{html.escape(block.text)}</h{block.level}>')
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_html_inline(block.parts)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            cls = lambda numeric: ' class="num"' if numeric else ""
            head = "".join(f"<th{cls(n)}>{html.escape(h)}</th>" for h, n in zip(block.header, block.numeric))
            rows = "".join("<tr>" + "".join(f"<td{cls(n)}>{_html_inline(c)}</td>" for c, n in zip(row, block.numeric))
                           + "</tr>" for row in block.rows)
            body.append(f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif isinstance(block, DisplayMath):
            body.append(_html_math(block.latex, display=True))
        elif isinstance(block, Alert):
            body.append(f'<div class="alert" role="alert">{_html_inline(block.parts)}</div>')
        elif isinstance(block, FigureBlock):
            data = base64.b64encode((out_dir / block.path).read_bytes()).decode("ascii")
            caption = html.escape(block.caption)
            body.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{caption}</figcaption></figure>")
        elif isinstance(block, CodeBlock):
            body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(TITLE)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------- reading results.json

_THEORY_FIELDS = ("status", "general_m", "statement_latex", "derived_latex", "slack_latex", "assumptions",
                  "equality", "evidence", "concrete_m_checked", "numeric_crosscheck", "counterexample")
_KNOWN_TOP_LEVEL = ("schema", "config", "environment", "theory", "checks", "training", "training_summary",
                    "timings")


def _theory_claims(results: dict) -> dict[tuple[str, str], dict]:
    """(normaliser, claim) -> the theory record, for every normaliser and claim present."""
    return {(normaliser, claim): record
            for normaliser, claims in (results.get("theory") or {}).items() if isinstance(claims, dict)
            for claim, record in claims.items() if isinstance(record, dict)}


def _check_groups(results: dict) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in results.get("checks") or []:
        groups.setdefault((record.get("normaliser", "?"), record.get("claim", "?")), []).append(record)
    return groups


def _theory_status(theory: dict, checks: list[dict]) -> str:
    if theory.get("status"):
        return theory["status"]
    return next((r["status"] for r in checks if r.get("status")), "not derived")


def _aggregate(checks: list[dict]) -> dict:
    """Totals over check records: rows, violations, worst ratio (max), median of per-record medians."""
    numbers = lambda key: [float(r[key]) for r in checks if isinstance(r.get(key), (int, float))]
    worst, medians = numbers("worst_ratio"), numbers("median_ratio")
    return {"n_checked": sum(int(r.get("n_checked") or 0) for r in checks),
            "n_violations": sum(int(r.get("n_violations") or 0) for r in checks),
            "worst_ratio": max(worst) if worst else None,
            "median_ratio": statistics.median(medians) if medians else None}


def _first_line(text) -> str:
    return str(text).strip().splitlines()[0] if text and str(text).strip() else "—"


class _Verdicts:
    """Everything the sections need about claims: theory records, check records, checks files."""

    def __init__(self, results: dict, out_dir: Path):
        self.theory = _theory_claims(results)
        self.checks = _check_groups(results)
        self.files = {(n, c): p for n, c, p in figures.checks_files(out_dir)}
        self.pairs = sorted(set(self.theory) | set(self.checks) | set(self.files))

    def status(self, pair) -> str:
        return _theory_status(self.theory.get(pair, {}), self.checks.get(pair, []))

    def totals(self, pair) -> dict:
        return _aggregate(self.checks.get(pair, []))

    def is_bug(self, pair) -> bool:
        """A claim proved in theory that the measurements violate: a bug in derivation or measurement."""
        return self.status(pair) == "proved" and self.totals(pair)["n_violations"] > 0

    def bug_alert(self, pair) -> Alert:
        normaliser, claim = pair
        return Alert(parts(f"BUG: {claim} ({normaliser}) is proved in theory, yet "
                           f"{fmt_count(self.totals(pair)['n_violations'])} measured rows violate it "
                           f"(worst ratio {fmt_ratio(self.totals(pair)['worst_ratio'])}). Either the derivation, "
                           "the measurement or the tolerance is wrong; do not trust these results until it is found."))


# ---------------------------------------------------------------- sections


def _runs_phrase(config: dict, training: list[dict]) -> str:
    if not training:
        return "trained no networks"
    model = (config.get("model") or {}).get("name", "model not recorded")
    data = (config.get("data") or {}).get("name", "data set not recorded")
    norms = sorted({str(r.get("norm")) for r in training})
    lrs = sorted({float(r["lr"]) for r in training if "lr" in r})
    seeds = sorted({r.get("seed") for r in training}, key=str)
    return (f"trained {len(training)} networks ({model} on {data}; norms {', '.join(norms)}; learning rates "
            f"{', '.join(f'{lr:g}' for lr in lrs)}; seeds {', '.join(map(str, seeds))})")


def _summary_paragraph(results: dict, verdicts: _Verdicts) -> list[Block]:
    statuses = [verdicts.status(p) for p in verdicts.theory]
    counted = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    normalisers = sorted({n for n, _ in verdicts.theory})
    derived = (f"derived {len(verdicts.theory)} claim(s) symbolically for normaliser(s) {', '.join(normalisers)} "
               f"({counted})") if verdicts.theory else "derived no claims symbolically"
    totals = _aggregate(results.get("checks") or [])
    runs = _runs_phrase(results.get("config") or {}, results.get("training") or [])
    bugs = [p for p in verdicts.pairs if verdicts.is_bug(p)]
    verdict = (f"{len(bugs)} claim(s) proved in theory are violated by the measurements; see the warnings below."
               if bugs else "No claim proved in theory is violated by the measurements.")
    return [Heading(1, TITLE), Paragraph(parts(
        "This report checks the claims of Santurkar, Tsipras, Ilyas and Mądry (NeurIPS 2018, arXiv:1805.11604). "
        f"The run {derived}; compared {fmt_count(totals['n_checked'])} measured "
        f"gradient rows in {len(results.get('checks') or [])} check record(s) against the derived bounds "
        f"({fmt_count(totals['n_violations'])} violations); and {runs}. {verdict}"))]


def _summary_section(verdicts: _Verdicts) -> list[Block]:
    rows = []
    for pair in verdicts.pairs:
        totals, measured = verdicts.totals(pair), bool(verdicts.checks.get(pair))
        rows.append([Code(pair[0]), Code(pair[1]), Status(verdicts.status(pair)),
                     _first_line(verdicts.theory.get(pair, {}).get("evidence")),
                     fmt_count(len(verdicts.checks.get(pair, []))),
                     fmt_count(totals["n_checked"]) if measured else "not measured",
                     fmt_count(totals["n_violations"]) if measured else "—",
                     fmt_ratio(totals["worst_ratio"]), fmt_ratio(totals["median_ratio"])])
    blocks: list[Block] = [Heading(2, "Summary table"), table(
        ["normaliser", "claim", "theory status", "evidence", "check records", "rows checked", "violations",
         "worst ratio", "median ratio"], rows, [False] * 4 + [True] * 5) if rows
        else Paragraph(parts("results.json records no claims and no checks."))]
    blocks.append(Paragraph(parts(
        "Ratio = measured left-hand side / bound right-hand side over rows whose bound is positive; "
        "a violation is a row with LHS > RHS + tol. Worst ratio is the largest over all check records of the "
        "claim; median ratio is the median of the per-record medians.")))
    return blocks + [verdicts.bug_alert(p) for p in verdicts.pairs if verdicts.is_bug(p)]


def _theory_claim(pair, record: dict) -> list[Block]:
    normaliser, claim = pair
    facts = [Status(record.get("status", "not derived"))]
    if "general_m" in record:
        facts.append(f"; established for general m: {'yes' if record['general_m'] else 'no'}")
    if record.get("concrete_m_checked"):
        facts.append(f"; concrete m checked: {', '.join(map(str, record['concrete_m_checked']))}")
    blocks: list[Block] = [Heading(3, f"{claim} ({normaliser})"), Paragraph(parts("Status: ", *facts))]
    for key, label in (("statement_latex", "Statement"), ("derived_latex", "Derived closed form"),
                       ("slack_latex", "Slack")):
        if record.get(key):
            blocks += [Paragraph(parts(Strong(f"{label}:"))), DisplayMath(record[key])]
    if record.get("assumptions"):
        blocks += [Paragraph(parts(Strong("Assumptions:"))),
                   Bullets(tuple(parts(Math(a)) for a in record["assumptions"]))]
    for key, label in (("equality", "Equality"), ("evidence", "Evidence")):
        if record.get(key):
            blocks.append(Paragraph(parts(Strong(f"{label}:"), " " + str(record[key]))))
    if isinstance(record.get("numeric_crosscheck"), dict):
        check = record["numeric_crosscheck"]
        blocks.append(Paragraph(parts(Strong("Numeric cross-check:"), " " + ", ".join(
            f"{k} = {fmt_value(v)}" for k, v in check.items()))))
    if isinstance(record.get("counterexample"), dict):
        blocks += [Paragraph(parts(Strong("Counterexample:"))), table(
            ["field", "value"], [[k, Code(fmt_value(v))] for k, v in record["counterexample"].items()])]
    extra = {k: v for k, v in record.items() if k not in _THEORY_FIELDS}
    if extra:
        blocks += [Paragraph(parts(Strong("Other recorded fields:"))),
                   table(["field", "value"], [[k, fmt_value(v)] for k, v in extra.items()])]
    return blocks


def _theory_section(verdicts: _Verdicts) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Theory"), Paragraph(parts(
        "Each claim as derived symbolically: its statement, the assumptions under which it was proved, the "
        "derived closed form and slack, when equality holds, and for refuted claims a counterexample."))]
    for pair in sorted(verdicts.theory):
        blocks += _theory_claim(pair, verdicts.theory[pair])
    return blocks


def _check_records_table(checks: list[dict]) -> Table:
    return table(["model", "layer", "lr", "rows checked", "violations", "worst ratio", "median ratio", "status"],
                 [[str(r.get("model", "—")), fmt_value(r.get("layer")), fmt_value(r.get("lr")),
                   fmt_count(r.get("n_checked")), fmt_count(r.get("n_violations")), fmt_ratio(r.get("worst_ratio")),
                   fmt_ratio(r.get("median_ratio")), Status(str(r.get("status", "—")))] for r in checks],
                 [False, True, True, True, True, True, True, False])


def _check_figures(out_dir: Path, pair) -> list[Block]:
    normaliser, claim = pair
    rel = lambda kind: figures.check_figure_path(out_dir, kind, normaliser, claim).relative_to(out_dir).as_posix()
    return [
        FigureBlock(rel("bound_scatter"), (
            f"Measured LHS against bound RHS for {claim} ({normaliser}) on log–log axes, one panel per layer; "
            "colour is the training step, the dashed line is LHS = RHS and red crosses mark violations "
            "(LHS > RHS + tol). Rows with RHS ≤ 0 cannot be drawn on log axes; each panel states how many there "
            f"are and how many of them are violations. At most {figures.MAX_POINTS_PER_PANEL:,} points per panel "
            f"are drawn, a uniformly random subset with fixed seed {figures.SUBSAMPLE_SEED}; every violation is "
            "drawn (up to the same cap).")),
        FigureBlock(rel("ratio_histogram"), (
            f"Distribution of LHS / RHS for {claim} ({normaliser}) over rows with RHS > 0, one panel per layer; "
            "the dashed line marks ratio 1 (the bound met with equality). Where every ratio of a panel lies "
            "within 0.1% of 1 the panel shows LHS / RHS − 1 instead.")),
    ]


def _measured_section(results: dict, verdicts: _Verdicts, out_dir: Path) -> list[Block]:
    batch = ((results.get("config") or {}).get("train") or {}).get("batch_size")
    blocks: list[Block] = [Heading(2, "Measured checks"), Paragraph(parts(
        "Every bound is evaluated on gradients captured in the training-mode network, per layer and channel, "
        "at the capture steps of each run. For convolutional layers the batch of a channel is all "
        "(sample, position) pairs, as PyTorch's BatchNorm1d normalises, so m = batch_size × length"
        + (f" (batch_size = {batch}; length is that layer's feature length)." if batch else "."))),
    ]
    tolerances = sorted({str(r["tolerance"]) for r in results.get("checks") or [] if r.get("tolerance")})
    if tolerances:
        blocks += [Paragraph(parts(Strong("Tolerance in force:"))), Bullets(tuple(parts(t) for t in tolerances))]
    for pair in verdicts.pairs:
        checks = verdicts.checks.get(pair, [])
        if not checks and pair not in verdicts.files:
            continue
        status, totals = verdicts.status(pair), verdicts.totals(pair)
        blocks += [Heading(3, f"{pair[1]} ({pair[0]})"), Paragraph(parts(
            "Theory status: ", Status(status), f"; {fmt_count(totals['n_checked'])} rows checked, "
            f"{fmt_count(totals['n_violations'])} violations."))]
        if checks:
            blocks.append(_check_records_table(checks))
        if verdicts.is_bug(pair):
            blocks.append(verdicts.bug_alert(pair))
        elif status == "refuted" and checks:
            blocks.append(Paragraph(parts(
                f"The measurements also violate this refuted statement ({fmt_count(totals['n_violations'])} rows)."
                if totals["n_violations"] else
                "No measured row violates this refuted statement: its refutation rests on the symbolic "
                "counterexample, whose configuration did not arise in these runs.")))
        if pair in verdicts.files:
            blocks += _check_figures(out_dir, pair)
    return blocks


def _reached(training: list[dict], norm: str, lr: float) -> tuple[int, int]:
    """(runs that reached the accuracy threshold, runs) for one setting, from the per-run records."""
    runs = [r for r in training if r.get("norm") == norm and float(r.get("lr", math.nan)) == lr]
    return sum(r.get("steps_to_threshold") is not None for r in runs), len(runs)


def _comparison_sentences(summary_rows: list[dict], training: list[dict], threshold) -> list[tuple]:
    """For each lr, every normaliser against 'none', in numbers taken from training_summary."""
    by_setting = {(r.get("norm"), float(r["lr"])): r for r in summary_rows if "lr" in r}

    def describe(row: dict) -> str:
        reached, runs = _reached(training, row["norm"], float(row["lr"]))
        steps = row.get("steps_to_threshold_mean")
        return (f"reached {threshold:g} accuracy in {reached}/{runs} runs"
                + (f" after {steps:,.0f} steps on average" if steps is not None else "")
                + f", ended at training accuracy "
                f"{fmt_accuracy(row.get('final_train_acc_mean'), row.get('final_train_acc_std'))} and test accuracy "
                f"{fmt_accuracy(row.get('final_test_acc_mean'), row.get('final_test_acc_std'))}, and diverged in "
                f"{row.get('n_diverged', '?')} of {row.get('n_seeds', '?')} seeds")

    sentences = []
    for lr in sorted({lr for _, lr in by_setting}):
        baseline = by_setting.get(("none", lr))
        for (norm, row_lr), row in sorted(by_setting.items(), key=lambda kv: str(kv[0][0])):
            if row_lr != lr or norm == "none":
                continue
            text = f"At lr {lr:g}, {norm} {describe(row)}; "
            text += f"without normalisation the network {describe(baseline)}." if baseline else \
                "there is no unnormalised run at this lr to compare with."
            sentences.append(parts(text))
    return sentences


def _training_section(results: dict, out_dir: Path, curves: list[Path]) -> list[Block]:
    summary = results.get("training_summary") or {}
    rows, training = summary.get("rows") or [], results.get("training") or []
    threshold = summary.get("threshold")
    blocks: list[Block] = [Heading(2, "Training (paper Fig. 1)")]
    if rows:
        blocks.append(table(
            ["norm", "lr", "seeds", f"steps to {fmt_value(threshold)} accuracy (mean)", "reached (runs)",
             "final train acc.", "final test acc.", "diverged"],
            [[Code(str(r.get("norm"))), fmt_value(r.get("lr")), fmt_count(r.get("n_seeds")),
              fmt_count(r.get("steps_to_threshold_mean")),
              "{}/{}".format(*_reached(training, r.get("norm"), float(r.get("lr", math.nan)))),
              fmt_accuracy(r.get("final_train_acc_mean"), r.get("final_train_acc_std")),
              fmt_accuracy(r.get("final_test_acc_mean"), r.get("final_test_acc_std")), fmt_count(r.get("n_diverged"))]
             for r in rows], [False] + [True] * 7))
        if threshold is not None:
            blocks.append(Bullets(tuple(_comparison_sentences(rows, training, threshold))))
    if training:
        blocks += [Paragraph(parts(Strong("Runs:"))), table(
            ["run", "norm", "lr", "seed", "steps done", "diverged at", "steps to threshold", "final train acc.",
             "final test acc.", "wall time"],
            [[Code(str(r.get("run_id"))), str(r.get("norm")), fmt_value(r.get("lr")), fmt_value(r.get("seed")),
              fmt_count(r.get("steps_done")), fmt_count(r.get("diverged_at")), fmt_count(r.get("steps_to_threshold")),
              fmt_accuracy(r.get("final_train_acc")), fmt_accuracy(r.get("final_test_acc")),
              f"{r['wall_s']:,.1f} s" if isinstance(r.get("wall_s"), (int, float)) else "—"] for r in training],
            [False, False] + [True] * 8)]
    for path in curves:
        blocks.append(FigureBlock(path.relative_to(out_dir).as_posix(), (
            "Training accuracy (top) and training loss (bottom, log scale) against SGD step, one column per "
            "learning rate; colour is the normalisation. Lines are the mean over seeds, shaded bands the min–max "
            "over seeds, dots the test accuracy (mean over seeds), crosses the step at which a run diverged "
            "(non-finite loss).")))
    return blocks


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        return [item for key, sub in value.items() for item in _flatten(sub, f"{prefix}{key}.")]
    return [(prefix[:-1], fmt_value(value))]


def _environment_section(results: dict, out_dir: Path) -> list[Block]:
    config = results.get("config") or {}
    preset = config.get("preset")
    blocks: list[Block] = [Heading(2, "Environment and reproduction")]
    environment = results.get("environment") or {}
    blocks.append(table(["setting", "value"], [[k, Code(v)] for k, v in _flatten(environment)]) if environment
                  else Paragraph(parts("results.json records no environment.")))
    timings = results.get("timings") or {}
    if timings:
        blocks += [Paragraph(parts(Strong("Timings:"))), table(["stage", "wall time"], [
            [k.removesuffix("_s"), f"{v:,.1f} s" if isinstance(v, (int, float)) else fmt_value(v)]
            for k, v in timings.items()], [False, True])]
    blocks += [Paragraph(parts(Strong("Resolved configuration:"))),
               table(["key", "value"], [[k, Code(v)] for k, v in _flatten(config)])]
    blocks += [Paragraph(parts("Reproduce this report with:")),
               CodeBlock(f"python -m verify all --preset {preset or '<preset>'} --out {out_dir}")]
    if not preset:
        blocks.append(Paragraph(parts("The preset name is not recorded in the configuration; use the preset "
                                      "whose values match the resolved configuration above.")))
    unknown = sorted(k for k in results if k not in _KNOWN_TOP_LEVEL)
    if unknown:
        names = [item for k in unknown for item in (Text(", "), Code(k))][1:]
        blocks.append(Paragraph(parts("results.json also holds fields this report does not render: ", *names)))
    return blocks


# ---------------------------------------------------------------- entry point


def build_document(results: dict, out_dir: Path, figure_paths: list[Path]) -> list[Block]:
    """The report as blocks; figures must already exist under DIR/figures."""
    verdicts = _Verdicts(results, out_dir)
    curves = [p for p in figure_paths if p == figures.training_curves_path(out_dir)]
    return (_summary_paragraph(results, verdicts) + _summary_section(verdicts) + _theory_section(verdicts)
            + _measured_section(results, verdicts, out_dir) + _training_section(results, out_dir, curves)
            + _environment_section(results, out_dir))


def write_report(out_dir: Path) -> dict[str, Path]:
    """Draw the figures of DIR, then write DIR/report.md and DIR/report.html from DIR/results.json."""
    out_dir = Path(out_dir)
    results = json.loads((out_dir / "results.json").read_text())
    blocks = build_document(results, out_dir, figures.draw_all(out_dir))
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["md"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(render_html(blocks, out_dir), encoding="utf-8")
    return paths
