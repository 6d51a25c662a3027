"""Run every (norm, lr, seed) of an experiment into its own directory, resumably; load results.

Layout: out_dir/runs/<run_id>/{spec.json, history.json, captures.npz, done}. A run whose `done`
marker exists is complete and is never retrained, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import train
from .config import ExperimentConfig, RunSpec, run_specs, validate


def run_dir(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def _train_in_worker(spec: RunSpec, directory: Path) -> str:
    """Entry point of a worker process: its own thread count, no per-run progress bar."""
    if spec.config.threads:
        torch.set_num_threads(spec.config.threads)
    train.train_run(spec, directory, progress=False)
    return spec.run_id


def run_all(config: ExperimentConfig, out_dir: Path, progress: bool = True) -> list[Path]:
    """Train every run of `config` not yet done; return all run directories in run_specs order.

    With config.workers > 1 the pending runs are trained in that many spawned processes; every run
    is seeded on its own, so the results do not depend on the number of workers or their order.
    """
    validate(config)
    specs = run_specs(config)
    directories = [run_dir(out_dir, spec.run_id) for spec in specs]
    pending = [(s, d) for s, d in zip(specs, directories) if not (d / "done").exists()]
    if config.workers == 1 or len(pending) <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(config.threads or threads)
        try:
            for spec, directory in pending:
                train.train_run(spec, directory, progress=progress)
        finally:
            torch.set_num_threads(threads)
        return directories
    context = multiprocessing.get_context("spawn")  # fork after torch has threads is unsafe
    with ProcessPoolExecutor(max_workers=min(config.workers, len(pending)), mp_context=context) as pool:
        futures = [pool.submit(_train_in_worker, spec, directory) for spec, directory in pending]
        with tqdm(total=len(futures), desc="runs", disable=not progress, unit="run") as bar:
            for future in as_completed(futures):
                bar.set_postfix_str(future.result())
                bar.update()
    return directories


def load_run(directory: Path) -> dict:
    """{"spec", "history", "captures": {column: array}, "probes": {"<probe>/<column>": array}} of one run."""
    directory = Path(directory)
    if not (directory / "done").exists():
        raise FileNotFoundError(f"{directory} has no 'done' marker: the run is missing or incomplete; rerun it")
    spec = json.loads((directory / "spec.json").read_text())
    history = json.loads((directory / "history.json").read_text())
    with np.load(directory / "captures.npz", allow_pickle=False) as archive:
        captures = {key: archive[key] for key in archive.files}
    probes: dict[str, np.ndarray] = {}
    if (directory / "probes.npz").exists():
        with np.load(directory / "probes.npz", allow_pickle=False) as archive:
            probes = {key: archive[key] for key in archive.files}
    return {"spec": spec, "history": history, "captures": captures, "probes": probes}
