"""The Ray executor gives the local pool's results bit for bit, survives a killed worker by resuming the run
from its checkpoint, and without Ray installed is a one-line error naming the install command.

The slow tests start a Ray head of their own on 127.0.0.1 with 2 CPUs (`ray start --head --block` in its own
process group, stopped by SIGTERM at the end) and drive `python -m verify` as real subprocesses joining it
with --address, as on a cluster. The sweep is the smoke preset cut to the train and dln experiments (four
runs), with 120 steps and a checkpoint every 10, so a worker can be killed mid-run with a checkpoint on disk.
The report is made from an empty theory.json: the derivations do not depend on the executor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from empirics import executors
from empirics.config import PRESETS, ConfigError, Device, Executor
from empirics.experiments import run_specs
from empirics.ray_executor import check_address, task_resources
from tests.test_reliability_pipeline import _assert_same_measurements, comparable
from verify.cli import main

REPO = Path(__file__).resolve().parent.parent
SWEEP = ["--preset", "smoke", "--set", "experiments=train,dln", "--set", "train.steps=120", "--set", "dln.steps=120",
         "--set", "checkpoint_every=10", "--set", "workers=2", "--no-progress"]
# keys of results.json that say where the runs were trained, not what they computed (not in run ids)
SCHEDULING_KEYS = ("executor", "address")
ENV = {**os.environ, "PYTHONPATH": str(REPO),
       "RAY_AUTH_MODE": "disabled",  # a throwaway head on 127.0.0.1: no token files written to ~/.ray
       "RAY_USAGE_STATS_ENABLED": "0"}
HEAD_START_S = 180  # `ray start --head` takes ~10 s here; far longer on a loaded CI machine
HEAD_STOP_S = 10  # a graceful stop waits ~30 s for its processes; nothing of the throwaway head needs it
RUN_TIMEOUT_S = 600
POLL_S = 0.01


# --- without a cluster -------------------------------------------------------------------------------

def test_executor_ray_without_ray_installed_is_one_line_naming_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when not installed
    out = tmp_path / "out"
    code = main(["empirics", "--preset", "smoke", "--out", str(out), "--executor", "ray"])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2 and "pip install 'normcheck[ray]'" in line and "--executor ray" in line
    assert not out.exists()  # checked before any stage writes


@pytest.mark.parametrize("argv, message", [
    (["--executor", "ray", "--address", "not an address"], "is not a Ray address"),
    (["--address", "auto"], "is for --executor ray"),
    (["--executor", "ray", "--set", "num_gpus=-2"], "num_gpus=-2.0"),
])
def test_bad_executor_settings_are_one_line_errors_before_anything_is_written(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["empirics", "--preset", "smoke", "--out", str(out), *argv])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2 and message in line and not out.exists()


def test_ray_addresses_accepted_are_auto_host_port_and_ray_client():
    for address in ("", "auto", "10.0.0.1:6379", "head-node:6379", "ray://head-node:10001"):
        check_address(address)
    for address in ("auto:6379x", "ray://", "head-node"):
        with pytest.raises(ConfigError, match="not a Ray address"):
            check_address(address)


def test_scheduling_settings_do_not_change_run_ids():
    smoke = PRESETS["smoke"]
    elsewhere = dataclasses.replace(smoke, executor=Executor.RAY, address="auto", num_cpus=2.0, num_gpus=0.25,
                                    workers=7)
    assert [s.run_id for s in run_specs(elsewhere)] == [s.run_id for s in run_specs(smoke)]


def test_task_resources_default_to_the_runs_threads_and_device_and_allow_fractions():
    smoke = PRESETS["smoke"]
    assert task_resources(smoke, cluster_has_gpus=False) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert task_resources(smoke, cluster_has_gpus=True) == {"num_cpus": 1.0, "num_gpus": 1.0}  # device auto
    cpu = dataclasses.replace(smoke, device=Device.CPU, threads=4)
    assert task_resources(cpu, cluster_has_gpus=True) == {"num_cpus": 4.0, "num_gpus": 0.0}
    shared = dataclasses.replace(smoke, device=Device.CUDA, threads=0, num_gpus=0.25)
    assert task_resources(shared, cluster_has_gpus=True) == {"num_cpus": 1.0, "num_gpus": 0.25}


def test_a_run_is_trained_under_pinned_numerics_and_everything_is_restored_afterwards():
    spec = run_specs(dataclasses.replace(PRESETS["smoke"], threads=2))[0]
    torch.backends.cudnn.benchmark = True  # as a notebook might have left it
    threads, before = torch.get_num_threads(), executors._backend()
    rng = torch.get_rng_state()
    try:
        with executors.pinned_numerics(spec):
            assert torch.get_num_threads() == 2 and executors._backend() == executors.FRESH_BACKEND
            draws = (random.random(), float(np.random.rand()), torch.rand(()).item())
        with executors.pinned_numerics(spec):  # the same draws whatever ran before in the process
            assert (random.random(), float(np.random.rand()), torch.rand(()).item()) == draws
        assert torch.get_num_threads() == threads and executors._backend() == before
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        torch.backends.cudnn.benchmark = False


# --- a Ray head on 127.0.0.1 -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """The address of a Ray head with 2 CPUs on 127.0.0.1, started for this module and stopped after it."""
    port = _free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    log = temp_dir / "head.log"
    with open(log, "wb") as sink:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp_dir}"],
            env=ENV, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_S
        while b"Ray runtime started" not in log.read_bytes():
            assert head.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the Ray head did not start in {HEAD_START_S} s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops every process of its node on SIGTERM
        try:
            head.wait(timeout=HEAD_STOP_S)
        except subprocess.TimeoutExpired:  # its workers exit on their own once their raylet is gone
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _verify(command: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "verify", command, "--out", str(out), *SWEEP, *extra],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, stderr.decode()[-3000:]


def _report(out: Path, *extra: str) -> dict:
    """`verify report` in this process (it trains nothing; the interpreter's start-up is most of its time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # results.json records the reporting process's threads: the same in every report
    try:
        assert main(["report", "--out", str(out), *SWEEP, *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "results.json").read_text())


def _sweep(out: Path, *extra: str) -> dict:
    out.mkdir(parents=True)
    (out / "theory.json").write_text("{}")
    _finish(_verify("empirics", out, *extra))
    return _report(out, *extra)


def _same_computation(results: dict) -> dict:
    results = comparable(results)
    return {**results, "config": {k: v for k, v in results["config"].items() if k not in SCHEDULING_KEYS}}


def _attempts(run: Path) -> list[dict]:
    return json.loads((run / executors.NODE_FILE).read_text())["attempts"]


@pytest.fixture(scope="module")
def local_pool(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("local") / "out"
    return out, _sweep(out)


@pytest.mark.slow
def test_the_smoke_sweep_through_ray_equals_the_local_pool_bit_for_bit(ray_head, local_pool, tmp_path):
    local_out, local_results = local_pool
    out = tmp_path / "ray"
    results = _sweep(out, "--executor", "ray", "--address", ray_head)

    assert results["config"]["executor"] == "ray" and local_results["config"]["executor"] == "local"
    assert _same_computation(results) == _same_computation(local_results)
    _assert_same_measurements(out, local_out)  # every captures/probes/checks array, bit for bit
    for run in (out / "runs").iterdir():
        (attempt,) = _attempts(run)
        assert attempt["executor"] == "ray" and attempt["ray_node_id"] and attempt["host"]


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_its_run_resumes_from_the_checkpoint(ray_head, local_pool, tmp_path):
    local_out, local_results = local_pool
    out = tmp_path / "ray-killed"
    out.mkdir()
    (out / "theory.json").write_text("{}")
    sweep = _verify("empirics", out, "--executor", "ray", "--address", ray_head)

    victim, deadline = None, time.monotonic() + RUN_TIMEOUT_S
    while victim is None:
        assert sweep.poll() is None, f"the sweep ended before a worker was killed: {sweep.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no run reached a checkpoint"
        for run in sorted((out / "runs").glob("*")) if (out / "runs").exists() else ():
            if (run / "checkpoint.pt").exists() and not (run / "done").exists():
                (attempt,) = _attempts(run)
                assert attempt["executor"] == "ray" and attempt["pid"] != sweep.pid  # a Ray worker, not the driver
                os.kill(attempt["pid"], signal.SIGKILL)
                victim = run
                break
        time.sleep(POLL_S)
    _finish(sweep)
    results = _report(out, "--executor", "ray", "--address", ray_head)

    first, retry = _attempts(victim)
    assert first["pid"] != retry["pid"]  # Ray retried the task in a new worker ...
    assert json.loads((victim / "history.json").read_text())["resumed_at"]  # ... which resumed from the checkpoint
    assert not list((out / "runs").glob("*/checkpoint.pt"))
    assert _same_computation(results) == _same_computation(local_results)
    _assert_same_measurements(out, local_out)
