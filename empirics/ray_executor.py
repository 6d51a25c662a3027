"""Runs of a sweep as Ray tasks (`--executor ray`, the optional extra normcheck[ray]).

One task per pending run, reserving `task_resources(config)`: num_cpus (config.num_cpus, else
config.threads, else 1) and num_gpus (config.num_gpus, else 1 for a run on CUDA, else 0; fractions
let several small runs share one card). Ray sets CUDA_VISIBLE_DEVICES of a GPU task, so the run's
device "cuda" is the card Ray gave it; for num_cpus it sets OMP_NUM_THREADS, which is torch's thread
count when config.threads is 0.

address "" starts a Ray instance on this machine (stopped at the end); "auto" joins the cluster
this machine belongs to (`ray start`), and "host:port" or "ray://host:port" (Ray Client) one
elsewhere. Every task writes its run directory under --out, which on a cluster must be a filesystem
every node sees at the same path. A task whose worker or node dies is retried by Ray (MAX_RETRIES)
and resumes from the run's checkpoint (empirics.train); an error raised by the run itself is not
retried (it would fail again) and stops the sweep.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from tqdm import tqdm

from .config import ConfigError, Device, Executor, ExperimentConfig
from .executors import Pending, train_task

INSTALL = "pip install 'normcheck[ray]'"
MIN_VERSION = (2, 50)
# retries of a task whose worker process or node died (preemption, OOM kill): each resumes from the last
# checkpoint, so a retry costs at most checkpoint_every steps
MAX_RETRIES = 3
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def require_ray():
    """The ray module, or a ConfigError naming the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed; install it with {INSTALL}") from None
    version = tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2])
    if version < MIN_VERSION:
        raise ConfigError(f"--executor ray needs Ray >= {'.'.join(map(str, MIN_VERSION))}, found {ray.__version__}; "
                          f"upgrade with {INSTALL} --upgrade")
    return ray


def check_address(address: str) -> None:
    if address and not _ADDRESS.match(address):
        raise ConfigError(f"--address {address!r} is not a Ray address; give auto, host:port or ray://host:port, "
                          "or leave it out to start Ray on this machine")


def task_resources(config: ExperimentConfig, cluster_has_gpus: bool) -> dict[str, float]:
    """{"num_cpus", "num_gpus"} one run's task reserves (see the module docstring)."""
    num_cpus = config.num_cpus or config.threads or 1
    if config.num_gpus >= 0:
        num_gpus = config.num_gpus
    elif config.device is Device.AUTO:
        num_gpus = 1 if cluster_has_gpus else 0
    else:
        num_gpus = 1 if config.device is Device.CUDA else 0
    return {"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)}


def _largest_node(ray) -> dict[str, float]:
    """The most CPUs and GPUs any one live node offers (a task must fit on one node)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return {key: max((node.get(key, 0.0) for node in nodes), default=0.0) for key in ("CPU", "GPU")}


class RayTasks:
    """One Ray task per run; results stream back as runs finish (executors.RunExecutor)."""

    def __init__(self, config: ExperimentConfig):
        self.config = config

    def _connect(self, ray) -> bool:
        """Start or join Ray; True if this call did (and must disconnect at the end)."""
        if ray.is_initialized():  # e.g. a notebook that connected already: use its cluster as it is
            return False
        address = self.config.address
        # worker output stays in Ray's session logs (/tmp/ray/session_latest/logs), not on this terminal
        options = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(address="local", include_dashboard=False, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"cannot start or join Ray at address {address or '(a new local instance)'} "
                              f"({first_line}); start the cluster with `ray start --head`, or fix --address") from None
        return True

    def _check_fits(self, ray, resources: dict[str, float]) -> None:
        largest = _largest_node(ray)
        if resources["num_gpus"] > largest["GPU"] or resources["num_cpus"] > largest["CPU"]:
            raise ConfigError(f"each run asks Ray for {resources['num_cpus']:g} CPU(s) and {resources['num_gpus']:g} "
                              f"GPU(s), but the largest node has {largest['CPU']:g} and {largest['GPU']:g}; "
                              "lower --set num_cpus / num_gpus or add nodes")

    def run(self, pending: Pending, progress: bool) -> None:
        ray = require_ray()
        connected = self._connect(ray)
        try:
            resources = task_resources(self.config, _largest_node(ray)["GPU"] > 0)
            self._check_fits(ray, resources)
            task = ray.remote(train_task).options(max_retries=MAX_RETRIES, retry_exceptions=False, **resources)
            run_ids = {task.remote(spec, Path(directory), Executor.RAY): spec.run_id for spec, directory in pending}
            self._collect(ray, run_ids, progress)
        finally:
            if connected:
                ray.shutdown()

    @staticmethod
    def _collect(ray, run_ids: dict, progress: bool) -> None:
        """Wait for every task, updating the bar as each finishes; on a failure cancel the rest and raise it."""
        remaining = list(run_ids)
        with tqdm(total=len(remaining), desc="runs", disable=not progress, unit="run") as bar:
            while remaining:
                (ready,), remaining = ray.wait(remaining, num_returns=1)
                try:
                    ray.get(ready)
                except ray.exceptions.RayTaskError as error:  # the run raised: its own message, as locally
                    _cancel(ray, remaining)
                    if isinstance(error.cause, (ConfigError, FileNotFoundError)):
                        raise error.cause from None
                    raise error.as_instanceof_cause() from None
                except ray.exceptions.RayError as error:  # its worker or node died more than MAX_RETRIES times
                    _cancel(ray, remaining)
                    raise RuntimeError(f"run {run_ids[ready]} was lost {MAX_RETRIES + 1} times on Ray "
                                       f"({type(error).__name__}); run the same command again to resume it from "
                                       "its checkpoint") from error
                bar.set_postfix_str(run_ids[ready])
                bar.update()


def _cancel(ray, refs: list) -> None:
    for ref in refs:
        ray.cancel(ref)

