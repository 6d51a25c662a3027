"""Details of the report: the training runs (paper Fig. 1), the paper's figures re-drawn, the instrument's cost,
the reproducibility of the verdicts, and the environment; each collapsed under one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from verify import figures
from verify.bench import describe as describe_bench
from verify.bench import table_rows as bench_table_rows
from verify.document import (
    Block,
    Bullets,
    Code,
    CodeBlock,
    Details,
    FigureBlock,
    Heading,
    Paragraph,
    StatusBadge,
    Strong,
    Text,
    fmt_accuracy,
    fmt_count,
    fmt_value,
    parts,
    table,
)

_KNOWN_TOP_LEVEL = ("schema", "config", "environment", "theory", "checks", "training", "training_summary",
                    "timings", "recovered_runs", "claims", "dln_training")


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


def training_blocks(results: dict, out_dir: Path, curves: list[Path]) -> list[Block]:
    summary = results.get("training_summary") or {}
    rows, training = summary.get("rows") or [], results.get("training") or []
    threshold = summary.get("threshold")
    blocks: list[Block] = []
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


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        return [item for key, sub in value.items() for item in flatten(sub, f"{prefix}{key}.")]
    return [(prefix[:-1], fmt_value(value))]


def environment_blocks(results: dict, out_dir: Path) -> list[Block]:
    config = results.get("config") or {}
    preset = config.get("preset")
    blocks: list[Block] = []
    environment = results.get("environment") or {}
    blocks.append(table(["setting", "value"], [[k, Code(v)] for k, v in flatten(environment)]) if environment
                  else Paragraph(parts("results.json records no environment.")))
    timings = results.get("timings") or {}
    if timings:
        blocks += [Paragraph(parts(Strong("Timings:"))), table(["stage", "wall time"], [
            [k.removesuffix("_s"), f"{v:,.1f} s" if isinstance(v, (int, float)) else fmt_value(v)]
            for k, v in timings.items()], [False, True])]
    blocks += [Paragraph(parts(Strong("Resolved configuration:"))),
               table(["key", "value"], [[k, Code(v)] for k, v in flatten(config)])]
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
    "normaliser__": "One trained normaliser beside BatchNorm and the unnormalised network, on the seeds it was trained "
                    "on: training accuracy, and the landscape along the gradient (paper Fig. 4's three probes) over "
                    "training. Its statements' measured checks are in the statement matrix and section 3.",
}


def paper_figure_blocks(out_dir: Path, paths: list[Path]) -> list[Block]:
    if not paths:
        return []
    blocks: list[Block] = []
    for path in paths:
        caption = next((text for prefix, text in _PAPER_FIGURE_CAPTIONS.items() if path.name.startswith(prefix)), "")
        blocks.append(FigureBlock(path.relative_to(out_dir).as_posix(), caption or path.stem))
    return blocks


def performance_blocks(out_dir: Path) -> list[Block]:
    """The instrument's cost, from DIR/bench.json (`python -m verify bench --out DIR`) when it exists."""
    path = out_dir / "bench.json"
    if not path.exists():
        return []
    bench = json.loads(path.read_text())
    rows = [[Code(name), value, spread, target, Strong(met) if met == "no" else met]
            for name, value, spread, target, met in bench_table_rows(bench)]
    sync = bench.get("sync_in_plain_step") or {}
    return [Paragraph(parts(
        "Measured by ", Code("python -m verify bench"), f": {describe_bench(bench)}. Each ratio is to the pass the "
        "measurement fundamentally needs (a plain training step, or one forward+backward on the same batch), "
        "timed alternately with it in the same process; the spread is the interquartile range over the "
        "repetitions. Targets are issue 7's.")),
        table(["figure", "value", "IQR", "target", "met"], rows, [False, True, True, True, False]),
        Paragraph(parts("Host-device synchronisations inside a plain training step: "
                        + (str(sync["synchronisations"]) if sync.get("checked") else sync.get("reason", "—")) + "."))]




def reproducibility_blocks(out_dir: Path, revision: str | None = None) -> list[Block]:
    """The verdicts under another float summation order, from DIR/stability.json (`python -m verify stability`);
    `revision`, the report's, is compared with the stability run's, and a mismatch is said."""
    path = out_dir / "stability.json"
    if not path.exists():
        return []
    stability = json.loads(path.read_text())
    claims = [c for c in stability.get("claims") or [] if isinstance(c, dict)]
    changed = [c for c in claims if not c.get("agree")]
    runs_changed = stability.get("runs_changed", "?")  # the list of changed runs' keys (stability.compare_results)
    runs_changed = len(runs_changed) if isinstance(runs_changed, list) else runs_changed
    blocks: list[Block] = [Heading(2, "Reproducibility"), Paragraph(parts(
        "The preset run again with another thread count per run (another float summation order; ",
        Code("python -m verify stability"), f"): {stability.get('agreeing', '?')} of {stability.get('total', '?')} "
        f"verdicts agree; {runs_changed} of {stability.get('runs_compared', '?')} runs (final training loss not "
        "bit-identical) changed." + (" Every verdict is the same." if claims and not changed else "")))]
    if revision != stability.get("git_revision"):
        blocks.append(Paragraph(parts(
            f"These figures come from a stability run at revision {stability.get('git_revision') or 'unrecorded'}, "
            f"not this report's ({revision or 'unrecorded'}): rerun ", Code("python -m verify stability"), ".")))
    if changed:
        blocks.append(table(["claim", "first", "second"], [[Code(str(c.get("id"))), StatusBadge(str(c.get("first"))),
                                                              StatusBadge(str(c.get("second")))] for c in changed]))
    return blocks
