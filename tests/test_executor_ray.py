"""The Ray executor gives the local pool's results bit for bit, survives a killed worker by resuming the run
from its checkpoint, trains a user's normaliser file (--normaliser-file) in its workers as the local pool's
spawned processes and the driver itself do, and without Ray installed is a one-line error naming the install
command.

The slow tests start a Ray head of their own on 127.0.0.1 with 2 CPUs (`ray start --head --block` in its own
process group, stopped by SIGTERM at the end) and drive `python -m verify` as real subprocesses joining it
with --address, as on a cluster. The sweep is the smoke preset cut to the train and dln experiments (four
runs), with 120 steps and a checkpoint every 10, so a worker can be killed mid-run with a checkpoint on disk:
the worker is stopped (SIGSTOP) while its run has a checkpoint and no `done`, so the kill cannot land after
the run finished, whatever the machine's load. The report is made from an empty theory.json: the derivations
do not depend on the executor.
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
from empirics.config import PRESETS, ConfigError, Device, Executor, Norm
from empirics.experiments import run_specs
from empirics.ray_executor import INSTALL, check_address, task_resources
from empirics.train import CHECKPOINT
from tests.test_reliability_pipeline import _assert_same_measurements, comparable
from tests.test_user_normaliser_end_to_end import UNBIASED_BATCHNORM
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


# `python -c WITHOUT_RAY ARGS...` is `python -m verify ARGS...` in an interpreter where `import ray` (or any
# ray.*) fails as it does without the extra: the finder comes before every other, and nothing has imported Ray yet
WITHOUT_RAY = """
import importlib.abc, runpy, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRay())
runpy.run_module("verify", run_name="__main__", alter_sys=True)
"""


def test_python_m_verify_with_ray_unimportable_exits_2_with_one_line_naming_the_install_command(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run([sys.executable, "-c", WITHOUT_RAY, "empirics", "--preset", "smoke", "--out", str(out),
                                "--executor", "ray", "--no-progress"],
                               cwd=REPO, env=ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    lines = completed.stderr.splitlines()
    assert completed.returncode == 2 and len(lines) == 1, (completed.returncode, completed.stderr[-3000:])
    assert lines[0].startswith("verify: error: --executor ray needs Ray") and INSTALL in lines[0], lines[0]
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


def _same_computation(results: dict, scheduling: tuple[str, ...] = SCHEDULING_KEYS) -> dict:
    results = comparable(results)
    return {**results, "config": {k: v for k, v in results["config"].items() if k not in scheduling}}


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


def _checkpoint_step(run: Path) -> int:
    """The step a run resumes from if it is restarted now: next_step of its checkpoint.pt (written atomically)."""
    return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)["progress"].next_step


def _stop_a_worker_mid_run(out: Path, sweep: subprocess.Popen) -> tuple[Path, int, int]:
    """SIGSTOP the Ray worker of a run that has a checkpoint and no `done`; return (run, worker pid, checkpoint step).

    The run may finish between seeing its checkpoint and signalling its worker, which may then be idle or training
    another run; so the condition is checked again once the worker is stopped. Holding then, it cannot change:
    the worker that node.json names for the run's only attempt is inside that run, after a checkpoint (written
    after node.json) and before `done`, and the checkpoint it would resume from is the one on disk now."""
    deadline = time.monotonic() + RUN_TIMEOUT_S

    def mid_run(run: Path) -> bool:
        return (run / CHECKPOINT).exists() and not (run / "done").exists()

    while True:
        assert sweep.poll() is None, ("the sweep ended before any worker was caught mid-run (between a checkpoint and "
                                      f"`done`): {sweep.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"no run of the sweep reached a checkpoint in {RUN_TIMEOUT_S} s"
        for run in sorted(out.glob("runs/*")):
            if not mid_run(run):
                continue
            (attempt,) = _attempts(run)  # node.json is written (atomically) before the run's first checkpoint
            assert attempt["executor"] == "ray" and attempt["pid"] != sweep.pid  # a Ray worker, not the driver
            try:
                os.kill(attempt["pid"], signal.SIGSTOP)
            except ProcessLookupError:  # the worker has exited since: the run is done, or Ray retries it
                continue
            if mid_run(run):
                return run, attempt["pid"], _checkpoint_step(run)
            os.kill(attempt["pid"], signal.SIGCONT)  # it finished meanwhile: let its worker go on
        time.sleep(POLL_S)


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_its_run_resumes_from_the_checkpoint(ray_head, local_pool, tmp_path):
    local_out, local_results = local_pool
    out = tmp_path / "ray-killed"
    out.mkdir()
    (out / "theory.json").write_text("{}")
    sweep = _verify("empirics", out, "--executor", "ray", "--address", ray_head)
    try:
        victim, pid, step = _stop_a_worker_mid_run(out, sweep)
        os.kill(pid, signal.SIGKILL)  # a stopped process dies too, at once
        _finish(sweep)
    finally:
        if sweep.poll() is None:  # a failed assertion: stop the driver (Ray ends its job's workers with it)
            sweep.kill()
            sweep.communicate()
    results = _report(out, "--executor", "ray", "--address", ray_head)

    attempts = _attempts(victim)
    assert len(attempts) == 2 and attempts[0]["pid"] == pid != attempts[1]["pid"], (
        f"run {victim.name} was not retried once in a new worker after its worker {pid} was killed: {attempts}")
    resumed_at = json.loads((victim / "history.json").read_text())["resumed_at"]
    assert resumed_at == [step], f"run {victim.name} resumed at {resumed_at}, not at its checkpoint's step {step}"
    assert not list((out / "runs").glob("*/checkpoint.pt"))
    assert _same_computation(results) == _same_computation(local_results)
    _assert_same_measurements(out, local_out)


# --- a user's normaliser file in other processes -----------------------------------------------------------

# the norms experiment (the user's formula beside BatchNorm and none) and the deep linear network with it: a
# user's formula in both kinds of run; the smoke preset's checkpoint every 10 steps makes each worker resume-ready
USER_SWEEP = ["--preset", "smoke", "--norm", "unbiased_bn_e2e", "--set", "experiments=norms,dln",
              "--set", "dln.norms=none,unbiased_bn_e2e", "--no-progress"]
# where the runs were trained, not what they computed: with workers (1 in-process, 2 spawned processes)
USER_SCHEDULING_KEYS = (*SCHEDULING_KEYS, "workers")


def _user_sweep(out: Path, normaliser_file: Path, *extra: str) -> tuple[dict, int]:
    """`verify empirics`, then `verify report`, with the user's file, each in its own interpreter (this one's
    registry stays the project's); returns results.json and the pid of the driver that trained the runs."""
    out.mkdir(parents=True)
    (out / "theory.json").write_text("{}")
    argv = [*USER_SWEEP, "--normaliser-file", str(normaliser_file), *extra]
    driver = _verify_with("empirics", out, argv)
    _finish(driver)
    _finish(_verify_with("report", out, argv))
    return json.loads((out / "results.json").read_text()), driver.pid


def _verify_with(command: str, out: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "verify", command, "--out", str(out), *argv],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def user_normaliser_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "unbiased.py"
    path.write_text(UNBIASED_BATCHNORM)
    return path


@pytest.fixture(scope="module")
def user_in_process(user_normaliser_file, tmp_path_factory) -> tuple[Path, dict]:
    """The user sweep trained by the driver itself, run after run (workers=1: empirics.executors.Sequential)."""
    out = tmp_path_factory.mktemp("user-in-process") / "out"
    results, driver = _user_sweep(out, user_normaliser_file, "--set", "workers=1")
    assert {attempt["pid"] for run in (out / "runs").iterdir() for attempt in _attempts(run)} == {driver}
    return out, results


def test_a_worker_refuses_a_run_whose_user_formula_changed_since_the_driver_named_it(tmp_path, monkeypatch):
    import theory.normalisers as normalisers

    project = dict(normalisers.REGISTRY)
    monkeypatch.setattr(normalisers, "REGISTRY", dict(project))  # this process's registry is left as it was
    monkeypatch.setitem(sys.modules, "normcheck_user_normalisers.unbiased", None)  # removed again afterwards
    path = tmp_path / "unbiased.py"
    path.write_text(UNBIASED_BATCHNORM)
    normalisers.load_normaliser_file(path)  # the driver: its run ids hash this formula
    config = dataclasses.replace(PRESETS["smoke"], experiments=("norms",), normaliser_files=(str(path),),
                                 norms_normalisers=(Norm("unbiased_bn_e2e"),))
    (spec,) = [spec for spec in run_specs(config) if spec.norm.value == "unbiased_bn_e2e"]
    driver_run_id = spec.run_id
    directory = tmp_path / "runs" / driver_run_id

    path.write_text(UNBIASED_BATCHNORM.replace("hat=lambda sample: (", "hat=lambda sample: 2 * ("))  # edited
    monkeypatch.setattr(normalisers, "REGISTRY", dict(project))  # a fresh worker: the project's registry only
    with pytest.raises(ConfigError, match=f"run {driver_run_id} is run unbiased_bn_e2e-.* differs from the one"):
        executors.train_task(spec, directory)
    assert sorted(p.name for p in directory.iterdir()) == [executors.NODE_FILE]  # nothing trained or written


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local pool", "ray"])
def test_a_user_normaliser_file_trains_in_worker_processes_as_in_the_driver_bit_for_bit(
        executor, user_normaliser_file, user_in_process, request, tmp_path):
    reference_out, reference = user_in_process
    extra = (["--set", "workers=2"] if executor == "local pool"
             else ["--executor", "ray", "--address", request.getfixturevalue("ray_head")])
    out = tmp_path / "out"
    results, driver = _user_sweep(out, user_normaliser_file, *extra)

    runs = sorted(run.name for run in (out / "runs").iterdir())
    assert runs == sorted(run.name for run in (reference_out / "runs").iterdir())  # the driver's run ids ...
    assert {run.split("-lr")[0] for run in runs} >= {"unbiased_bn_e2e", "dln-unbiased_bn_e2e"}
    for name in runs:
        run = out / "runs" / name
        assert json.loads((run / "spec.json").read_text())["run_id"] == name  # ... are the workers' too
        (attempt,) = _attempts(run)
        assert attempt["pid"] != driver and attempt["executor"] == ("ray" if executor == "ray" else "local")
    got, expected = _same_computation(results, USER_SCHEDULING_KEYS), _same_computation(reference, USER_SCHEDULING_KEYS)
    differing = sorted(key for key in set(got) | set(expected) if got.get(key) != expected.get(key))
    assert not differing, f"results.json of the {executor} differs from the driver's in {differing}"
    _assert_same_measurements(out, reference_out)  # every captures/probes/checks array, bit for bit
