"""The stages of `python -m verify`: theory -> empirics -> report, each reading what the last wrote.

    DIR/config.json      resolved configuration (with the preset name)
    DIR/theory.json      statuses and evidence of every statement, per normaliser
    DIR/runs/<run_id>/   one training run each (empirics.runner)
    DIR/checks/*.npz     per-row lhs, rhs, tolerance of every checked claim (drawn by figures.py)
    DIR/results.json     the machine-readable contract; DIR/report.{md,html}, DIR/figures/
"""

from __future__ import annotations

import json
import platform
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

from empirics.config import TRAINING_VARIANTS, Executor, ExperimentConfig, to_dict
from empirics.experiments import batchnorm_twin, run_specs
from empirics.runner import load_run, recovered_runs, run_all, run_dir
from empirics.storage import write_atomic, write_json
from empirics.train import resolve_device
from theory import numeric
from theory.cache import cached
from theory.normalisers import REGISTRY
from theory.statements import establish_all
from verify import checks as checking
from verify import effects, training
from verify.crosscheck import batchnorm_jacobian_agreement
from verify.measured_statements import bound_checks
from verify.report import write_report, write_theory_report

SCHEMA = 1
NETWORK_DTYPE = "float32"  # the dtype every model trains in; sets the checks' rounding tolerance


_TIMINGS_LOCK = threading.Lock()  # the theory thread of `stage_theory_and_empirics` records beside the runs


def _record_timing(out_dir: Path, stage: str, seconds: float | bool) -> None:
    path = out_dir / "timings.json"
    with _TIMINGS_LOCK:
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[stage if isinstance(seconds, bool) else f"{stage}_s"] = seconds
        write_json(path, timings)


def config_record(config: ExperimentConfig, preset: str) -> dict:
    """DIR/config.json's content (and results.json's "config") for `config` of `preset`."""
    return {"schema": SCHEMA, "preset": preset, **to_dict(config)}


def write_config(config: ExperimentConfig, preset: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", config_record(config, preset))


def stage_theory(out_dir: Path, normalisers: tuple[str, ...] | None = None, beside_runs: bool = False) -> dict:
    """Derive and establish every statement for `normalisers` (default: all registered); write
    DIR/theory.json and DIR/theory.md; cross-check the BN Jacobian against torch. `beside_runs`: whether it ran
    while the runs trained (`stage_theory_and_empirics`), recorded with its time."""
    started = time.perf_counter()
    normalisers = tuple(REGISTRY) if normalisers is None else normalisers
    theory = {name: {cid: r.as_dict() for cid, r in establish_all(REGISTRY[name]).items()} for name in normalisers}
    if "batchnorm" in theory:
        # cached like the derivations (keyed by the theory code), plus the torch version it ran against
        crosscheck = cached(f"crosscheck-torch{torch.__version__}", REGISTRY["batchnorm"], batchnorm_jacobian_agreement)
        theory["batchnorm"]["factC.1"]["numeric_crosscheck"] = crosscheck
    write_json(out_dir / "theory.json", theory)
    write_theory_report(out_dir)
    for name in normalisers:  # the checks' symbolic right sides, simplified once here and kept on disk
        bound_checks(theory, [name])
        _rhs41(name)
    _record_timing(out_dir, "theory", time.perf_counter() - started)
    _record_timing(out_dir, "theory_beside_runs", beside_runs)
    return theory


def _trains_elsewhere(config: ExperimentConfig) -> bool:
    """Whether the runs of `config` train outside this process (worker processes, Ray tasks), leaving it idle."""
    return config.executor is not Executor.LOCAL or config.workers > 1


def stage_theory_and_empirics(config: ExperimentConfig, out_dir: Path, normalisers: tuple[str, ...] | None = None,
                              progress: bool = True) -> None:
    """Both stages of `verify all`. The two are independent (training reads no derivation); where the runs train
    in other processes, theory derives in a thread of this otherwise idle one meanwhile, so its SymPy work fills
    the cores the runs leave free (the sweep's tail, the workers' start). Theory's error, if any, is raised once
    the runs are done (every finished run is kept). Where the runs train in this process, one after the other."""
    if not _trains_elsewhere(config):
        stage_theory(out_dir, normalisers)
        stage_empirics(config, out_dir, progress=progress)
        return
    failure: list[BaseException] = []

    def derive() -> None:
        try:
            stage_theory(out_dir, normalisers, beside_runs=True)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, raised there
            failure.append(error)

    thread = threading.Thread(target=derive, name="theory", daemon=True)
    thread.start()
    stage_empirics(config, out_dir, progress=progress)  # on its error (or Ctrl-C) the daemon thread is left behind
    thread.join()
    if failure:
        raise failure[0]


def stage_empirics(config: ExperimentConfig, out_dir: Path, progress: bool = True) -> list[Path]:
    started = time.perf_counter()
    directories = run_all(config, out_dir, progress=progress)
    _record_timing(out_dir, "empirics", time.perf_counter() - started)
    return directories


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(config: ExperimentConfig) -> dict:
    import sympy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sympy": sympy.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(resolve_device(config.device)),
        "dtype": NETWORK_DTYPE,
        "seeds": [s + config.seed_offset for s in config.train.seeds],
        "git_revision": _git_revision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "num_threads": torch.get_num_threads(),
    }


def run_normaliser(run: dict) -> str | None:
    """The registered normaliser whose captures a run holds (noisy BN: BatchNorm's), or None (no normaliser)."""
    norm = str(run["spec"]["norm"])
    return TRAINING_VARIANTS.get(norm, norm) if norm in TRAINING_VARIANTS or norm in REGISTRY else None


def _rhs41(normaliser: str):
    """rows -> the normaliser's own thm4.1 right side per captured group (the per-layer table sums it), or None."""
    try:
        statement = numeric.activation_statement("thm4.1", normaliser)
    except KeyError:
        return None
    return lambda rows: statement(*(rows[name].astype(np.float64) if name == "m" else rows[name]
                                    for name in statement.reductions))


def _check_bounds(runs: list[dict], theory: dict, model_name: str, out_dir: Path) -> list[dict]:
    """Evaluate every measurable statement of every trained normaliser (`measured_statements.bound_checks`) on the
    measurement tables of that normaliser's runs; save per-row data to DIR/checks/; return one record per
    (normaliser, statement, layer, lr)."""
    (out_dir / "checks").mkdir(exist_ok=True)
    by_normaliser: dict[str, list[tuple[dict, dict]]] = {}
    for run in runs:
        name = run_normaliser(run)
        if name is not None and run.get("captures") and len(run["captures"].get("step", ())):
            by_normaliser.setdefault(name, []).append((run, checking.measurement_tables(run, _rhs41(name))))
    # a normaliser with BatchNorm's formula over BatchNorm's axis (l2) is not trained on its own: BatchNorm's
    # networks compute its function bit for bit, so its own derived bounds are checked on their measurements
    twins = {name: "batchnorm" for name in theory if name not in by_normaliser and batchnorm_twin(name)
             and "batchnorm" in by_normaliser}
    for name, host in twins.items():
        by_normaliser[name] = [(run, checking.measurement_tables(run, _rhs41(name))) for run, _ in by_normaliser[host]]
    records = []
    for check in bound_checks(theory, list(by_normaliser)):
        tables = []
        for run, measured in by_normaliser[check.normaliser]:
            rows = measured.get(check.table)
            if rows is None:
                continue
            evaluated = checking.check_rows(check, rows, NETWORK_DTYPE)
            n = len(rows["step"])
            tables.append({"run_id": np.full(n, run["spec"]["run_id"]),
                           "lr": np.full(n, run["spec"]["lr"], dtype=np.float64),
                           "layer": rows["layer"], "channel": rows["channel"], "step": rows["step"], **evaluated})
        if not tables:
            continue
        table = {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}
        columns = {key: table[key] for key in ("run_id", "lr", "layer", "channel", "step", "lhs", "rhs", "tol",
                                                "held", "condition")}
        write_atomic(out_dir / "checks" / f"{check.normaliser}__{check.id}.npz", lambda file: np.savez(file, **columns))
        for lr in sorted(set(table["lr"].tolist())):
            for layer in sorted(set(table["layer"].tolist())):
                selected = (table["lr"] == lr) & (table["layer"] == layer)
                summary = checking.summarise({key: value[selected] for key, value in table.items()
                                              if key not in ("run_id", "lr", "layer", "channel", "step")})
                records.append({"claim": check.id, "normaliser": check.normaliser, "model": model_name,
                                "table": check.table, "layer": int(layer), "lr": lr, "relation": check.relation,
                                **summary, "tolerance": check.tolerance_reason}
                               | ({"measured_on": twins[check.normaliser]} if check.normaliser in twins else {}))
    return records


def stage_report(config: ExperimentConfig, out_dir: Path, all_started: float | None = None) -> dict:
    """Check the claims on the runs of `config`, write results.json, the figures and the report.

    `all_started` (a perf_counter value) is given by `verify all`: total_s is then measured up to the
    writing of results.json (drawing and rendering the report, a few seconds, come after).
    """
    started = time.perf_counter()
    theory_path = out_dir / "theory.json"
    if not theory_path.exists():
        raise FileNotFoundError(f"{theory_path} is missing; run `python -m verify theory --out {out_dir}` first")
    theory = json.loads(theory_path.read_text())
    runs = [load_run(run_dir(out_dir, spec.run_id)) for spec in run_specs(config)]
    check_records = _check_bounds(runs, theory, config.model.name, out_dir)
    for record in check_records:
        record["status"] = theory.get(record["normaliser"], {}).get(record["claim"], {}).get("status")
    run_records = [training.run_record(run) for run in runs]
    classification = [r for r in run_records if r["kind"] == "vgg1d"]  # Fig. 1 curves and speed summary
    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    timings.pop("report_s", None)  # measured after results.json is written: only an earlier run's would be here
    timings["checks_s"] = time.perf_counter() - started
    if all_started is not None:
        timings["total_s"] = time.perf_counter() - all_started
    results = {
        "schema": SCHEMA,
        "config": json.loads((out_dir / "config.json").read_text()),
        "environment": environment(config),
        "theory": theory,
        "checks": check_records,
        "training": classification,
        "training_summary": training.summarise(classification),
        "dln_training": [r for r in run_records if r["kind"] == "dln"],
        "claims": effects.evaluate_claims(runs),
        "timings": timings,
        "recovered_runs": recovered_runs(out_dir),  # corrupt runs set aside and recomputed (empirics.runner)
    }
    write_json(out_dir / "results.json", results)
    write_report(out_dir)
    _record_timing(out_dir, "report", time.perf_counter() - started)
    return results

