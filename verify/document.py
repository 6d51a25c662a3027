"""One document model (headings, paragraphs, tables, LaTeX, figures) and its two renderers.

`render_markdown` and `render_html` take the same list of blocks, so the Markdown and the HTML
report cannot drift apart. The HTML needs nothing outside itself: CSS inline, figures as base64 PNG
data URIs, LaTeX drawn offline by matplotlib's mathtext (shown as source where mathtext cannot
parse it).
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import functools
import html
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib import mathtext
from matplotlib.font_manager import FontProperties

from theory.cache import cached_by_key
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
class StatusBadge:
    """A status or verdict ('proved', 'refuted', 'reproduced', ...), coloured in HTML by `status`; shows
    `label` (default: the status itself). In HTML only, `note` shows on hover and the badge links to the
    anchor `target` (Markdown tables stay short, and GitHub shows no hover text)."""

    status: str
    label: str = ""
    note: str = ""
    target: str = ""

    @property
    def text(self) -> str:
        return self.label or self.status


@dataclass(frozen=True)
class Link:
    text: str
    target: str


Inline = Text | Code | Strong | Math | StatusBadge | Link


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
    kind: str = ""  # an HTML class ("matrix": compact, centred cells)


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
class FigureGrid:
    """Small figures side by side in HTML (one after the other in Markdown); `anchor` names the grid."""

    figures: tuple[FigureBlock, ...]
    anchor: str = ""


@dataclass(frozen=True)
class CodeBlock:
    text: str


@dataclass(frozen=True)
class Details:
    """Blocks collapsed under a one-line summary (`<details>` in HTML and in GitHub Markdown)."""

    summary: str
    blocks: tuple  # of Block


Block = Heading | Paragraph | Bullets | Table | DisplayMath | Alert | FigureBlock | FigureGrid | CodeBlock | Details


def table(header: list[str], rows: list[list], numeric: list[bool] | None = None, kind: str = "") -> Table:
    cell = lambda c: parts(c) if isinstance(c, (str, Text, Code, Strong, Math, StatusBadge, Link)) else parts(*c)
    return Table(tuple(header), tuple(tuple(cell(c) for c in row) for row in rows),
                 tuple(numeric or [False] * len(header)), kind)


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
        elif isinstance(item, Strong):
            out.append(f"**{_md_text(item.text)}**")
        elif isinstance(item, StatusBadge):
            out.append(f"**{_md_text(item.text)}**")
        elif isinstance(item, Math):
            out.append(f"${item.latex}$")
        elif isinstance(item, Link):
            out.append(f"[{_md_text(item.text)}]({item.target})")
    return "".join(out)


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_md_blocks(blocks)) + "\n"


def _md_figure(block: FigureBlock) -> str:
    alt = _md_text(Path(block.path).stem)  # the caption follows; an alt of the same words is noise
    return f"![{alt}]({block.path})\n\n*{_md_text(block.caption)}*"


def _md_blocks(blocks) -> list[str]:
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
            out.append(_md_figure(block))
        elif isinstance(block, FigureGrid):
            out += [_md_figure(figure) for figure in block.figures]
        elif isinstance(block, CodeBlock):
            out.append(f"```\n{block.text}\n```")
        elif isinstance(block, Details):  # GitHub renders Markdown inside <details> after a blank line
            out += [f"<details>\n<summary>{html.escape(block.summary)}</summary>", *_md_blocks(block.blocks),
                    "</details>"]
    return out


# ---------------------------------------------------------------- HTML rendering

# Spellings mathtext lacks, rewritten to ones it has (same meaning).
_MATHTEXT_REWRITES = ((r"\\le(?![A-Za-z])", r"\\leq"), (r"\\ge(?![A-Za-z])", r"\\geq"),
                      (r"\\ne(?![A-Za-z])", r"\\neq"), (r"\\[lr]Vert(?![A-Za-z])", r"\\Vert"),
                      (r"\\tfrac(?![A-Za-z])", r"\\frac"))


@functools.cache
def mathtext_svg(latex: str, size: float) -> str | None:
    """Base64 SVG of `latex` drawn by mathtext, or None where mathtext cannot draw it faithfully.

    Kept on disk too (`theory.cache`, keyed by matplotlib's version, the source and the size): mathtext's parser
    takes ~20 ms a formula, ~5 s of CPU for the default report's 234, beside the figures' drawing processes."""
    source = latex.strip()
    if not source:
        return None
    for pattern, replacement in _MATHTEXT_REWRITES:
        source = re.sub(pattern, replacement, source)
    return cached_by_key("mathtext", f"{matplotlib.__version__}\n{size!r}\n{source}", lambda: _draw_math(source, size))


def _draw_math(source: str, size: float) -> str | None:
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a missing glyph only warns; its box would misstate the formula
            mathtext.math_to_image(f"${source}$", buffer, prop=FontProperties(size=size), format="svg")
    except Exception:  # parse errors are ValueError, unsupported constructs vary; the source is shown instead
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# The formulas of one render_html call: base64 SVG -> CSS class. A report repeats the same formula for every
# normaliser (389 formulas, 61 distinct, in the default report), so each SVG is embedded once, in a style rule.
_MATH_CLASSES: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("math_classes")


def _svg_size(svg: str) -> tuple[str, str]:
    """The width and height attributes of a base64 SVG document (mathtext writes them in pt)."""
    head = base64.b64decode(svg)[:2000].decode("utf-8", "replace")
    size = re.search(r'<svg[^>]*?width="([^"]+)"[^>]*?height="([^"]+)"', head, re.S)
    return (size.group(1), size.group(2)) if size else ("auto", "auto")


def _math_size(display: bool) -> float:
    return 16.0 if display else 12.0


def draw_formulas(blocks) -> int:
    """Draw (and cache, `mathtext_svg`) every formula of `blocks` as `render_html` will, without rendering
    anything else (figures need not exist yet); returns how many formulas it met."""
    count = 0

    def walk(item) -> None:
        nonlocal count
        if isinstance(item, (Math, DisplayMath)):
            mathtext_svg(item.latex, _math_size(isinstance(item, DisplayMath)))
            count += 1
        elif dataclasses.is_dataclass(item):
            for field in dataclasses.fields(item):
                walk(getattr(item, field.name))
        elif isinstance(item, (list, tuple)):
            for element in item:
                walk(element)

    walk(blocks)
    return count


def _html_math(latex: str, display: bool) -> str:
    svg = mathtext_svg(latex, _math_size(display))
    if svg is None:
        source = html.escape(latex)
        return (f'<pre class="latex" title="LaTeX source (mathtext cannot draw it)"><code>{source}</code></pre>'
                if display else f'<code class="latex" title="LaTeX source">{source}</code>')
    classes = _MATH_CLASSES.get()
    name = classes.setdefault(svg, f"m{len(classes)}")
    width, height = _svg_size(svg)
    img = (f'<span class="math {name}" role="img" aria-label="{html.escape(latex)}" title="{html.escape(latex)}" '
           f'style="width:{width};height:{height}"></span>')
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
        elif isinstance(item, StatusBadge):
            kind = re.sub(r"[^a-z0-9-]", "", item.status.lower())
            title = f' title="{html.escape(item.note)}"' if item.note else ""
            # a break opportunity after each "/" (violations/rows), taken only where a narrow page needs it
            badge = f'<span class="status status-{kind}"{title}>{html.escape(item.text).replace("/", "/<wbr>")}</span>'
            out.append(f'<a class="badge-link" href="#{html.escape(item.target)}">{badge}</a>' if item.target
                       else badge)
        elif isinstance(item, Math):
            out.append(_html_math(item.latex, display=False))
        elif isinstance(item, Link):
            out.append(f'<a href="{html.escape(item.target)}">{html.escape(item.text)}</a>')
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1150px;
 overflow-wrap:break-word;
 margin:1em auto;padding:0 1.2em;line-height:1.45;color:#1f2328;background:#fff}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em;font-size:1.6em;margin:.4em 0}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em;font-size:1.3em}
h3{margin-top:1.8em}
.table-wrap{margin:.8em 0;max-width:100%}
table{border-collapse:collapse;font-size:.88em;max-width:100%}
th,td{border:1px solid #d0d7de;padding:.3em .65em;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f3f6;text-align:left;overflow-wrap:normal}
tbody tr:nth-child(even) td{background:#f8f9fa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.matrix{font-size:.8em}
table.claims{font-size:.82em}
table.claims td:nth-child(4),table.claims td:nth-child(5){white-space:nowrap}
table.matrix td,table.matrix th{padding:.2em .45em;text-align:center;white-space:nowrap;overflow-wrap:normal}
@media (max-width:1000px){table.matrix{font-size:.74em}table.matrix td,table.matrix td .status{white-space:normal}
 table.matrix td,table.matrix th{padding:.2em .25em}table.matrix td .status{padding:0 .3em}}
table.matrix td:first-child{text-align:left}
a.badge-link{text-decoration:none}
details{margin:.6em 0;border:1px solid #d0d7de;border-radius:6px;padding:.3em .9em}
details>summary{cursor:pointer;font-weight:600;padding:.2em 0}
details[open]>summary{border-bottom:1px solid #d0d7de;margin-bottom:.5em}
.figure-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.6em}
.figure-grid figure{margin:.3em 0}
.figure-grid figcaption{font-size:.8em}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;background:#f3f4f6;
 padding:.05em .3em;border-radius:4px}
pre{background:#f6f8fa;padding:.8em 1em;white-space:pre-wrap;overflow-wrap:anywhere;border-radius:6px}
pre code{background:none;padding:0}
.display-math{text-align:center;margin:.9em 0;max-width:100%}
.math{display:inline-block;vertical-align:middle;background-repeat:no-repeat;background-size:contain;
 background-position:center;max-width:100%}
figure{margin:1.4em 0;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid #e5e7eb}
figcaption{font-size:.88em;color:#57606a;max-width:60em;margin:.4em auto 0;text-align:left}
.alert{border-left:6px solid #cf222e;background:#ffebe9;padding:.7em 1em;margin:1em 0;font-weight:600;color:#82071e}
.status{display:inline-block;padding:0 .55em;border-radius:1em;font-weight:600;font-size:.9em;background:#eaeef2;
 white-space:nowrap;overflow-wrap:normal}
.status-proved,.status-holds,.status-pass{background:#dafbe1;color:#116329}
.status-refuted,.status-violated,.status-fail,.status-notreproduced{background:#ffebe9;color:#a40e26}
.status-reproduced{background:#dafbe1;color:#116329}
.status-mixed,.status-conditional,.status-inconclusive{background:#fff8c5;color:#7d4e00}
.status-checked{background:#ddf4ff;color:#0a3069}
.status-notmeasured{background:#eaeef2;color:#57606a}
"""


def render_html(blocks: list[Block], out_dir: Path) -> str:
    token = _MATH_CLASSES.set({})
    try:
        body = _html_body(blocks, out_dir)
        formulas = "".join(f'.{name}{{background-image:url("data:image/svg+xml;base64,{svg}")}}'
                           for svg, name in _MATH_CLASSES.get().items())
    finally:
        _MATH_CLASSES.reset(token)
    return _html_page(body, formulas)


def _html_figure(block: FigureBlock, out_dir: Path) -> str:
    data = base64.b64encode((out_dir / block.path).read_bytes()).decode("ascii")
    caption = html.escape(block.caption)
    return f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'


def _html_body(blocks: list[Block], out_dir: Path, seen: dict[str, int] | None = None) -> list[str]:
    body, seen = [], {} if seen is None else seen
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
            kind = f' class="{html.escape(block.kind)}"' if block.kind else ""
            body.append(f'<div class="table-wrap"><table{kind}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
                        "</table></div>")
        elif isinstance(block, DisplayMath):
            body.append(_html_math(block.latex, display=True))
        elif isinstance(block, Alert):
            body.append(f'<div class="alert" role="alert">{_html_inline(block.parts)}</div>')
        elif isinstance(block, FigureBlock):
            body.append(_html_figure(block, out_dir))
        elif isinstance(block, FigureGrid):
            anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
            body.append(f'<div class="figure-grid"{anchor}>'
                        + "".join(_html_figure(f, out_dir) for f in block.figures) + "</div>")
        elif isinstance(block, CodeBlock):
            body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Details):
            body.append(f"<details><summary>{html.escape(block.summary)}</summary>\n"
                        + "\n".join(_html_body(list(block.blocks), out_dir, seen)) + "\n</details>")
    return body


def _html_page(body: list[str], formulas: str) -> str:
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(TITLE)}</title><style>{_CSS}{formulas}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
