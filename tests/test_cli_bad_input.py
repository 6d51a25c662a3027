"""Every bad input of the reliability issue through the command line: exit code 2, one line on stderr
naming the problem and the fix, no traceback, and an earlier results directory left byte-for-byte alone.

Each case runs `verify.cli.main` in this process with stderr captured (a traceback would escape as an
exception and fail the test); `test_the_real_command_line_answers_the_same` runs one case through
`python -m verify` to show the in-process route is the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_cli import _exit_code
from tests.test_empirics_cifar_vgg2d import write_fake_cifar10
from theory import normalisers
from theory.normalisers import REGISTRY
from theory.wellformed import check_well_formed
from verify import pipeline
from verify.cli import main

REPO = Path(__file__).resolve().parent.parent


def _fingerprint(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `directory` (added or removed files show too)."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _write_earlier_results(out: Path, schema: int = pipeline.SCHEMA, config_schema: int = pipeline.SCHEMA) -> None:
    """A results directory as an earlier `verify all` leaves it (contents abbreviated: only bytes are compared)."""
    run = out / "runs" / "batchnorm-lr0.1-s0-0123456789ab"
    run.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"schema": config_schema, "preset": "smoke"}))
    (out / "results.json").write_text(json.dumps({"schema": schema, "checks": [], "training": []}))
    (out / "theory.json").write_text(json.dumps({"batchnorm": {}}))
    (out / "report.md").write_text("# an earlier report\n")
    (run / "history.json").write_text(json.dumps({"steps_done": 30}))
    (run / "done").write_bytes(b"")


# --- user normaliser files ---------------------------------------------------------------------------

_NORMALISER_HEADER = '''
import sympy as sp
from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps
mu = sp.Symbol("mu", real=True)
'''

NORMALISER_FILES = {
    # `sd` is used but never defined as a statistic
    "unknown_symbol": _NORMALISER_HEADER + '''
sd = sp.Symbol("sd", positive=True)
BAD = Normaliser(name="bad_unknown_symbol", title="t", axis="batch",
                 statistics=((mu, batch_mean(lambda i: y[i], "i")),),
                 hat=lambda sample: (sample - mu) / sd, scale=sd, scale_of_sigma={})
''',
    # a statistic that reads one fixed sample instead of reducing over the batch
    "no_batch_axis": _NORMALISER_HEADER + '''
BAD = Normaliser(name="bad_no_batch_axis", title="t", axis="batch",
                 statistics=((mu, y[1]),),
                 hat=lambda sample: sample - mu, scale=sp.Integer(1), scale_of_sigma={})
''',
    # eps made anew: same name as theory.normaliser.eps, other assumptions, so another symbol
    "fresh_eps": _NORMALISER_HEADER + '''
var = sp.Symbol("var", nonnegative=True)
epsilon = sp.Symbol("epsilon")
BAD = Normaliser(name="bad_fresh_eps", title="t", axis="batch",
                 statistics=((mu, batch_mean(lambda i: y[i], "i")), (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
                 hat=lambda sample: (sample - mu) / sp.sqrt(var + epsilon), scale=sp.sqrt(var + epsilon),
                 scale_of_sigma={})
''',
    "syntax_error": "def broken(:\n",
}


# Well-formed formulas (they load, and `verify theory` derives them) that no network can train with:
# `verify all` / `empirics` refuse them before anything is written (empirics.train.check_trainable)
TRAINING_FILES = {
    # log of a centred value: NaN for every sample below the mean, so at initialisation
    "nan_at_init": _NORMALISER_HEADER + '''
var = sp.Symbol("var", nonnegative=True)
NAN = Normaliser(name="bad_nan_at_init", title="t", axis="batch: one unit over the m samples",
                 statistics=((mu, batch_mean(lambda i: y[i], "i")), (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
                 hat=lambda sample: sp.log(sample - mu) / sp.sqrt(var + eps), scale=sp.sqrt(var + eps),
                 scale_of_sigma={})
''',
    # Lambert's W: SymPy has it, torch does not (lambdify's torch printer leaves it unnamed)
    "no_torch_translation": _NORMALISER_HEADER + '''
var = sp.Symbol("var", nonnegative=True)
LAMBERT = Normaliser(name="bad_no_torch", title="t", axis="batch: one unit over the m samples",
                     statistics=((mu, batch_mean(lambda i: y[i], "i")), (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
                     hat=lambda sample: sp.LambertW((sample - mu) ** 2 + 1) / sp.sqrt(var + eps),
                     scale=sp.sqrt(var + eps), scale_of_sigma={})
''',
    # an axis no model has a place for
    "unhosted_axis": _NORMALISER_HEADER + '''
var = sp.Symbol("var", nonnegative=True)
TIME = Normaliser(name="bad_time_axis", title="t", axis="time: one unit over its time steps",
                  statistics=((mu, batch_mean(lambda i: y[i], "i")), (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
                  hat=lambda sample: (sample - mu) / sp.sqrt(var + eps), scale=sp.sqrt(var + eps), scale_of_sigma={})
''',
}


def _normaliser_file(tmp_path: Path, which: str) -> Path:
    path = tmp_path / f"{which}.py"
    path.write_text({**NORMALISER_FILES, **TRAINING_FILES}[which])
    return path


# --- the table ---------------------------------------------------------------------------------------
# Each case: (argv after the command, a fragment naming the problem, a fragment naming the fix).
# `{tmp}` is replaced by the test's temporary directory (files a case needs are made by `_prepare`).

CASES = {
    "unknown preset": (["--preset", "huge"], "invalid choice: 'huge'", "choose from"),
    "unknown experiment": (["--set", "experiments=train,figure99"], "unknown experiment(s) figure99", "choose from"),
    "unknown normaliser": (["--norm", "nonorm"], "unknown normaliser(s) nonorm", "known:"),
    "unknown norm in config": (["--set", "train.norms=groupnorm9"], "'groupnorm9' is not one of", "pick one"),
    "unknown option": (["--frobnicate"], "unrecognized arguments: --frobnicate", "--help"),
    "unknown config key": (["--set", "train.nosuchkey=1"], "unknown config key 'train.nosuchkey'", "valid keys"),
    "zero lr": (["--set", "train.lrs=0"], "train.lrs=[0.0] must all be > 0", "give positive"),
    "negative lr": (["--set", "train.lrs=0.1,-0.1"], "must all be > 0", "give positive"),
    "zero DLN lr": (["--set", "dln.lrs=0"], "dln.lrs=[0.0] all > 0", "fix them"),
    "batch of one with batch statistics": (["--set", "train.batch_size=1"], "train.batch_size=1 is below 2",
                                           "use >= 2"),
    "non-integer steps": (["--set", "train.steps=1.5"], "train.steps='1.5' is not a valid int", "give a int"),
    "non-numeric steps": (["--set", "train.steps=ten"], "train.steps='ten' is not a valid int", "give a int"),
    "cuda without CUDA": (["--device", "cuda"], "torch.cuda.is_available() is False", "use --device cpu"),
    "missing CIFAR-10 folder": (["--preset", "paper", "--data-root", "{tmp}/nowhere"], "does not exist", "download"),
    "CIFAR-10 folder without a batch": (["--preset", "paper", "--data-root", "{tmp}/cifar_missing"],
                                        "test_batch is missing", "re-extract"),
    "corrupt CIFAR-10 batch": (["--preset", "paper", "--data-root", "{tmp}/cifar_corrupt"],
                               "is not a valid python-version CIFAR-10 batch", "re-extract"),
    "output under a file": (["--out", "{tmp}/a_file/out"], "is not writable", "pick another --out"),
    "results of another schema": (["--out", "{tmp}/old_results"], f"holds results of schema 0, this version "
                                  f"writes schema {pipeline.SCHEMA}", "pick a new --out, or remove"),
    "config of another schema": (["--out", "{tmp}/old_config"], "config.json holds results of schema 99",
                                 "pick a new --out, or remove"),
    "normaliser with an unknown symbol": (["--normaliser-file", "{tmp}/unknown_symbol.py"],
                                          "hat(sample) uses the symbol 'sd'", "define it as a statistic"),
    "normaliser without a batch axis": (["--normaliser-file", "{tmp}/no_batch_axis.py"],
                                        "statistic mu = y[1] reduces over no batch axis", "batch_mean"),
    "normaliser with a fresh eps": (["--normaliser-file", "{tmp}/fresh_eps.py"], "uses the symbol 'epsilon'",
                                    "from theory.normaliser import eps"),
    "normaliser file that does not import": (["--normaliser-file", "{tmp}/syntax_error.py"],
                                             "failed to import (SyntaxError", "fix the file"),
    "normaliser that is NaN at initialisation": (["--normaliser-file", "{tmp}/nan_at_init.py"],
                                                 "normaliser bad_nan_at_init gives the vgg1d a non-finite loss",
                                                 "check where its formula"),
    "normaliser without a torch translation": (["--normaliser-file", "{tmp}/no_torch_translation.py"],
                                               "normaliser bad_no_torch has no working torch translation",
                                               "use functions torch provides"),
    "normaliser on an axis no model hosts": (["--normaliser-file", "{tmp}/unhosted_axis.py"],
                                             "normaliser bad_time_axis: axis 'time: one unit over its time steps' "
                                             "names no axis the models can host", "start it with one of"),
}


def _prepare(tmp_path: Path) -> None:
    """The files some cases point at: damaged CIFAR-10 folders, a file in the way, old results, normalisers."""
    missing = write_fake_cifar10(tmp_path / "cifar_missing")
    (missing / "test_batch").unlink()
    corrupt = write_fake_cifar10(tmp_path / "cifar_corrupt")
    raw = (corrupt / "data_batch_3").read_bytes()
    (corrupt / "data_batch_3").write_bytes(raw[: len(raw) // 2])  # truncated, as by an interrupted copy
    (tmp_path / "a_file").write_text("not a directory\n")
    _write_earlier_results(tmp_path / "old_results", schema=0)
    _write_earlier_results(tmp_path / "old_config", config_schema=99)
    for which in (*NORMALISER_FILES, *TRAINING_FILES):
        _normaliser_file(tmp_path, which)


@pytest.mark.parametrize("command", ["all", "empirics"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_problem_and_fix_and_damages_nothing(case, command, tmp_path, capsys):
    argv_tail, problem, fix = CASES[case]
    if case == "cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid")
    _prepare(tmp_path)
    earlier = tmp_path / "earlier"
    _write_earlier_results(earlier)
    argv = [command, "--preset", "smoke", "--out", str(earlier), "--no-progress"]
    argv += [part.replace("{tmp}", str(tmp_path)) for part in argv_tail]  # later options win
    before = {path: _fingerprint(path) for path in tmp_path.iterdir() if path.is_dir()}

    code = _exit_code(argv)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    assert lines[0].startswith("verify: error: ")
    assert problem in lines[0] and fix in lines[0], lines[0]
    after = {path: _fingerprint(path) for path in tmp_path.iterdir() if path.is_dir()}
    assert after == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_refused(tmp_path, capsys):
    earlier = tmp_path / "earlier"
    _write_earlier_results(earlier)
    before = _fingerprint(earlier)
    earlier.chmod(0o555)
    try:
        code = _exit_code(["all", "--preset", "smoke", "--out", str(earlier)])
    finally:
        earlier.chmod(0o755)
    line = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in line and "is not writable" in line and "pick another --out" in line
    assert _fingerprint(earlier) == before


def test_the_real_command_line_answers_the_same(tmp_path):
    earlier = tmp_path / "earlier"
    _write_earlier_results(earlier)
    before = _fingerprint(earlier)
    completed = subprocess.run(
        [sys.executable, "-m", "verify", "all", "--preset", "smoke", "--out", str(earlier), "--set", "train.lrs=0"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "verify: error: train.lrs=[0.0] must all be > 0; give positive learning rates"]
    assert _fingerprint(earlier) == before


def test_a_rejected_normaliser_file_leaves_the_registry_as_it_was(tmp_path, capsys):
    registered = dict(REGISTRY)
    _prepare(tmp_path)
    for which in NORMALISER_FILES:
        assert _exit_code(["theory", "--out", str(tmp_path / "out"), "--normaliser-file",
                           str(tmp_path / f"{which}.py")]) == 2
    assert REGISTRY == registered


def test_a_well_formed_user_normaliser_passes_the_checks(tmp_path, monkeypatch):
    """The checks reject only what they should: a mean-only centring loads and validates."""
    monkeypatch.setattr("theory.normalisers.REGISTRY", dict(REGISTRY))  # registering it must not leak
    path = tmp_path / "centering.py"
    path.write_text(_NORMALISER_HEADER + '''
CENTERING_OK = Normaliser(name="centering_wellformed_test", title="t", axis="batch",
                          statistics=((mu, batch_mean(lambda i: y[i], "i")),),
                          hat=lambda sample: sample - mu, scale=sp.Integer(1), scale_of_sigma={})
''')
    (normaliser,) = normalisers.load_normaliser_file(path)
    check_well_formed(normaliser)


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path, monkeypatch, capsys):
    from verify import cli

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.pipeline, "stage_theory", interrupted)
    assert main(["theory", "--out", str(tmp_path)]) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert "interrupted" in line and "run the same command again to resume" in line
