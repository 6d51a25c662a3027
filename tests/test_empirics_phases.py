"""The run's phase clock (empirics.phases) and the bench's whole-run breakdown built on it (verify.run_profile)."""

from __future__ import annotations

import dataclasses

import pytest

from empirics.config import PRESETS, Device, Norm, RunSpec
from empirics.phases import PhaseClock
from empirics.train import train_run
from verify.run_profile import breakdown, profile_run

SMOKE = dataclasses.replace(PRESETS["smoke"], device=Device.CPU)


def test_a_run_times_every_step_and_phase(tmp_path):
    clock = PhaseClock()
    spec = RunSpec(SMOKE, Norm.BATCHNORM, 0.1, 0)
    train_run(spec, tmp_path / "run", progress=False, clock=clock)
    t = SMOKE.train
    captured = len(range(0, t.steps, t.capture_every)) + (1 if (t.steps - 1) % t.capture_every else 0)
    assert len(clock.captured_steps) == captured and len(clock.plain_steps) == t.steps - captured
    assert clock.counts["eval"] == len(range(0, t.steps, t.eval_every)) + 1  # the last test eval with the train eval
    assert clock.counts["setup"] == clock.counts["write"] == 1
    assert clock.counts["capture_collect"] == captured
    assert all(seconds >= 0 for seconds in clock.seconds.values())


def test_breakdown_ratios_add_up_to_the_run_overhead():
    clock = PhaseClock(plain_steps=[1.0, 1.0, 3.0], captured_steps=[1.5])
    clock.add("eval", 0.5)
    clock.add("probes", 0.75)
    clock.add("probe:landscape", 0.5)
    clock.add("capture_collect", 0.25)
    result = breakdown(clock, total=9.0)
    parts = result["breakdown"]
    assert result["plain_step_s"] == 1.0 and result["run_overhead"] == pytest.approx(9.0 / 4)
    assert parts["steps"] == pytest.approx(6.0 / 4)  # the slow plain step counts as it ran; the captured one at 1
    assert parts["captures"] == pytest.approx((0.5 + 0.25) / 4)
    assert parts["landscape"] == pytest.approx(0.5 / 4) and parts["probes_other"] == pytest.approx(0.25 / 4)
    assert sum(parts.values()) == pytest.approx(result["run_overhead"])


def test_profiled_smoke_run_attributes_its_probes_by_kind():
    run = profile_run("smoke", Norm.BATCHNORM, PhaseClock().now)
    parts = run["breakdown"]
    for kind in ("landscape", "ics", "curvature", "weights", "hist"):  # the smoke BN run carries every probe
        assert parts[kind] > 0, kind
    assert run["run_overhead"] == pytest.approx(sum(parts.values()))
