"""Run every (norm, lr, seed) of an experiment into its own directory, resumably; load results.

Layout: out_dir/runs/<run_id>/{spec.json, history.json, captures.npz, done}. A run whose `done`
marker exists is complete and is never retrained, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import train
from .config import ExperimentConfig, run_specs, validate


def run_dir(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def run_all(config: ExperimentConfig, out_dir: Path, progress: bool = True) -> list[Path]:
    """Train every run of `config` not yet done; return all run directories in run_specs order."""
    validate(config)
    directories = []
    for spec in run_specs(config):
        directory = run_dir(out_dir, spec.run_id)
        if not (directory / "done").exists():
            train.train_run(spec, directory, progress=progress)
        directories.append(directory)
    return directories


def load_run(directory: Path) -> dict:
    """{"spec": spec.json, "history": history.json, "captures": {column: np.ndarray}} of one run."""
    directory = Path(directory)
    if not (directory / "done").exists():
        raise FileNotFoundError(f"{directory} has no 'done' marker: the run is missing or incomplete; rerun it")
    spec = json.loads((directory / "spec.json").read_text())
    history = json.loads((directory / "history.json").read_text())
    with np.load(directory / "captures.npz", allow_pickle=False) as archive:
        captures = {key: archive[key] for key in archive.files}
    return {"spec": spec, "history": history, "captures": captures}
