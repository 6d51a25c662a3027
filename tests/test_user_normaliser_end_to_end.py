"""A researcher's formula from one file to a trained network: `python -m verify all --normaliser-file my.py
--norm my` derives it, trains the default model with it beside BatchNorm and the unnormalised network (the
norms experiment), and reports both sides in results.json. The file is written here, not shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# BatchNorm with the unbiased variance: sigma^2 = m/(m-1) var + eps (m the channel's batch)
UNBIASED_BATCHNORM = '''
import sympy as sp
from theory.batch_algebra import batch_mean, m, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
var = sp.Symbol("var", nonnegative=True)

UNBIASED = Normaliser(
    name="unbiased_bn_e2e", title="BatchNorm with the unbiased variance",
    axis="batch: one unit over the m samples (a conv channel: all sample-position pairs)",
    statistics=((mu, batch_mean(lambda i: y[i], "i")), (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
    hat=lambda sample: (sample - mu) / sp.sqrt(var * m / (m - 1) + eps),
    scale=sp.sqrt(var * m / (m - 1) + eps),
    scale_of_sigma={var: (sigma**2 - eps) * (m - 1) / m},
)
'''


@pytest.mark.slow
def test_verify_all_derives_trains_and_reports_a_new_normaliser_file(tmp_path):
    path = tmp_path / "unbiased.py"
    path.write_text(UNBIASED_BATCHNORM)
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "verify", "all", "--preset", "smoke", "--normaliser-file", str(path),
         "--norm", "unbiased_bn_e2e", "--set", "experiments=norms", "--out", str(out), "--no-progress"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["theory"]) == ["unbiased_bn_e2e"] and results["theory"]["unbiased_bn_e2e"]
    trained = {record["norm"]: record for record in results["training"]}
    assert set(trained) == {"unbiased_bn_e2e", "batchnorm", "none"}  # with both references
    assert trained["unbiased_bn_e2e"]["steps_done"] == 30
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/spec.json")]
    assert {spec["norm"] for spec in runs} == set(trained)
    assert results["config"]["normaliser_files"] == [str(path.resolve())]
    # its statements checked on the trained network's captures: thm4.1 (proved for this formula) holds on every row
    checked = {}
    for record in results["checks"]:
        if record["normaliser"] == "unbiased_bn_e2e":
            total = checked.setdefault(record["claim"], [0, 0])
            total[0] += record["n_checked"]
            total[1] += record["n_violations"]
    assert results["theory"]["unbiased_bn_e2e"]["thm4.1"]["status"] == "proved"
    assert checked["thm4.1"][0] > 0 and checked["thm4.1"][1] == 0, checked
    assert {"thm4.4-per-unit", "thm4.4"} <= set(checked), checked  # the weight-space forms on its weight terms
