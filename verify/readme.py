"""Rewrite the generated blocks of README.md from DIR's outputs, so their figures come from a command.

    python -m verify readme --out reports/default

replaces everything between the `<!-- results:start -->` and `<!-- results:end -->` markers from
DIR/results.json (the report's headline: summary sentences, claims table, statement matrix; the rest is linked), and between `<!-- bench:start -->` and `<!-- bench:end -->` from DIR/bench.json
(`python -m verify bench`) when that file exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from empirics.storage import write_atomic
from verify.bench import describe, table_rows
from verify.document import Bullets, Code, Link, Paragraph, Strong, parts, render_markdown
from verify.report.claims import READING, claims_table
from verify.report.statements import matrix_section
from verify.summary import headline_lines

START, END = "<!-- results:start -->", "<!-- results:end -->"
BENCH_START, BENCH_END = "<!-- bench:start -->", "<!-- bench:end -->"


def results_block(results: dict, out_dir: str, report_s: float | None = None) -> str:
    """The headline of DIR's report: its three summary sentences, the claims table and the statement matrix,
    rendered by the report's own code (`verify.summary` and `verify.report`), and a link to the rest."""
    timings = results.get("timings") or {}
    environment = results.get("environment") or {}
    drawing = f"; drawing the figures and writing the report took {report_s:.0f} s more" if report_s else ""
    command = f"python -m verify all --preset {(results.get('config') or {}).get('preset', '?')} --out {out_dir}"
    produced = parts("Produced by ", Code(command), " at revision ", Code(str(environment.get("git_revision", "?"))),
                     f" ({environment.get('device', '?')}, torch {environment.get('torch', '?')}); "
                     f"{timings.get('total_s', float('nan')):.0f} s from start to results.json on this machine "
                     f"(derivations {timings.get('theory_s', float('nan')):.1f} s"
                     f"{', beside the training' if timings.get('theory_beside_runs') else ''}, cached or not as found"
                     f"{drawing}).")
    blocks = [Paragraph(produced), Bullets(tuple(parts(line) for line in headline_lines(results)))]
    if results.get("claims"):
        blocks += [Paragraph(parts(Strong("The paper's empirical claims."), " " + READING)), claims_table(results)]
    blocks += matrix_section(results)[1:]  # the matrix's legend and table, under the README's own heading
    blocks.append(Paragraph(parts("Bound tightness, the derivations, the per-claim figures and every run: ",
                                  Link("the full report", f"{out_dir}/report.md"), f" (the self-contained page, "
                                  f"{out_dir}/report.html, is written by the same command; not kept in git).")))
    return "\n".join([START, "", render_markdown(blocks).rstrip("\n"), "", END])


def bench_markers(bench: dict) -> tuple[str, str]:
    """The README block of a bench.json: one for the CPU figures, one for the GPU's."""
    if bench["machine"]["device"] == "cuda":
        return "<!-- bench-cuda:start -->", "<!-- bench-cuda:end -->"
    return BENCH_START, BENCH_END


def bench_block(bench: dict, out_dir: str) -> str:
    """The README's performance table from a bench.json (`verify.bench`)."""
    device = bench["machine"]["device"]
    start, end = bench_markers(bench)
    lines = [start, "", f"Produced by `python -m verify bench --size {bench['size']} --device {device} "
             f"--out {out_dir}`: {describe(bench)}. Ratios are to the pass each figure fundamentally needs "
             "(see `verify/bench.py`); IQR is over the repetitions.", "",
             "| figure | value | IQR | target | met |", "|---|---:|---:|---:|---|"]
    lines += [f"| `{name}` | {value} | {spread} | {target} | {'**no**' if met == 'no' else met} |"
              for name, value, spread, target, met in table_rows(bench)]
    sync = bench["sync_in_plain_step"]
    if sync["checked"]:
        lines += ["", f"Host-device synchronisations inside a plain training step: {sync['synchronisations']}."]
    lines += ["", end]
    return "\n".join(lines)


def _replace_block(text: str, start: str, end: str, block: str, readme: Path) -> str:
    if start not in text or end not in text:
        raise FileNotFoundError(f"{readme} has no {start} ... {end} block; add the two markers where it goes")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def update_readme(out_dir: Path, readme: Path) -> None:
    """Regenerate the results block from DIR/results.json and the bench block of DIR/bench.json's device,
    whichever of the two DIR holds."""
    results_path, bench_path = out_dir / "results.json", out_dir / "bench.json"
    if not results_path.exists() and not bench_path.exists():
        raise FileNotFoundError(f"{out_dir} holds neither results.json nor bench.json; run `python -m verify all` "
                                f"or `python -m verify bench` with --out {out_dir} first")
    text = readme.read_text()
    if results_path.exists():
        timings_path = out_dir / "timings.json"  # report_s is recorded after results.json is written
        report_s = json.loads(timings_path.read_text()).get("report_s") if timings_path.exists() else None
        block = results_block(json.loads(results_path.read_text()), str(out_dir), report_s)
        text = _replace_block(text, START, END, block, readme)
    if bench_path.exists():
        bench = json.loads(bench_path.read_text())
        text = _replace_block(text, *bench_markers(bench), bench_block(bench, str(out_dir)), readme)
    write_atomic(readme, lambda file: file.write(text.encode()))
