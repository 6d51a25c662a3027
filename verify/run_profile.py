"""The whole-run profile of `python -m verify bench`: where a preset's training run spends its time.

For each run kind in RUN_KINDS (the BN run at the first learning rate with every probe the preset
gives it, an l_p run, a noisy-BN run), one `train.train_run` into a scratch folder, timed by a
`PhaseClock` on the bench's clock (process CPU time on a CPU), with the probe measurements timed per
kind as `empirics.probes` calls them. Every phase is reported as a ratio of the run's *plain steps*,
P = (steps run) x (median time of the run's own uncaptured steps; a step's time never includes its probes):

    run_overhead       the whole train_run (setup, loop, evaluation, files) / P
    steps              every step's own forward, backward and update, captured ones at the plain median / P
    captures           what captured steps took beyond a plain step, plus collecting their rows / P
    landscape, ics, curvature, weights, hist, sharpness, filter_landscape   each probe kind's measurement calls / P
    probes_other       the recorder's remaining work (parameter snapshots, the progress trigger) / P
    eval, log, checkpoint, write, setup           the other phases of empirics.phases / P
    unaccounted        the rest: the loop itself, batch indexing, the progress bar

A single run, not repeated: its figure carries no IQR, and its plain-step median is the same run's.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from empirics import activations, curvature, filter_landscape, ics, landscape, sharpness, train, weight_bounds
from empirics.config import PRESETS, Norm, RunSpec
from empirics.experiments import run_specs
from empirics.phases import PhaseClock

RUN_KINDS = (Norm.BATCHNORM, Norm.LP1, Norm.NOISY_BATCHNORM)
# the functions empirics.probes calls, by the probe kind they serve: (module, attribute, kind)
PROBE_FUNCTIONS = ((landscape, "landscape_probe", "landscape"), (ics, "ics", "ics"),
                   (curvature, "activation_curvature", "curvature"),
                   (weight_bounds, "weight_bound_terms_of_layers", "weights"),
                   (activations, "activation_summary", "hist"), (activations, "bin_edges_from", "hist"),
                   (sharpness, "sharpness_probe", "sharpness"), (filter_landscape, "filter_landscape", "filter_landscape"))
RUN_OVERHEAD_TARGET = {Norm.BATCHNORM: 1.3}  # issue 15: a default-preset BN run with all its probes


@contextlib.contextmanager
def _timed_probes(clock: PhaseClock) -> Iterator[None]:
    """Within: every function of PROBE_FUNCTIONS adds its calls' time to `clock` under its kind (restored on exit)."""
    originals = [(module, name, getattr(module, name)) for module, name, _ in PROBE_FUNCTIONS]

    def timed(function: Callable, kind: str) -> Callable:
        @functools.wraps(function)
        def call(*args, **kwargs):
            with clock.phase(f"probe:{kind}"):
                return function(*args, **kwargs)
        return call

    try:
        for (module, name, kind), (_, _, function) in zip(PROBE_FUNCTIONS, originals):
            setattr(module, name, timed(function, kind))
        yield
    finally:
        for module, name, function in originals:
            setattr(module, name, function)


def _spec(preset: str, norm: Norm) -> RunSpec:
    config = PRESETS[preset]
    return next(spec for spec in run_specs(config) if spec.kind == "vgg1d" and spec.norm is norm
                and spec.lr == config.train.lrs[0] and spec.seed == config.train.seeds[0] + config.seed_offset)


def breakdown(clock: PhaseClock, total: float) -> dict:
    """{phase: ratio of the plain steps} (module doc) from a finished run's clock and its total time."""
    plain = statistics.median(clock.plain_steps)
    n_steps = len(clock.plain_steps) + len(clock.captured_steps)
    unit = n_steps * plain
    seconds = dict(clock.seconds)
    probe_kinds = {name.split(":", 1)[1]: seconds.pop(name) for name in list(seconds) if name.startswith("probe:")}
    parts = {"steps": sum(clock.plain_steps) + len(clock.captured_steps) * plain,
             "captures": sum(clock.captured_steps) - len(clock.captured_steps) * plain
             + seconds.pop("capture_collect", 0.0)}
    for kind in dict.fromkeys(kind for _, _, kind in PROBE_FUNCTIONS):
        parts[kind] = probe_kinds.get(kind, 0.0)
    parts["probes_other"] = seconds.pop("probes", 0.0) - sum(probe_kinds.values())
    for name in ("eval", "log", "checkpoint", "write", "setup"):
        parts[name] = seconds.pop(name, 0.0)
    parts.update(seconds)  # a phase this module does not know yet still shows
    parts["unaccounted"] = total - sum(parts.values())
    return {"plain_step_s": plain, "steps": n_steps, "total_s": total, "run_overhead": total / unit,
            "breakdown": {name: value / unit for name, value in parts.items()},
            "counts": {name.removeprefix("probe:"): count for name, count in clock.counts.items()}}


def profile_run(preset: str, norm: Norm, now: Callable[[], float]) -> dict:
    """One run of `preset` with normaliser `norm` (first lr, first seed, its planned probes), profiled."""
    spec = _spec(preset, norm)
    clock = PhaseClock(now=now)
    with tempfile.TemporaryDirectory(prefix="normcheck-bench-run-") as scratch, _timed_probes(clock):
        started = now()
        train.train_run(spec, Path(scratch) / spec.run_id, progress=False, clock=clock)
        total = now() - started
    return {"run_id": spec.run_id, **breakdown(clock, total)}


def run_figures(preset: str, now: Callable[[], float]) -> dict:
    """`run_overhead_<norm>` per kind of RUN_KINDS: the ratio, its breakdown and a note naming the largest parts."""
    # torch.optim's first optimiser in a process imports torch._dynamo (~2 s here): a worker pays it once, not per
    # run, so it is paid here before the first profiled run instead of inside it
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    figures = {}
    for norm in RUN_KINDS:
        run = profile_run(preset, norm, now)
        largest = sorted(((v, k) for k, v in run["breakdown"].items() if k != "steps"), reverse=True)[:3]
        figure = {"value": run["run_overhead"], "iqr": [run["run_overhead"]] * 2, "unit": "ratio", "repeats": 1,
                  **run, "note": f"{run['steps']} steps of {run['plain_step_s'] * 1e3:.1f} ms; largest parts: "
                                 + ", ".join(f"{k} {v:.2f}" for v, k in largest)}
        if norm in RUN_OVERHEAD_TARGET and preset == "default":
            figure["target"] = RUN_OVERHEAD_TARGET[norm]
            figure["passed"] = figure["value"] <= figure["target"]
        figures[f"run_overhead_{norm.value}"] = figure
    return figures
