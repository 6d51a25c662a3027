"""The report and its figures, built from a small synthetic output directory (no training)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from verify import figures, summary
from verify.readme import results_block
from verify.report import build_document, render_html, render_markdown, write_report
from verify.report.bounds import BOUNDS_HEADING
from verify.report.claims import CLAIMS_HEADING
from verify.report.statements import MATRIX_HEADING

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- a synthetic output directory


def _theory() -> dict:
    return {
        "batchnorm": {
            "thm4.1": {
                "status": "proved",
                "general_m": True,
                "statement_latex": r"\|\nabla_{y_j}\hat L\|^2 \le \frac{\gamma^2}{\sigma_j^2}"
                r"\left(\|g\|^2 - \frac{1}{m}\langle 1, g\rangle^2 - \frac{1}{m}\langle g, \hat y_j\rangle^2\right)",
                "derived_latex": r"\frac{\gamma^2}{m^2 \sigma_j^2}\|m g - 1\langle 1, g\rangle - \hat y_j \langle g, \hat y_j\rangle\|^2",
                "slack_latex": r"\begin{aligned} s &= 0 \end{aligned}",  # mathtext cannot parse: fallback
                "assumptions": [r"m \ge 2", r"\epsilon \ge 0", r"\sigma_j > 0"],
                "equality": "equality iff epsilon = 0 or <g, yhat> = 0",
                "evidence": "difference simplifies to a non-negative multiple of <g, yhat>^2",
                "concrete_m_checked": [2, 3, 4],
                "numeric_crosscheck": {"max_rel_err": 1e-15, "n": 200},
            },
            "thm4.1-printed": {
                "status": "refuted",
                "general_m": True,
                "statement_latex": r"\|\nabla_{y_j}\hat L\|^2 \le \frac{\gamma^2}{\sigma_j^2}"
                r"\left(\|g\|^2 - \frac{1}{\sqrt{m}}\langle g, \hat y_j\rangle^2\right)",
                "evidence": "g proportional to yhat: LHS 0 > RHS = -|g|^2/sqrt(m) < 0",  # pipes: table escaping
                "counterexample": {"m": 2, "epsilon": "0", "gamma": "1", "y": ["-1", "1"], "g": ["-1", "1"],
                                   "lhs": "0", "rhs": "-1/sqrt(2)", "lhs_float": 0.0, "rhs_float": -0.7071},
            },
        }
    }


def _with_shared_normaliser(theory: dict) -> dict:
    """layernorm repeats batchnorm's thm4.1 (declared) and its printed form (identical record, undeclared);
    its third statement is one batchnorm lacks, with a status this report does not know."""
    batchnorm = theory["batchnorm"]
    theory["layernorm"] = {"thm4.1": {**batchnorm["thm4.1"], "same_statement_as": "batchnorm"},
                           "thm4.1-printed": dict(batchnorm["thm4.1-printed"]),
                           "thm4.4-per-layer": {"status": "undecided", "statement_latex": "x \\le y",
                                                "evidence": "a status from the future"}}
    return theory


def _interval(ratio: float, low: float, high: float, n: int = 5) -> dict:
    return {"n": n, "dropped": 0, "per_seed": [ratio] * n, "ratio": ratio, "ci": [low, high]}


def _claims() -> list[dict]:
    axes = {axis: {"interval": _interval(ratio, ratio / 2, ratio * 2), "verdict": "reproduced"}
            for axis, ratio in (("matched", 7.7), ("early", 7.5), ("whole", 7.0))}
    return [
        {"id": "bn-faster", "figure": "Fig. 1", "statement": "BN networks train faster.", "paper": "markedly sooner",
         "paper_source": "Fig. 1 (a, b)", "criterion": "none / BN steps above 1", "threshold": "> 1",
         "verdict": "reproduced", "measured": {"lr=0.1": {"metric": "steps", "threshold": "> 1",
                                                          "interval": _interval(1.8, 1.2, 2.5), "verdict": "reproduced"},
                                               "headline": "lr 0.1: none/BN steps 1.8x"}},
        {"id": "smoother-loss", "figure": "Fig. 4a", "statement": "BN's loss is smoother.",
         "paper": "the standard network's loss band spikes to ~10", "paper_source": "Fig. 4 (a)",
         "criterion": "none / BN loss range above 1", "threshold": "> 1", "verdict": "not reproduced",
         "measured": {"lr=0.1": {"decided_by": {"metric": "loss_range", "aggregate": "median", "threshold": "> 1",
                                                "axes": axes, "verdict": "reproduced"},
                                 "kind": "vgg1d", "lr": 0.1, "pair": ["none", "batchnorm"]},
                      "headline": "lr 0.1: matched 7.7x"}},
        {"id": "bn-high-lr", "figure": "Fig. 1", "statement": "At a high lr only BN trains.", "paper": "chance",
         "paper_source": "Fig. 1 (b)", "criterion": "...", "threshold": None, "verdict": "not measured",
         "measured": {"headline": "needs at least two learning rates"}},
    ]


def _check_record(claim: str, layer: int, violations: int, status: str) -> dict:
    return {"claim": claim, "normaliser": "batchnorm", "model": "vgg1d", "layer": layer, "lr": 0.1,
            "n_checked": 1234, "n_violations": violations, "worst_ratio": 1.0000001, "median_ratio": 0.99999,
            "tolerance": "abs tol 1e-6 * |rhs| (float32 accumulation)", "status": status}


def _history(steps: int, diverged_at: int | None) -> dict:
    train_steps = list(range(0, steps, 10))
    loss = [2.3 * np.exp(-s / 100) for s in train_steps]
    acc = [min(0.99, 0.1 + s / 100) for s in train_steps]
    if diverged_at is not None:
        loss = [None if s >= diverged_at else v for s, v in zip(train_steps, loss)]
        acc = [0.1 if s >= diverged_at else v for s, v in zip(train_steps, acc)]
    test_steps = list(range(0, steps, 50))
    return {"train": {"step": train_steps, "loss": loss, "acc": acc},
            "test": {"step": test_steps, "loss": [1.0] * len(test_steps), "acc": [0.5] * len(test_steps)},
            "final_train_acc": acc[-1], "final_test_acc": 0.5, "diverged_at": diverged_at,
            "steps_done": steps, "wall_s": 1.0, "device": "cpu"}


def _write_checks(path: Path, n: int, violation_rows: int, nonpositive_rhs_rows: int) -> None:
    rng = np.random.default_rng(0)
    rhs = 10 ** rng.uniform(-4, 1, n)
    lhs = rhs * rng.uniform(0.5, 1.0, n)
    tol = 1e-6 * np.abs(rhs)
    lhs[:violation_rows] = rhs[:violation_rows] * 1.5
    rhs[violation_rows:violation_rows + nonpositive_rhs_rows] *= -1
    np.savez(path, run_id=np.array(["batchnorm-lr0.1-s0-abcdef123456"] * n), lr=np.full(n, 0.1),
             layer=np.arange(n) % 2, channel=np.arange(n) % 8, step=np.arange(n) * 10, lhs=lhs, rhs=rhs, tol=tol)


def make_output_dir(root: Path, proved_violations: int = 0) -> Path:
    """A DIR with results.json, two runs (one diverged) and two checks files.

    `proved_violations` rows of the proved claim's checks violate the bound (the BUG case); the
    refuted claim's file has 3 violating rows and 40 rows with RHS <= 0.
    """
    out = root / "out"
    runs = [("none", 0.5, 0, 200, 120), ("batchnorm", 0.5, 0, 200, None)]
    training = []
    for norm, lr, seed, steps, diverged in runs:
        run_id = f"{norm}-lr{lr:g}-s{seed}-abcdef123456"
        run_dir = out / "runs" / run_id
        run_dir.mkdir(parents=True)
        history = _history(steps, diverged)
        (run_dir / "history.json").write_text(json.dumps(history))
        (run_dir / "spec.json").write_text(json.dumps({"run_id": run_id, "norm": norm, "lr": lr, "seed": seed,
                                                       "config": {}}))
        training.append({"run_id": run_id, "norm": norm, "lr": lr, "seed": seed,
                         "final_train_acc": history["final_train_acc"], "final_test_acc": 0.5,
                         "steps_done": steps, "diverged_at": diverged,
                         "steps_to_threshold": None if diverged else 70, "wall_s": 1.0})
    (out / "checks").mkdir()
    _write_checks(out / "checks" / "batchnorm__thm4.1.npz", 600, proved_violations, 0)
    _write_checks(out / "checks" / "batchnorm__thm4.1-printed.npz", 600, 3, 40)
    results = {
        "schema": 1,
        "config": {"preset": "smoke", "train": {"batch_size": 32, "steps": 200}, "model": {"name": "vgg1d"}},
        "environment": {"python": "3.11.7", "torch": "2.13.0+cpu", "sympy": "1.14.0", "numpy": "2.0",
                        "device": "cpu", "dtype": "float32", "seeds": [0], "git_revision": "abc123",
                        "platform": "linux", "deterministic_algorithms": False, "tf32_matmul": False,
                        "tf32_cudnn": False, "num_threads": 2},
        "theory": _with_shared_normaliser(_theory()),
        "claims": _claims(),
        "checks": [_check_record("thm4.1", 0, proved_violations, "proved"),
                   _check_record("thm4.1", 1, 0, "proved"),
                   _check_record("thm4.1-printed", 0, 3, "refuted")],
        "training": training,
        "training_summary": {"threshold": 0.8, "rows": [
            {"norm": "none", "lr": 0.5, "n_seeds": 1, "final_train_acc_mean": 0.1, "final_train_acc_std": 0.0,
             "final_test_acc_mean": 0.5, "steps_to_threshold_mean": None, "n_diverged": 1},
            {"norm": "batchnorm", "lr": 0.5, "n_seeds": 1, "final_train_acc_mean": 0.99,
             "final_train_acc_std": 0.0, "final_test_acc_mean": 0.5, "steps_to_threshold_mean": 70.0,
             "n_diverged": 0}]},
        "timings": {"total_s": 100.0, "theory_s": 5.0, "empirics_s": 90.0, "report_s": 5.0},
        "future_section": {"future": "field the report does not know yet"},
    }
    (out / "results.json").write_text(json.dumps(results))
    return out


@pytest.fixture(scope="module")
def clean_report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = make_output_dir(tmp_path_factory.mktemp("clean"))
    return out, write_report(out)


@pytest.fixture(scope="module")
def buggy_pages(clean_report) -> dict[str, str]:
    """Markdown and HTML of the clean DIR after 2 rows of the proved thm4.1 are recorded as violations.

    Built from the already drawn figures (build_document + render), so the slow drawing runs once.
    """
    out, _ = clean_report
    results = json.loads((out / "results.json").read_text())
    results["checks"][0]["n_violations"] = 2
    blocks = build_document(results, out, sorted((out / "figures").glob("*.png")))
    return {"md": render_markdown(blocks), "html": render_html(blocks, out)}


def _visible(text: str) -> str:
    """The page without its base64 payloads (which can spell anything, 'BUG' included)."""
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", text)


def _headings_md(text: str) -> list[str]:
    in_fence = False
    headings = []
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (match := re.match(r"(#{1,6}) (.*)", line)):
            headings.append((len(match.group(1)), re.sub(r"\\(.)", r"\1", match.group(2))))
    return headings


def _headings_html(text: str) -> list[str]:
    return [(int(level), html.unescape(re.sub(r"<[^>]+>", "", body)))
            for level, body in re.findall(r"<h([1-6])[^>]*>(.*?)</h\1>", text, flags=re.DOTALL)]


# ---------------------------------------------------------------- tests


def test_report_writes_markdown_and_html(clean_report):
    out, paths = clean_report
    assert paths["md"] == out / "report.md" and paths["md"].stat().st_size > 0
    assert paths["html"] == out / "report.html" and paths["html"].stat().st_size > 0


def test_html_is_self_contained_with_every_figure_embedded(clean_report):
    out, paths = clean_report
    page = paths["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script" not in page and "@import" not in page and "url(http" not in page
    written = sorted((out / "figures").glob("*.png"))
    assert page.count("data:image/png;base64,") == len(written) >= 5  # curves + 2 x (scatter, histogram)


def test_markdown_links_every_figure_relatively(clean_report):
    out, paths = clean_report
    text = paths["md"].read_text()
    for png in (out / "figures").glob("*.png"):
        assert f"(figures/{png.name})" in text


def test_every_check_claim_and_normaliser_appears_in_both(clean_report):
    _, paths = clean_report
    results = json.loads((paths["md"].parent / "results.json").read_text())
    names = {r["claim"] for r in results["checks"]} | {r["normaliser"] for r in results["checks"]}
    for path in (paths["md"], paths["html"]):
        text = path.read_text()
        for name in names:
            assert name in text, f"{name!r} missing from {path.name}"


def test_refuted_claim_shows_its_counterexample(clean_report):
    _, paths = clean_report
    for path in (paths["md"], paths["html"]):
        text = html.unescape(path.read_text())
        assert "Counterexample" in text and "-1/sqrt(2)" in text


def test_no_bug_warning_when_proved_claims_hold(clean_report):
    _, paths = clean_report
    assert "BUG" not in paths["md"].read_text()
    assert "BUG" not in _visible(paths["html"].read_text())


def test_bug_warning_when_a_proved_claim_has_violations(buggy_pages):
    for text in buggy_pages.values():
        assert "BUG: thm4.1 (batchnorm) is proved in theory, yet 2 measured rows violate it" in _visible(text)


def test_markdown_and_html_list_the_same_headings(clean_report):
    _, paths = clean_report
    md_headings = _headings_md(paths["md"].read_text())
    assert md_headings == _headings_html(paths["html"].read_text())
    titles = [text for level, text in md_headings if level == 2]
    assert titles[:3] == [CLAIMS_HEADING, MATRIX_HEADING, BOUNDS_HEADING] and "Details" in titles


def test_latex_is_rendered_or_shown_as_source(clean_report):
    _, paths = clean_report
    page = paths["html"].read_text()
    assert "data:image/svg+xml;base64," in page  # mathtext rendered the parseable formulas
    assert html.escape(r"\begin{aligned}") in page  # the unparseable one falls back to its source
    assert "$$" in paths["md"].read_text()


def test_reproduction_command_names_the_preset(clean_report):
    out, paths = clean_report
    assert f"python -m verify all --preset smoke --out {out}" in paths["md"].read_text()


def test_figures_are_nonempty_pngs(clean_report):
    out, _ = clean_report
    expected = [figures.training_curves_path(out)]
    for normaliser, claim, _ in figures.checks_files(out):
        expected.append(figures.check_figure_path(out, "bound_check", normaliser, claim))
    for path in expected:
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_scatter_subsampling_is_deterministic_and_capped():
    first, second = figures._subsample(20_000), figures._subsample(20_000)
    assert len(first) == figures.MAX_POINTS_PER_PANEL and np.array_equal(first, second)
    assert np.array_equal(figures._subsample(10), np.arange(10))


def test_seed_statistics_ignore_missing_values_without_warnings():
    mean, low, high = figures._seed_stats(np.array([[1.0, np.nan, np.nan], [3.0, 2.0, np.nan]]))
    np.testing.assert_array_equal(mean[:2], [2.0, 2.0])
    np.testing.assert_array_equal(low[:2], [1.0, 2.0])
    np.testing.assert_array_equal(high[:2], [3.0, 2.0])
    assert np.isnan(mean[2]) and np.isnan(low[2]) and np.isnan(high[2])


def test_text_is_escaped_in_html_and_table_cells_stay_whole_in_markdown(clean_report):
    _, paths = clean_report
    page = paths["html"].read_text()
    assert "equality iff epsilon = 0 or &lt;g, yhat&gt; = 0" in page
    assert "<g, yhat>" not in page
    md_rows = [line for line in paths["md"].read_text().splitlines() if line.startswith("| `thm4.1")]
    assert md_rows and all(len(re.findall(r"(?<!\\)\|", row)) == row.count(" | ") + 2 for row in md_rows)


def test_ratios_near_one_keep_their_deviation_visible():
    assert figures.format_ratio(1.0000001) == "1 + 1.00e-07"
    assert figures.format_ratio(0.9999999) == "1 − 1.00e-07"
    assert figures.format_ratio(1.0) == "1"
    assert figures.format_ratio(0.123456789) == "0.123457"
    assert figures.format_ratio(None) == "—"


def test_scatter_panel_states_rows_with_nonpositive_rhs_and_their_violations():
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    rows = {"lhs": np.array([1.0, 2.0, 0.5, 0.1]), "rhs": np.array([2.0, -1.0, 0.0, 1.0]),
            "tol": np.zeros(4), "step": np.arange(4.0)}
    figures._draw_scatter_panel(ax, rows, Normalize(0, 3))
    note = " ".join(t.get_text() for t in ax.texts)
    assert "rows with RHS ≤ 0 not shown: 2," in note and "of which violations: 2" in note


def test_report_tolerates_missing_optional_fields_and_unknown_claims(tmp_path):
    results = {"schema": 1, "config": {}, "environment": {}, "theory": {}, "timings": {}, "training": [],
               "checks": [{"claim": "thm4.2", "normaliser": "layernorm", "layer": 0, "lr": 0.1,
                           "n_checked": 10, "n_violations": 0, "worst_ratio": None, "median_ratio": None}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    paths = write_report(tmp_path)
    for path in paths.values():
        text = path.read_text()
        assert "thm4.2" in text and "layernorm" in text and "BUG" not in text
    assert "--preset <preset>" in paths["md"].read_text()


# ---------------------------------------------------------------- the reader's order and the one summary


def _outside_details(markdown: str) -> list[str]:
    lines, depth = [], 0
    for line in markdown.splitlines():
        depth += line.startswith("<details>") - line.startswith("</details>")
        if depth == 0:
            lines.append(line)
    return lines


def test_claims_and_matrix_come_first_and_rows_stay_short(clean_report):
    _, paths = clean_report
    text = paths["md"].read_text()
    lines = text.splitlines()
    assert lines.index(f"## {MATRIX_HEADING}") < lines.index(f"## {BOUNDS_HEADING}") < 80
    assert lines.index(f"## {CLAIMS_HEADING}") < lines.index(f"## {MATRIX_HEADING}")
    rows = [line for line in _outside_details(text) if line.startswith("|")]
    assert rows and max(map(len, rows)) <= 300
    assert text.count("<details>") == text.count("</details>") >= 3


def test_shared_formula_is_derived_once_and_unknown_status_shown_as_is(clean_report):
    _, paths = clean_report
    text = paths["md"].read_text()
    assert "### thm4.1: batchnorm, layernorm" in text and "### thm4.1-printed: batchnorm, layernorm" in text
    assert "### thm4.1 (layernorm)" not in text
    assert "**undecided —**" in text  # a status without a glyph keeps its word; no measured rows: —


def test_matrix_cells_carry_evidence_on_hover_and_link_to_the_derivation(clean_report):
    _, paths = clean_report
    page = paths["html"].read_text()
    assert 'href="#thm41-batchnorm-layernorm"' in page and 'id="thm41-batchnorm-layernorm"' in page
    assert 'title="thm4.1 (layernorm): proved; measured violations/rows —; same statement as batchnorm' in page


def test_readme_report_and_cli_summaries_agree(clean_report):
    out, paths = clean_report
    results = json.loads((out / "results.json").read_text())
    readme = results_block(results, str(out)).replace("\\", "")  # Markdown escapes [ ] < > |
    report = paths["md"].read_text().replace("\\", "")
    for line in summary.headline_lines(results):
        assert line in report and line in readme
    for row in summary.claim_rows(results):
        cells = f"| **{row.verdict}** | {row.measured} | {row.seeds or '—'} |"
        assert cells in readme and cells in report


def test_statement_groups_follow_same_statement_as_then_identical_records():
    theory = _with_shared_normaliser(_theory())
    theory["groupnorm"] = {"thm4.1": {**theory["batchnorm"]["thm4.1"], "evidence": "another proof"}}
    groups = {(g.statement, g.normalisers) for g in summary.statement_groups({"theory": theory})}
    assert ("thm4.1", ("batchnorm", "layernorm")) in groups and ("thm4.1", ("groupnorm",)) in groups
    assert ("thm4.1-printed", ("batchnorm", "layernorm")) in groups


def test_bound_rows_use_one_median_and_one_ratio_format():
    results = {"checks": [{"claim": "thm4.1", "normaliser": "batchnorm", "n_checked": 10, "n_violations": 0,
                           "worst_ratio": 1 + 1e-8, "median_ratio": m} for m in (1 - 7e-9, 1 - 6e-9, 1 - 5e-9)]}
    (row,) = summary.bound_rows(results)
    assert row.median == figures.format_ratio(1 - 6e-9) and row.n_checked == 30


def test_a_normaliser_measured_on_another_ones_networks_says_so():
    """l2 is checked on BatchNorm's networks (the same function): its cell counts those rows and names them."""
    from verify.report.statements import matrix_section

    theory = {"batchnorm": {"thm4.1": {"status": "proved"}},
              "lp2": {"thm4.1": {"status": "proved", "same_statement_as": "batchnorm"}}}
    checks = [_check_record("thm4.1", 0, 0, "proved"),
              {**_check_record("thm4.1", 0, 0, "proved"), "normaliser": "lp2", "measured_on": "batchnorm"}]
    results = {"theory": theory, "checks": checks}
    cell = summary.statement_matrix(results).cell("thm4.1", "lp2")
    assert (cell.measured, cell.measured_on) == ("0/1,234", "batchnorm")
    assert summary.statement_matrix(results).cell("thm4.1", "batchnorm").measured_on == ""
    text = render_markdown(matrix_section(results))
    assert "lp2 is measured on batchnorm's networks" in text
