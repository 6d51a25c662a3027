"""Rewrite the generated blocks of README.md from DIR's outputs, so their figures come from a command.

    python -m verify readme --out reports/default

replaces everything between the `<!-- results:start -->` and `<!-- results:end -->` markers from
DIR/results.json, and between `<!-- bench:start -->` and `<!-- bench:end -->` from DIR/bench.json
(`python -m verify bench`) when that file exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from empirics.storage import write_atomic
from verify.bench import describe, table_rows
from verify.summary import claim_rows

START, END = "<!-- results:start -->", "<!-- results:end -->"
BENCH_START, BENCH_END = "<!-- bench:start -->", "<!-- bench:end -->"


def _ratio(value) -> str:
    if value is None:
        return "—"
    return f"1 {'+' if value >= 1 else '−'} {abs(value - 1):.2e}" if abs(value - 1) < 1e-3 else f"{value:.4g}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def claims_lines(results: dict) -> list[str]:
    """The empirical-claims table, from the one summary the report uses too (`verify.summary`)."""
    rows = claim_rows(results)
    if not rows:
        return []
    lines = ["", "Empirical claims of the paper (ratios: geometric mean over paired seeds [95% bootstrap interval]; "
             "criteria in `verify/effects.py` and the report):", "",
             "| claim | verdict | at matched loss | early window | whole run | paper's side | the paper |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['id']}` | **{r['verdict']}** | {_cell(r['matched'])} | {_cell(r['early'])} | "
                     f"{_cell(r['whole'])} | {_cell(r['threshold'])} | {_cell(r['paper'])} ({_cell(r['source'])}) |")
    return lines


def results_block(results: dict, out_dir: str, report_s: float | None = None) -> str:
    timings = results["timings"]
    drawing = f"; drawing the figures and writing the report took {report_s:.0f} s more" if report_s else ""
    lines = [START, "", f"Produced by `python -m verify all --preset {results['config'].get('preset', '?')} "
             f"--out {out_dir}` at revision `{results['environment']['git_revision']}` "
             f"({results['environment']['device']}, torch {results['environment']['torch']}); "
             f"{timings.get('total_s', float('nan')):.0f} s from start to results.json on this machine "
             f"(derivations {timings.get('theory_s', float('nan')):.1f} s, cached or not as found{drawing}).", "",
             "| normaliser | claim | symbolic status | general m | evidence | checked rows | violations "
             "| worst LHS/RHS | median LHS/RHS |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for normaliser, claims in results["theory"].items():
        for claim, record in claims.items():
            rows = [c for c in results["checks"] if c["normaliser"] == normaliser and c["claim"] == claim]
            checked = sum(c["n_checked"] for c in rows)
            violations = sum(c["n_violations"] for c in rows)
            worst = max((c["worst_ratio"] for c in rows if c["worst_ratio"] is not None), default=None)
            medians = sorted(c["median_ratio"] for c in rows if c["median_ratio"] is not None)
            median = medians[len(medians) // 2] if medians else None
            measured = (f"{checked:,} | {violations:,} | {_ratio(worst)} | {_ratio(median)}" if rows
                        else "— | — | — | —")
            evidence = record.get("evidence", "").split("; ")[0].replace("|", "\\|")
            lines.append(f"| {normaliser} | `{claim}` | **{record['status']}** | "
                         f"{'yes' if record['general_m'] else 'no'} | {evidence} | {measured} |")
    lines += ["", "Training (mnist1d, plain SGD, batch "
              f"{results['config']['train']['batch_size']}, {results['config']['train']['steps']} steps; "
              f"steps to {results['training_summary']['threshold']:.0%} "
              f"{results['training_summary']['metric']}):", "",
              "| lr | norm | seeds | steps to threshold (mean) | final train acc | final test acc | diverged |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for row in results["training_summary"]["rows"]:
        steps = f"{row['steps_to_threshold_mean']:.0f}" if row["steps_to_threshold_mean"] is not None else "never"
        lines.append(f"| {row['lr']:g} | {row['norm']} | {row['n_seeds']} | {steps} ({row['n_reached']}/"
                     f"{row['n_seeds']} reached) | {row['final_train_acc_mean']:.3f} ± {row['final_train_acc_std']:.3f} "
                     f"| {row['final_test_acc_mean']:.3f} ± {row['final_test_acc_std']:.3f} | {row['n_diverged']} |")
    lines += claims_lines(results)
    lines += ["", END]
    return "\n".join(lines)


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
