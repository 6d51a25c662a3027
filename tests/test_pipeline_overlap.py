"""`verify all`'s stage scheduling: theory derives beside the runs where they train in other processes, its
error still reaches the caller, and the report's drawing shares its loaded runs and its jobs evenly."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from empirics.config import PRESETS, Executor
from verify import claim_figures, paper_figures, pipeline, sharpness_figures

SMOKE = PRESETS["smoke"]  # workers=1: trains in this process
POOLED = dataclasses.replace(SMOKE, workers=2)


def _recording(monkeypatch, theory_error: BaseException | None = None) -> list[tuple[str, str, str]]:
    """Replace both stages by recorders of (event, stage, thread name); theory takes a moment, so an overlap shows."""
    events: list[tuple[str, str, str]] = []

    def theory(out_dir, normalisers=None, beside_runs=False):
        events.append(("start", f"theory beside={beside_runs}", threading.current_thread().name))
        time.sleep(0.2)
        events.append(("end", "theory", threading.current_thread().name))
        if theory_error is not None:
            raise theory_error

    def empirics(config, out_dir, progress=True):
        events.append(("start", "empirics", threading.current_thread().name))
        time.sleep(0.05)
        events.append(("end", "empirics", threading.current_thread().name))

    monkeypatch.setattr(pipeline, "stage_theory", theory)
    monkeypatch.setattr(pipeline, "stage_empirics", empirics)
    return events


def test_runs_in_this_process_follow_the_derivations(monkeypatch, tmp_path):
    events = _recording(monkeypatch)
    pipeline.stage_theory_and_empirics(SMOKE, tmp_path, progress=False)
    assert [(e, s) for e, s, _ in events] == [("start", "theory beside=False"), ("end", "theory"),
                                              ("start", "empirics"), ("end", "empirics")]
    assert {thread for *_, thread in events} == {threading.main_thread().name}


@pytest.mark.parametrize("config", [POOLED, dataclasses.replace(SMOKE, executor=Executor.RAY)])
def test_runs_in_other_processes_train_while_theory_derives_in_a_thread(monkeypatch, tmp_path, config):
    events = _recording(monkeypatch)
    pipeline.stage_theory_and_empirics(config, tmp_path, progress=False)
    order = [(e, s) for e, s, _ in events]
    assert order.index(("start", "empirics")) < order.index(("end", "theory"))  # overlapped
    assert ("start", "theory beside=True") in order
    threads = {s: thread for e, s, thread in events if e == "start"}
    assert threads["empirics"] == threading.main_thread().name != threads["theory beside=True"]


def test_theorys_error_beside_the_runs_is_raised_once_they_are_done(monkeypatch, tmp_path):
    events = _recording(monkeypatch, theory_error=ValueError("no closed form"))
    with pytest.raises(ValueError, match="no closed form"):
        pipeline.stage_theory_and_empirics(POOLED, tmp_path, progress=False)
    assert ("end", "empirics") in [(e, s) for e, s, _ in events]


def test_timings_record_whether_theory_ran_beside_the_runs(tmp_path):
    pipeline._record_timing(tmp_path, "theory", 1.5)
    pipeline._record_timing(tmp_path, "theory_beside_runs", True)
    assert json.loads((tmp_path / "timings.json").read_text()) == {"theory_s": 1.5, "theory_beside_runs": True}


def _results(tmp_path, claims: int) -> None:
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps({"training": [], "dln_training": [],
                                                       "claims": [{"id": f"c{n}"} for n in range(claims)]}))


def test_report_runs_are_loaded_once_per_results_file(monkeypatch, tmp_path):
    loads = []
    monkeypatch.setattr(paper_figures, "_load_listed_runs", lambda out_dir: loads.append(out_dir) or [{"n": len(loads)}])
    monkeypatch.setattr(paper_figures, "_LOADED", {})
    _results(tmp_path, 1)
    first = paper_figures.load_report_runs(tmp_path)
    assert paper_figures.load_report_runs(tmp_path) is first and len(loads) == 1
    _results(tmp_path, 3)  # rewritten (another size): read again
    assert paper_figures.load_report_runs(tmp_path) == [{"n": 2}] and len(loads) == 2


def test_claim_and_sharpness_figures_are_one_job_each(tmp_path):
    _results(tmp_path, 4)
    jobs = claim_figures.drawing_jobs(tmp_path)
    assert [args[1] for _, args in jobs] == [0, 1, 2, 3]
    assert len(sharpness_figures.drawing_jobs(tmp_path)) == 2
    assert claim_figures.drawing_jobs(tmp_path / "absent") == []


def test_stability_keeps_a_finished_report_of_the_same_variant_and_revision(tmp_path):
    from empirics.experiments import run_specs
    from empirics.runner import run_dir
    from verify import stability

    pipeline.write_config(SMOKE, "smoke", tmp_path)  # results.json's "config" is config.json's content
    written = {"config": json.loads((tmp_path / "config.json").read_text()), "environment": {"git_revision": pipeline._git_revision()},
               "timings": {"total_s": 12.0}}
    (tmp_path / "results.json").write_text(json.dumps(written))
    assert stability._finished_results(SMOKE, "smoke", tmp_path) is None  # no run done yet
    for spec in run_specs(SMOKE):
        run_dir(tmp_path, spec.run_id).mkdir(parents=True)
        (run_dir(tmp_path, spec.run_id) / "done").touch()
    assert stability._finished_results(SMOKE, "smoke", tmp_path) == written
    assert stability._finished_results(POOLED, "smoke", tmp_path) is None  # another variant
    (tmp_path / "results.json").write_text(json.dumps({**written, "environment": {"git_revision": "0000000"}}))
    assert stability._finished_results(SMOKE, "smoke", tmp_path) is None  # another revision


def test_draw_formulas_meets_every_formula_render_html_draws(tmp_path):
    from verify.document import Details, DisplayMath, Math, Paragraph, mathtext_svg, parts

    blocks = [Paragraph(parts("a ", Math(r"\gamma^2"), " b")),
              Details("more", (DisplayMath(r"\frac{1}{m}"), Paragraph(parts(Math(r"\sigma"))))),
              ]
    from verify.document import draw_formulas

    mathtext_svg.cache_clear()
    assert draw_formulas(blocks) == 3
    assert mathtext_svg.cache_info().currsize == 3
    from verify.document import render_html

    render_html(blocks, tmp_path)
    assert mathtext_svg.cache_info().misses == 3  # the rendering drew nothing new


def test_reproducibility_section_counts_the_changed_runs(tmp_path):
    from verify.document import render_markdown
    from verify.report.runs import reproducibility_blocks

    (tmp_path / "stability.json").write_text(json.dumps({
        "claims": [{"id": "a", "first": "reproduced", "second": "reproduced", "agree": True},
                   {"id": "b", "first": "inconclusive", "second": "reproduced", "agree": False}],
        "agreeing": 1, "total": 2, "runs_compared": 3, "runs_changed": [["vgg1d", "none", 0.1, 0]]}))
    text = render_markdown(reproducibility_blocks(tmp_path))
    assert "1 of 2 verdicts agree; 1 of 3 runs" in text and "vgg1d" not in text
    assert "inconclusive" in text  # the disagreeing claim's table


def test_reproducibility_section_says_when_the_stability_run_is_of_another_revision(tmp_path):
    from verify.document import render_markdown
    from verify.report.runs import reproducibility_blocks

    (tmp_path / "stability.json").write_text(json.dumps({
        "git_revision": "abc1234", "claims": [{"id": "a", "first": "reproduced", "second": "reproduced", "agree": True}],
        "agreeing": 1, "total": 1, "runs_compared": 1, "runs_changed": []}))
    assert "revision abc1234, not this report's (def5678)" in render_markdown(reproducibility_blocks(tmp_path, "def5678"))
    assert "not this report's" not in render_markdown(reproducibility_blocks(tmp_path, "abc1234"))


def test_stability_renders_the_report_again_after_writing_its_comparison(tmp_path, monkeypatch):
    from verify import stability

    finished = {"claims": [{"id": "a", "verdict": "reproduced"}], "training": [], "dln_training": []}
    monkeypatch.setattr(stability, "_finished_results", lambda config, preset, directory: finished)
    rendered = []
    monkeypatch.setattr(stability, "write_report",
                        lambda out_dir: rendered.append(json.loads((out_dir / "stability.json").read_text())))
    comparison = stability.run_stability(SMOKE, "smoke", tmp_path, progress=False)
    assert rendered == [json.loads(json.dumps(comparison))]  # rendered after stability.json holds this comparison
    assert comparison["git_revision"] == pipeline._git_revision() and comparison["agreeing"] == 1
