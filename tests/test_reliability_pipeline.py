"""`python -m verify all --preset smoke` end to end: killed with SIGKILL at several points and rerun, it
ends with the results of an uninterrupted run; run twice, it measures bit-identically; importing the
package changes no global torch state.

The smoke pipeline is run as a real subprocess (a kill must hit the real program). The uninterrupted
reference run is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.02  # how often the kill conditions are polled
RUN_TIMEOUT_S = 900  # one smoke pipeline takes ~1 min here with the derivation cache filled, ~3 without

# Keys of results.json that legitimately differ between two runs of the same configuration, and why:
NON_REPRODUCIBLE_KEYS = {
    ("timings",): "wall-clock seconds per stage",
    ("training", "*", "wall_s"): "wall-clock seconds of one run (a resumed run adds up its pieces)",
    ("dln_training", "*", "wall_s"): "wall-clock seconds of one DLN run",
    ("environment", "git_revision"): "names the checkout, not the computation: a commit landing between two "
                                     "runs of one working tree changes it",
}


def _without(value, path: tuple):
    """`value` with the key at `path` removed ('*' walks every item of a list)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if head == "*":
        return [_without(item, rest) for item in value] if isinstance(value, list) else value
    if not isinstance(value, dict) or head not in value:
        return value
    if not rest:
        return {key: item for key, item in value.items() if key != head}
    return {**value, head: _without(value[head], rest)}


def comparable(results: dict) -> dict:
    """results.json without the NON_REPRODUCIBLE_KEYS: what two runs of one configuration must share."""
    for path in NON_REPRODUCIBLE_KEYS:
        results = _without(results, path)
    return results


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "verify", "all", "--preset", "smoke", "--out", str(out), "--no-progress"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so the kill reaches any child it started
    )


def _run_to_completion(out: Path) -> None:
    process = _start(out)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == 0, stderr.decode()[-3000:]


def _kill_when(out: Path, condition, what: str) -> None:
    """Start the pipeline, SIGKILL its process group as soon as condition(out) holds, and wait for it."""
    process = _start(out)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition(out):
        assert process.poll() is None, f"the pipeline finished before {what}: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"not killed {what} (exit {process.returncode})"


def _done_runs(out: Path) -> int:
    return len(list((out / "runs").glob("*/done")))


KILL_POINTS = {
    "as the first file appears (theory stage starting)": lambda out: (out / "config.json").exists(),
    "mid-run, with two runs done and a checkpoint of a third on disk":
        lambda out: _done_runs(out) >= 2 and any((out / "runs").glob("*/checkpoint.pt")),
    "in the report stage (checks being written)": lambda out: (out / "checks").is_dir(),
}


def _assert_every_visible_file_parses(out: Path) -> None:
    """A kill leaves at most hidden temp files (.name.*.tmp); every file under its real name is whole."""
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".npz":
                with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
                    [archive[key] for key in archive.files]


def _run_arrays(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted((out / "runs").glob("*/*.npz")) + sorted((out / "checks").glob("*.npz")):
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            arrays.update({f"{path.relative_to(out)}/{key}": archive[key] for key in archive.files})
    return arrays


def _assert_same_measurements(got: Path, expected: Path) -> None:
    expected_arrays, got_arrays = _run_arrays(expected), _run_arrays(got)
    assert sorted(got_arrays) == sorted(expected_arrays) and expected_arrays
    different = [key for key, array in expected_arrays.items()
                 if not (got_arrays[key].dtype == array.dtype and got_arrays[key].shape == array.shape
                         and np.array_equal(got_arrays[key], array, equal_nan=array.dtype.kind == "f"))]
    assert not different, different[:10]


def _assert_same_results(got: Path, expected: Path) -> None:
    got_results = comparable(json.loads((got / "results.json").read_text()))
    expected_results = comparable(json.loads((expected / "results.json").read_text()))
    differing = sorted(key for key in set(got_results) | set(expected_results)
                       if got_results.get(key) != expected_results.get(key))
    assert not differing, f"results.json differs in {differing} (beyond {sorted(NON_REPRODUCIBLE_KEYS)})"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    _run_to_completion(out)
    return out


def test_comparable_drops_exactly_the_listed_keys():
    results = {"timings": {"total_s": 1.0}, "environment": {"git_revision": "abc", "torch": "2"},
               "training": [{"wall_s": 3.0, "final_test_acc": 0.5}], "checks": [{"n_violations": 0}]}
    assert comparable(results) == {"environment": {"torch": "2"}, "training": [{"final_test_acc": 0.5}],
                                   "checks": [{"n_violations": 0}]}


@pytest.mark.slow
def test_sigkilled_at_several_points_and_rerun_it_ends_with_the_uninterrupted_results(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    for what, condition in KILL_POINTS.items():
        _kill_when(out, condition, what)
        _assert_every_visible_file_parses(out)
    _run_to_completion(out)

    _assert_same_results(out, uninterrupted)
    _assert_same_measurements(out, uninterrupted)
    results = json.loads((out / "results.json").read_text())
    assert results["recovered_runs"] == []  # atomic writes: a kill never leaves a damaged result behind
    resumed = [json.loads(path.read_text())["resumed_at"] for path in (out / "runs").glob("*/history.json")]
    assert any(resumed), "the mid-run kill should have left a run to resume from its checkpoint"
    assert not list((out / "runs").glob("*/checkpoint.pt"))  # every finished run deleted its checkpoint


@pytest.mark.slow
def test_the_same_seed_twice_measures_bit_identically_and_records_its_environment(uninterrupted, tmp_path):
    again = tmp_path / "again"
    _run_to_completion(again)
    _assert_same_measurements(again, uninterrupted)
    _assert_same_results(again, uninterrupted)
    environment = json.loads((again / "results.json").read_text())["environment"]
    for key in ("seeds", "python", "torch", "numpy", "sympy", "device", "dtype", "deterministic_algorithms",
                "tf32_matmul", "tf32_cudnn", "num_threads"):
        assert key in environment and environment[key] is not None, key
    assert environment["seeds"] == [0] and environment["device"] == "cpu" and environment["dtype"] == "float32"


_FLAGS_PROGRAM = """
import hashlib, importlib, json, pkgutil, sys
import torch

def flags():
    return {
        "cudnn.enabled": torch.backends.cudnn.enabled,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cuda.matmul.fp16_reduced": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "default_dtype": str(torch.get_default_dtype()),
        "num_threads": torch.get_num_threads(),
        "grad_enabled": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
    }

before = flags()
imported = []
for package in ("theory", "empirics", "verify"):
    module = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
        if info.name.endswith(".__main__"):  # the command line itself: importing it runs it
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps({"before": before, "after": flags(), "imported": imported}))
"""


def test_importing_every_module_of_the_package_changes_no_global_torch_state():
    completed = subprocess.run([sys.executable, "-c", _FLAGS_PROGRAM], cwd=REPO, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.splitlines()[-1])
    assert {"theory.numeric", "empirics.train", "verify.pipeline", "verify.cli"} <= set(report["imported"])
    changed = {key: (report["before"][key], report["after"][key]) for key in report["before"]
               if report["before"][key] != report["after"][key]}
    assert not changed, changed
