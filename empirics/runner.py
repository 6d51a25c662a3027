"""Run every (norm, lr, seed) of an experiment into its own directory, resumably; load results.

Layout: out_dir/runs/<run_id>/{spec.json, history.json, captures.npz, probes.npz, done}, plus
checkpoint.pt while a run is in progress. A run whose `done` marker exists is complete and is not
retrained, so an interrupted sweep resumes where it stopped (an unfinished run from its last
checkpoint, empirics.train).

A finished run whose files do not load (truncated, garbage, another run's spec) is never used:
`run_all` moves its directory to out_dir/set_aside/<run_id>.corrupt-<n>, retrains it, and appends
{run_id, reason, set_aside_to} to out_dir/recovered_runs.json, which the report lists.
"""

from __future__ import annotations

import json
import multiprocessing
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import train
from .capture import ROW_KEYS
from .config import ExperimentConfig, RunSpec
from .experiments import run_specs, validate
from .storage import write_json

RECOVERED = "recovered_runs.json"  # in out_dir: the runs set aside as corrupt and recomputed
SET_ASIDE = "set_aside"  # in out_dir: where corrupt run directories are moved
HISTORY_KEYS = ("train", "test", "steps_done", "diverged_at", "final_test_acc", "wall_s")


class CorruptRunError(ValueError):
    """A finished run's files cannot be read as its results; the message names the file and why."""


def run_dir(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def _set_aside(out_dir: Path, directory: Path, reason: str) -> dict:
    """Move a corrupt run directory out of runs/ (never delete: it may hold what the user wants to
    inspect) and record it in recovered_runs.json."""
    target_dir = Path(out_dir) / SET_ASIDE
    target_dir.mkdir(exist_ok=True)
    n = 1
    while (target_dir / f"{directory.name}.corrupt-{n}").exists():
        n += 1
    target = target_dir / f"{directory.name}.corrupt-{n}"
    directory.rename(target)
    record = {"run_id": directory.name, "reason": reason, "set_aside_to": str(target.relative_to(out_dir))}
    write_json(Path(out_dir) / RECOVERED, {"recovered_runs": [*recovered_runs(out_dir), record]})
    return record


def recovered_runs(out_dir: Path) -> list[dict]:
    """Every run set aside as corrupt in out_dir so far (and then recomputed), oldest first."""
    path = Path(out_dir) / RECOVERED
    return json.loads(path.read_text())["recovered_runs"] if path.exists() else []


def _set_aside_corrupt(out_dir: Path, directories: list[Path]) -> None:
    """Set aside every finished run among `directories` whose files do not load."""
    for directory in directories:
        if (directory / "done").exists():
            try:
                load_run(directory)
            except CorruptRunError as error:
                _set_aside(out_dir, directory, str(error))


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
    _set_aside_corrupt(out_dir, directories)
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


def _read(directory: Path, name: str, reader):
    """reader(path) for one file of a finished run; any failure to parse it is a CorruptRunError."""
    try:
        return reader(directory / name)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise CorruptRunError(f"{name} of run {directory.name} is unreadable ({type(error).__name__}: {error})") from None


def _npz(path: Path) -> dict[str, np.ndarray]:
    # the file is opened here, not by np.load, which leaves it open when the zip directory is unreadable
    with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}  # reading each member checks its CRC


def load_run(directory: Path) -> dict:
    """{"spec", "history", "captures": {column: array}, "probes": {"<probe>/<column>": array}} of one run.

    Raises FileNotFoundError for a run that is not finished, CorruptRunError for one whose files
    are truncated, garbage, or describe another run.
    """
    directory = Path(directory)
    if not (directory / "done").exists():
        raise FileNotFoundError(f"{directory} has no 'done' marker: the run is missing or incomplete; rerun it")
    spec = _read(directory, "spec.json", lambda path: json.loads(path.read_text()))
    if not (isinstance(spec, dict) and spec.get("run_id") == directory.name):
        raise CorruptRunError(f"spec.json of run {directory.name} describes another run "
                              f"({spec.get('run_id') if isinstance(spec, dict) else type(spec).__name__})")
    history = _read(directory, "history.json", lambda path: json.loads(path.read_text()))
    if not (isinstance(history, dict) and all(key in history for key in HISTORY_KEYS)):
        raise CorruptRunError(f"history.json of run {directory.name} lacks keys of "
                              f"{', '.join(HISTORY_KEYS)}")
    captures = _read(directory, "captures.npz", _npz)
    if set(captures) != set(ROW_KEYS):
        raise CorruptRunError(f"captures.npz of run {directory.name} has columns {sorted(captures)}, "
                              f"not {sorted(ROW_KEYS)}")
    probes = _read(directory, "probes.npz", _npz) if (directory / "probes.npz").exists() else {}
    return {"spec": spec, "history": history, "captures": captures, "probes": probes}
