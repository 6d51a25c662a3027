"""What trains the pending runs of a sweep: one interface, three implementations.

    Sequential   in this process, one run after another (config.workers == 1, or a single run)
    LocalPool    config.workers spawned processes on this machine
    RayTasks     one Ray task per run, on a local Ray instance or a cluster (empirics.ray_executor)

Each takes [(RunSpec, run directory)] and returns when every run is done, with one progress bar over
the runs. Every run is trained by the same `train_task`, whatever the executor, and so depends only
on its config and seed, never on where or after what it ran:

- numerics are pinned per run (`pinned_numerics`): torch threads from config.threads, the backend
  flags a fresh torch process starts with (TF32, cuDNN benchmark and determinism: a worker process
  that trained something else before, or a notebook that flipped them, changes nothing), and the
  global RNGs seeded from the run's seed (a run draws only from its own generators, empirics.train;
  seeding the global ones too makes any stray draw order-independent). All are restored afterwards.
- the run directory's files are written atomically and `done` last (empirics.train), so on a shared
  filesystem a run is either finished or resumable from its checkpoint, whichever process died.

Each attempt at a run appends {host, pid, executor, ray_node_id, accelerators, started} to the run
directory's node.json (a retried or resumed run has several). Nothing in results.json reads it.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import random
import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from . import train
from .config import ConfigError, Device, Executor, ExperimentConfig, RunSpec, register_normaliser_files
from .storage import write_json

NODE_FILE = "node.json"  # in a run directory: where each attempt at the run ran

# The numerics-relevant backend flags of a fresh torch process (torch's documented defaults); every run
# is trained under exactly these, on every executor, and history.json records them (empirics.train)
FRESH_BACKEND = {
    "cudnn_allow_tf32": True,
    "float32_matmul_precision": "highest",  # implies torch.backends.cuda.matmul.allow_tf32 = False
    "cudnn_benchmark": False,
    "cudnn_deterministic": False,
}

Pending = Sequence[tuple[RunSpec, Path]]


class RunExecutor(Protocol):
    def run(self, pending: Pending, progress: bool) -> None:
        """Train every (spec, directory) of `pending` to its `done` marker; raise the first run's error."""


def _backend() -> dict:
    return {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic}


def _set_backend(flags: dict) -> None:
    torch.backends.cudnn.allow_tf32 = flags["cudnn_allow_tf32"]
    torch.set_float32_matmul_precision(flags["float32_matmul_precision"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]


@contextmanager
def pinned_numerics(spec: RunSpec) -> Iterator[None]:
    """Threads (config.threads; 0 keeps the process's default), FRESH_BACKEND and global RNGs seeded
    from spec.seed for the duration of one run; everything restored afterwards."""
    threads, backend = torch.get_num_threads(), _backend()
    python_rng, numpy_rng, torch_rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        if spec.config.threads:
            torch.set_num_threads(spec.config.threads)
        _set_backend(FRESH_BACKEND)
        random.seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        torch.default_generator.manual_seed(spec.seed)
        if cuda_rng is not None:
            torch.cuda.manual_seed_all(spec.seed)
        yield
    finally:
        torch.set_num_threads(threads)
        _set_backend(backend)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _ray_node_id() -> str | None:
    import sys

    if "ray" not in sys.modules:  # never import Ray for a local run
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def record_attempt(directory: Path, executor: Executor) -> dict:
    """Append where this attempt at the run is made to directory/node.json; return the record."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NODE_FILE
    try:
        attempts = json.loads(path.read_text())["attempts"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: the record is informative only
        attempts = []
    record = {"host": socket.gethostname(), "pid": os.getpid(), "executor": executor.value,
              "ray_node_id": _ray_node_id(),
              "accelerators": os.environ.get("CUDA_VISIBLE_DEVICES"),  # set by Ray for a task with num_gpus
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json(path, {"attempts": [*attempts, record]})
    return record


def _register_user_normalisers(spec: RunSpec, directory: Path) -> None:
    """Register the run's --normaliser-file formulas in this process (a spawned or Ray worker starts with the
    project's registry only) and check that the run id, which hashes a user's formula, is still the one the
    driver named `directory` by: a file edited since the sweep started, or a node that sees another file at
    that path, would otherwise write another formula's results under this run's id."""
    try:
        register_normaliser_files(spec.config.normaliser_files)
    except FileNotFoundError as error:
        raise ConfigError(f"{error} on host {socket.gethostname()}; every machine that trains runs must see each "
                          "--normaliser-file at the same path (a shared filesystem, as for --out)") from None
    if spec.run_id != directory.name:
        raise ConfigError(f"run {directory.name} is run {spec.run_id} on host {socket.gethostname()}: a formula of "
                          f"{', '.join(spec.config.normaliser_files)} differs from the one the sweep started with; "
                          "keep the files unchanged (and the same on every node) while a sweep runs, then rerun it")


def train_task(spec: RunSpec, directory: Path, executor: Executor = Executor.LOCAL, progress: bool = False) -> str:
    """One run, as every executor trains it: record the attempt, register the user's normaliser files, pin the
    numerics, train (resuming from the directory's checkpoint if there is one). `directory` is the run's
    directory as the driver named it, out/runs/<run id> (empirics.runner.run_dir). Returns the run id."""
    directory = Path(directory)
    record_attempt(directory, executor)
    _register_user_normalisers(spec, directory)
    with pinned_numerics(spec):
        train.train_run(spec, directory, progress=progress)
    return spec.run_id


class Sequential:
    """Every run in this process, one after another, each with its own progress bar."""

    def run(self, pending: Pending, progress: bool) -> None:
        for spec, directory in pending:
            train_task(spec, directory, Executor.LOCAL, progress=progress)


class LocalPool:
    """`workers` spawned processes on this machine (fork after torch has started threads is unsafe)."""

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, pending: Pending, progress: bool) -> None:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(pending)), mp_context=context) as pool:
            futures = [pool.submit(train_task, spec, directory) for spec, directory in pending]
            with tqdm(total=len(futures), desc="runs", disable=not progress, unit="run") as bar:
                for future in as_completed(futures):
                    bar.set_postfix_str(future.result())
                    bar.update()


def check_executor(config: ExperimentConfig) -> None:
    """Reject executor settings no sweep can use (and --executor ray without Ray installed), with the fix."""
    if config.executor is Executor.LOCAL and config.address:
        raise ConfigError(f"--address {config.address} is for --executor ray; add --executor ray or drop --address")
    if config.num_cpus < 0 or not (config.num_gpus >= 0 or config.num_gpus == -1):
        raise ConfigError(f"num_cpus={config.num_cpus} must be >= 0 and num_gpus={config.num_gpus} >= 0 "
                          "(or -1: one GPU for a run on CUDA); fractions are allowed")
    if config.device is Device.CUDA and config.num_gpus == 0:
        raise ConfigError("--device cuda with num_gpus=0 would train on a GPU no task reserved; "
                          "set num_gpus > 0 (e.g. 0.25 to share a card) or leave it at -1")
    if config.executor is Executor.RAY:
        from .ray_executor import check_address, require_ray

        require_ray()
        check_address(config.address)


def executor_for(config: ExperimentConfig, pending: Pending) -> RunExecutor:
    """The executor config asks for; the local one runs in-process when it would spawn a single worker."""
    if config.executor is Executor.RAY:
        from .ray_executor import RayTasks

        return RayTasks(config)
    if config.workers == 1 or len(pending) <= 1:
        return Sequential()
    return LocalPool(config.workers)
