"""The verification report: the sections built from results.json, rendered by `verify.document`.

`write_report(DIR)` reads `DIR/results.json`, draws the figures (`verify.figures`), builds one list
of blocks and renders it to `report.md` and to a self-contained `report.html`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
from pathlib import Path

from verify import claim_figures, figures, paper_figures
from verify.bench import describe as describe_bench
from verify.bench import table_rows as bench_table_rows
from verify.summary import claim_row
from verify.document import (
    TITLE,
    Alert,
    Block,
    Bullets,
    Code,
    CodeBlock,
    DisplayMath,
    FigureBlock,
    Heading,
    Math,
    Paragraph,
    Status,
    Strong,
    Table,
    Text,
    fmt_accuracy,
    fmt_count,
    fmt_ratio,
    fmt_value,
    parts,
    render_html,
    render_markdown,
    table,
)

# ---------------------------------------------------------------- reading results.json

_THEORY_FIELDS = ("status", "general_m", "statement_latex", "derived_latex", "slack_latex", "assumptions",
                  "equality", "evidence", "concrete_m_checked", "numeric_crosscheck", "counterexample")
_KNOWN_TOP_LEVEL = ("schema", "config", "environment", "theory", "checks", "training", "training_summary",
                    "timings", "recovered_runs", "claims", "dln_training")


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
    claims = results.get("claims") or []
    if claims:
        counts = [c.get("verdict", "?") for c in claims]
        verdict += (f" Of the paper's {len(claims)} empirical claims evaluated, "
                    + ", ".join(f"{counts.count(v)} {v}" for v in sorted(set(counts))) + ".")
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
            conditions = _conditions_table(checks)
            if conditions is not None:
                blocks += [Paragraph(parts("Conditions measured on the same rows (the statement's reading of "
                                           "'smoother' or of its premise; not required for the check):")), conditions]
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
    return blocks + _diverged_and_recovered(results)


def _diverged_and_recovered(results: dict) -> list[Block]:
    """One line each: runs that diverged (every kind), and runs found corrupt, set aside and recomputed."""
    blocks: list[Block] = []
    diverged = [r for r in (results.get("training") or []) + (results.get("dln_training") or [])
                if r.get("diverged_at") is not None]
    if diverged:
        runs = "; ".join(f"{r.get('run_id')} at step {r['diverged_at']}" for r in diverged)
        blocks.append(Paragraph(parts(
            Strong("Diverged:"), f" {len(diverged)} run(s) reached a non-finite loss and stopped there ({runs}); "
            "their captures, probes and checks cover only the steps before, and history.json keeps the last "
            "finite loss.")))
    recovered = results.get("recovered_runs") or []
    if recovered:
        runs = "; ".join(f"{r.get('run_id')} ({r.get('reason')}; set aside to {r.get('set_aside_to')})"
                         for r in recovered)
        blocks.append(Paragraph(parts(
            Strong("Recovered:"), f" {len(recovered)} finished run(s) had unreadable files, were set aside and "
            f"recomputed: {runs}.")))
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


def _claims_table(claims: list[dict]) -> Table:
    rows = [claim_row(c) for c in claims]
    return table(["claim", "verdict", "at matched loss", "early window", "whole run", "paper's side", "the paper"],
                 [[Code(r["id"]), Status(r["verdict"]), r["matched"], r["early"], r["whole"], r["threshold"],
                   f"{r['paper']} ({r['source']})"] for r in rows])


def _claims_section(results: dict, out_dir: Path, claim_figure_paths: list[Path]) -> list[Block]:
    claims = results.get("claims") or []
    if not claims:
        return []
    blocks: list[Block] = [Heading(2, "Empirical claims of the paper"), Paragraph(parts(
        "Each claim is decided by the criterion below, fixed in `verify/effects.py` before any result was seen. "
        "Runs are paired by seed; each ratio is the geometric mean over seeds with its 95% bootstrap interval. "
        "Reproduced: the interval lies on the paper's side of the threshold; not reproduced: on the other side; "
        "inconclusive otherwise or with fewer than 3 seeds. Landscape and ICS claims are read at matched training "
        "loss and in the early window where both networks still train; both must agree. The whole-run ratio, the "
        "paper's own reading, is shown beside them: it mixes smoothness with convergence (a converged network has "
        "tiny gradients). Censored steps (a run that never reaches the accuracy threshold) bound a ratio on one "
        "side only. Per-seed values are in results.json under `claims`.")), _claims_table(claims)]
    by_id = {path.name[len("claim__"):-len(".png")]: path for path in claim_figure_paths}
    for claim in claims:
        blocks.append(Paragraph(parts(Strong(f"{claim.get('id')}"), f" ({claim.get('figure')}): "
                                      f"{claim.get('statement')} Criterion: {claim.get('criterion')}. Measured: "
                                      f"{(claim.get('measured') or {}).get('headline', '—')}.")))
        if claim.get("id") in by_id:
            blocks.append(FigureBlock(by_id[claim["id"]].relative_to(out_dir).as_posix(),
                                      f"{claim['id']}: the deciding metric of every run against training step (left) and "
                                      "against training loss (right)"))
    return blocks


_PAPER_FIGURE_CAPTIONS = {
    "landscape__": "Loss landscape along the gradient at every probe step (paper Fig. 4; Fig. 9 for the DLN): "
                   "(a) the training loss at x − ηg over the step-size grid, as a band from its minimum to its "
                   "maximum; (b) the gradient change ‖∇L(x − ηg) − g‖ over the same grid; (c) the effective "
                   "β-smoothness, the largest gradient change per unit of distance moved. Bands also span the seeds.",
    "predictiveness__": "Gradient predictiveness against the step size η, one line per probe step coloured by the "
                        "training step (first seed of each normalisation): the flatter and lower, the more the "
                        "gradient at x predicts the gradient a step away.",
    "ics__": "Internal covariate shift (paper Fig. 3, Definition 2.1) at two layers: the ℓ2 distance and the "
             "cosine between a layer's gradient before and after the earlier layers take their actual update, on "
             "the same batch. BN not reducing ICS means ℓ2 not lower and cosine not higher than without BN.",
    "noisy": "Noisy BatchNorm (paper Fig. 2): training accuracy of the standard network, BN, BN with the paper's "
             "distributional noise after every BN layer, and the same noise without BN; below, the distribution of "
             "the first and last normalised layer's outputs (noise included) at each probe step, for BN and noisy BN.",
    "lp.png": "ℓp normalisations (paper Fig. 11): training accuracy of ℓ1 and ℓ∞ batch normalisation beside BN (ℓ2 "
              "is BN exactly, by derivation) and the standard network.",
    "lp_landscape": "ℓp normalisations (paper Fig. 12–13): the landscape probes of Fig. 4 for each normalisation.",
    "dln_loss": "Deep linear network: training loss of full-batch gradient descent with and without BN.",
}


def _paper_figures_section(out_dir: Path, paths: list[Path]) -> list[Block]:
    if not paths:
        return []
    blocks: list[Block] = [Heading(2, "The paper's figures, re-drawn from these runs")]
    for path in paths:
        caption = next((text for prefix, text in _PAPER_FIGURE_CAPTIONS.items() if path.name.startswith(prefix)), "")
        blocks.append(FigureBlock(path.relative_to(out_dir).as_posix(), caption or path.stem))
    return blocks


def _conditions_table(checks: list[dict]) -> Table | None:
    """How often each measured condition held, and the violations on rows where all held."""
    records = [r for r in checks if r.get("conditions_held")]
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


def _performance_section(out_dir: Path) -> list[Block]:
    """The instrument's cost, from DIR/bench.json (`python -m verify bench --out DIR`) when it exists."""
    path = out_dir / "bench.json"
    if not path.exists():
        return []
    bench = json.loads(path.read_text())
    rows = [[Code(name), value, spread, target, Strong(met) if met == "no" else met]
            for name, value, spread, target, met in bench_table_rows(bench)]
    sync = bench.get("sync_in_plain_step") or {}
    return [Heading(2, "Performance"), Paragraph(parts(
        "Measured by ", Code("python -m verify bench"), f": {describe_bench(bench)}. Each ratio is to the pass the "
        "measurement fundamentally needs (a plain training step, or one forward+backward on the same batch), "
        "timed alternately with it in the same process; the spread is the interquartile range over the "
        "repetitions. Targets are issue 7's.")),
        table(["figure", "value", "IQR", "target", "met"], rows, [False, True, True, True, False]),
        Paragraph(parts("Host-device synchronisations inside a plain training step: "
                        + (str(sync["synchronisations"]) if sync.get("checked") else sync.get("reason", "—")) + "."))]


# ---------------------------------------------------------------- entry point


def build_document(results: dict, out_dir: Path, figure_paths: list[Path]) -> list[Block]:
    """The report as blocks; figures must already exist under DIR/figures."""
    verdicts = _Verdicts(results, out_dir)
    curves = [p for p in figure_paths if p == figures.training_curves_path(out_dir)]
    paper = [p for p in figure_paths if p.parent == figures.figures_dir(out_dir) and p.name.startswith(
        tuple(_PAPER_FIGURE_CAPTIONS))]
    claims = results.get("claims") or []
    claim_paths = [p for p in figure_paths if p.name.startswith("claim__")]
    summary = _summary_section(verdicts) + ([Paragraph(parts(Strong("Empirical claims:"))), _claims_table(claims)]
                                            if claims else [])
    return (_summary_paragraph(results, verdicts) + summary + _theory_section(verdicts)
            + _measured_section(results, verdicts, out_dir) + _claims_section(results, out_dir, claim_paths)
            + _training_section(results, out_dir, curves) + _paper_figures_section(out_dir, paper)
            + _performance_section(out_dir) + _environment_section(results, out_dir))


def _call(function, args) -> list[Path]:
    return function(*args)


def draw_figures(out_dir: Path, processes: int | None = None) -> list[Path]:
    """Every figure of DIR, drawn by independent jobs in parallel processes (fork: matplotlib and the loaded
    modules are inherited, nothing is re-imported); the paths come back in report order.

    Drawing is CPU-bound rendering (constrained layout, PNG encoding) and the figures share no state, so
    one process per core divides the report's drawing time by the cores. `processes=1` draws in this process.
    """
    jobs = figures.drawing_jobs(out_dir) + paper_figures.drawing_jobs(out_dir) + claim_figures.drawing_jobs(out_dir)
    processes = min(len(jobs), processes or os.cpu_count() or 1)
    if processes <= 1:
        return [path for function, args in jobs for path in function(*args)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return [path for paths in pool.starmap(_call, jobs) for path in paths]


def write_report(out_dir: Path) -> dict[str, Path]:
    """Draw the figures of DIR, then write DIR/report.md and DIR/report.html from DIR/results.json."""
    out_dir = Path(out_dir)
    results = json.loads((out_dir / "results.json").read_text())
    blocks = build_document(results, out_dir, draw_figures(out_dir))
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html"}
    paths["md"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"].write_text(render_html(blocks, out_dir), encoding="utf-8")
    return paths


def write_theory_report(out_dir: Path) -> Path:
    """DIR/theory.md from DIR/theory.json alone: every statement, status, derived form, counterexample."""
    out_dir = Path(out_dir)
    theory = json.loads((out_dir / "theory.json").read_text())
    verdicts = _Verdicts({"theory": theory}, out_dir)
    blocks = [Heading(1, "Theory: statements of Santurkar et al. (2018), derived and checked by SymPy")]
    blocks += _summary_section(verdicts)[:2] + _theory_section(verdicts)
    path = out_dir / "theory.md"
    path.write_text(render_markdown(blocks), encoding="utf-8")
    return path
