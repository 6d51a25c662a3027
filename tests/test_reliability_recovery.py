"""Damaged results of an earlier run are never read as results: the run is set aside and recomputed,
and the report says so. A diverging run stops cleanly and the report and checks skip its non-finite state."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from empirics import runner
from empirics.config import PRESETS, Device, Norm
from empirics.experiments import run_specs
from verify import pipeline
from verify.cli import main

TINY = dataclasses.replace(
    PRESETS["smoke"], device=Device.CPU, experiments=("train",),
    train=dataclasses.replace(PRESETS["smoke"].train, steps=6, norms=(Norm.NONE, Norm.BATCHNORM), capture_every=3),
    checkpoint_every=2,
)


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]  # as a copy or a disk-full write cut short


def _garbage(data: bytes) -> bytes:
    return bytes(range(256)) * (1 + len(data) // 256)


def _flip_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]  # bit rot


DAMAGES = {"truncated": _truncate, "garbage": _garbage}


def _arrays(run: dict) -> dict[str, np.ndarray]:
    return {**{f"captures/{k}": v for k, v in run["captures"].items()},
            **{f"probes/{k}": v for k, v in run["probes"].items()}}


def _without_wall_clock(history: dict) -> dict:
    return {key: value for key, value in history.items() if key not in ("wall_s", "resumed_at")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-run sweep, and what its runs hold (to compare recomputed runs with)."""
    out = tmp_path_factory.mktemp("trained")
    directories = runner.run_all(TINY, out, progress=False)
    return out, {d.name: runner.load_run(d) for d in directories}


def _copy_of(trained, tmp_path):
    import shutil

    out, runs = trained
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out", runs


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["spec.json", "history.json", "captures.npz", "probes.npz"])
def test_a_damaged_result_file_is_set_aside_and_the_run_recomputed(name, damage, trained, tmp_path):
    out, runs = _copy_of(trained, tmp_path)
    victim = run_specs(TINY)[1].run_id  # the BN run: it has captures
    path = out / "runs" / victim / name
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(runner.CorruptRunError, match=f"{name} of run {victim}"):
        runner.load_run(out / "runs" / victim)

    runner.run_all(TINY, out, progress=False)

    (record,) = runner.recovered_runs(out)
    assert record["run_id"] == victim and name in record["reason"]
    assert record["set_aside_to"] == f"set_aside/{victim}.corrupt-1"
    assert (out / record["set_aside_to"] / name).read_bytes() == DAMAGES[damage](
        (trained[0] / "runs" / victim / name).read_bytes())  # kept as found, for inspection
    recomputed = runner.load_run(out / "runs" / victim)
    assert _without_wall_clock(recomputed["history"]) == _without_wall_clock(runs[victim]["history"])
    expected = _arrays(runs[victim])
    assert sorted(_arrays(recomputed)) == sorted(expected)
    for key, array in expected.items():
        assert np.array_equal(_arrays(recomputed)[key], array, equal_nan=array.dtype.kind == "f"), key  # NaN: not measured


def test_a_flipped_byte_inside_an_array_is_caught_by_the_zip_checksum(trained, tmp_path):
    out, _ = _copy_of(trained, tmp_path)
    victim = run_specs(TINY)[1].run_id
    path = out / "runs" / victim / "captures.npz"
    path.write_bytes(_flip_byte(path.read_bytes()))
    with pytest.raises(runner.CorruptRunError, match="captures.npz"):
        runner.load_run(out / "runs" / victim)


def test_a_spec_of_another_run_is_corrupt(trained, tmp_path):
    out, _ = _copy_of(trained, tmp_path)
    first, second = (out / "runs" / spec.run_id for spec in run_specs(TINY))
    (second / "spec.json").write_bytes((first / "spec.json").read_bytes())
    with pytest.raises(runner.CorruptRunError, match="describes another run"):
        runner.load_run(second)


def test_recovery_is_listed_in_results_and_in_one_line_of_the_report(trained, tmp_path):
    out, _ = _copy_of(trained, tmp_path)
    victim = run_specs(TINY)[0].run_id
    (out / "runs" / victim / "history.json").write_text('{"train": {"step": [0, 5')
    (out / "theory.json").write_text("{}")  # the report of measurements alone: no derivation needed here
    pipeline.write_config(TINY, "smoke", out)
    pipeline.stage_empirics(TINY, out, progress=False)
    results = pipeline.stage_report(TINY, out)
    (record,) = results["recovered_runs"]
    assert record["run_id"] == victim and "history.json" in record["reason"]
    assert json.loads((out / "results.json").read_text())["recovered_runs"] == [record]
    lines = [line for line in (out / "report.md").read_text().splitlines() if "Recovered:" in line]
    assert len(lines) == 1 and victim in lines[0] and f"{victim}.corrupt-1" in lines[0]


def test_report_alone_on_a_damaged_run_is_a_one_line_error_naming_the_fix(trained, tmp_path, capsys):
    out, _ = _copy_of(trained, tmp_path)
    victim = run_specs(TINY)[1].run_id
    (out / "runs" / victim / "probes.npz").write_bytes(b"")
    (out / "theory.json").write_text("{}")
    code = main(["report", "--preset", "smoke", "--out", str(out), "--device", "cpu", "--set", "experiments=train",
                 "--set", "train.steps=6", "--set", "train.norms=none,batchnorm", "--set", "train.capture_every=3"])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2 and f"probes.npz of run {victim}" in line and "python -m verify empirics" in line
    assert (out / "runs" / victim / "done").exists()  # the report stage moves nothing


def test_a_diverging_run_stops_cleanly_and_the_report_and_checks_skip_its_non_finite_state(tmp_path):
    """lr 1e6 overflows the loss within a few steps for both nets (BN's last linear layer is unnormalised)."""
    config = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, lrs=(1e6,), steps=12))
    (tmp_path / "theory.json").write_text("{}")
    pipeline.write_config(config, "smoke", tmp_path)
    pipeline.stage_empirics(config, tmp_path, progress=False)
    results = pipeline.stage_report(config, tmp_path)

    diverged = [r for r in results["training"] if r["diverged_at"] is not None]
    assert diverged, results["training"]
    for record in diverged:
        run = runner.load_run(runner.run_dir(tmp_path, record["run_id"]))
        history = run["history"]
        assert history["steps_done"] == record["diverged_at"] < config.train.steps
        assert history["last_finite"]["step"] == record["diverged_at"] - 1
        assert math.isfinite(history["last_finite"]["loss"])
        captured_steps = run["captures"]["step"]
        assert captured_steps.size == 0 or captured_steps.max() < record["diverged_at"]
    for check in results["checks"]:
        for key in ("worst_ratio", "median_ratio", "min_ratio"):
            assert check.get(key) is None or math.isfinite(check[key]), check
    lines = [line for line in (tmp_path / "report.md").read_text().splitlines() if "Diverged:" in line]
    assert len(lines) == 1 and all(r["run_id"] in lines[0] for r in diverged)
