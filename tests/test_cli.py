"""The command line: one-line errors with exit code 2, and the smoke pipeline end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verify.cli import main

REPO = Path(__file__).resolve().parent.parent


def _exit_code(argv: list[str]) -> int:
    """main()'s exit code, whether argparse exits (usage errors) or main returns (config errors)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bogus"], "invalid choice"),
        (["all", "--preset", "huge"], "invalid choice"),
        (["all", "--device", "tpu"], "invalid choice"),
        (["all", "--frobnicate"], "unrecognized arguments"),
        (["all", "--seed", "one"], "invalid int value"),
        (["all", "--set", "train.nosuchkey=1"], "unknown config key"),
        (["all", "--set", "train.steps=ten"], "not a valid int"),
        (["all", "--set", "train.lrs=-0.1"], "must all be > 0"),
        (["all", "--set", "train.batch_size=1"], "below 2"),
        (["all", "--set", "train.steps"], "has no '='"),
    ],
)
def test_bad_input_is_one_line_error_with_exit_code_2(argv, fragment, tmp_path, capsys):
    assert _exit_code([*argv, "--out", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert fragment in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_report_without_theory_is_a_clear_error(tmp_path, capsys):
    code = main(["report", "--preset", "smoke", "--out", str(tmp_path)])
    assert code == 2
    assert "theory.json is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_pipeline_writes_every_output_and_they_parse(tmp_path):
    out = tmp_path / "smoke"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-m", "verify", "all", "--preset", "smoke", "--out", str(out), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    bn = results["theory"]["batchnorm"]
    assert bn["thm4.1"]["status"] == "proved" and bn["thm4.1"]["general_m"] is True
    assert bn["thm4.1-printed"]["status"] == "refuted" and "counterexample" in bn["thm4.1-printed"]
    thm41 = [c for c in results["checks"] if c["claim"] == "thm4.1"]
    assert thm41 and sum(c["n_checked"] for c in thm41) > 0
    assert sum(c["n_violations"] for c in thm41) == 0
    # l2 (BatchNorm's formula over its axis) is checked with its own bounds on BatchNorm's networks
    by_normaliser = {n: sum(c["n_checked"] for c in thm41 if c["normaliser"] == n) for n in ("batchnorm", "lp2")}
    assert by_normaliser["lp2"] == by_normaliser["batchnorm"] > 0
    assert {c.get("measured_on") for c in thm41 if c["normaliser"] == "lp2"} == {"batchnorm"}
    assert results["timings"]["total_s"] > 0
    assert {"torch", "device", "dtype", "git_revision"} <= set(results["environment"])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and 'src="http' not in html
    assert (out / "report.md").read_text().startswith("#")
    assert (out / "figures" / "training_curves.png").stat().st_size > 0
    # the closing lines, the report and the README block: one summary, digit for digit
    from verify.readme import results_block
    from verify.summary import headline_lines

    readme, report = results_block(results, str(out)), (out / "report.md").read_text().replace("\\", "")
    for line in headline_lines(results):
        assert line in completed.stdout and line in report and line in readme, line
