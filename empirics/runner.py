"""Run every (norm, lr, seed) of an experiment into its own directory, resumably; load results.

Layout: out_dir/runs/<run_id>/{spec.json, history.json, captures.npz, probes.npz, done}, plus
checkpoint.pt while a run is in progress. A run whose `done` marker exists is complete and is not
retrained, so an interrupted sweep resumes where it stopped (an unfinished run from its last
checkpoint, empirics.train).

A finished run whose files do not load (truncated, garbage, another run's spec) is never used:
`run_all` moves its directory to out_dir/set_aside/<run_id>.corrupt-<n>, retrains it, and appends
{run_id, reason, set_aside_to} to out_dir/recovered_runs.json, which the report lists.

Who trains the pending runs is config.executor's choice (empirics.executors: in this process, a local
process pool, or Ray tasks on a cluster); the layout, the run ids and the results are the same.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .capture import ROW_KEYS
from .config import ExperimentConfig
from .executors import check_executor, executor_for
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


def run_all(config: ExperimentConfig, out_dir: Path, progress: bool = True) -> list[Path]:
    """Train every run of `config` not yet done; return all run directories in run_specs order.

    Only runs without a `done` marker are handed to the executor (empirics.executors), which may train
    them in any order and anywhere: every run is seeded and pinned on its own, so the results depend on
    neither.
    """
    validate(config)
    check_executor(config)
    specs = run_specs(config)
    directories = [run_dir(out_dir, spec.run_id) for spec in specs]
    _set_aside_corrupt(out_dir, directories)
    pending = [(s, d) for s, d in zip(specs, directories) if not (d / "done").exists()]
    if pending:
        executor_for(config, pending).run(pending, progress)
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
