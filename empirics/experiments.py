"""The paper's experiments as named run sets; `plan` merges them into the runs to train.

Each experiment says which (model kind, norm, lr, seed) runs it needs and which probes they must
carry. Runs asked for by several experiments are trained once, with the union of their probes
(probes never change a trajectory), so e.g. the BN run at lr 0.1 serves Fig. 1, 3, 4 and the bounds.

    train      Fig. 1   VGG-1d, {none, BN} x train.lrs; BN runs capture thm4.1 quantities
    noisy      Fig. 2   {none, BN, noisy BN, noisy none} at the first lr; activation histograms
    ics        Fig. 3   {none, BN} at the first lr; internal covariate shift of every layer
    landscape  Fig. 4   {none, BN} x train.lrs; loss / gradient / beta along the gradient
    lp         Fig. 11-14  {BN} + lp_norms (l1, l-inf; l2 in the paper preset) at the first lr, landscape (lp: and
                        thm4.4's weight terms); and
                        the deep linear network with lp_norms x dln.lrs (l1 best on the DLN, Fig. 14)
    bounds     §4       BN x train.lrs; thm4.2 curvature and thm4.4 weight-space terms
    dln        Fig. 3/9 deep linear network {none, BN} x dln.lrs; landscape and ICS
    norms      issue 12 every registered normaliser (theory.normalisers.REGISTRY, --normaliser-file's included;
                        or norms_normalisers, the CLI's --norm) with {none, BN} as references, at the first lr,
                        on the first norms_seeds seeds, landscape probes; the normalised ones also thm4.2's
                        Hessian forms (BatchNorm's formula) and thm4.4's weight terms; capture as every run
    sharpness  beyond   issue 16: the landscape and dln experiments' {none, BN} runs on their first
               the paper  sharpness.seeds seeds: top Hessian eigenvalue, Hutchinson trace and effective sharpness
                        at sharpness.levels (`config.SharpnessConfig`); the filter-normalised landscape at the last
                        step on the first sharpness.filter_landscape_seeds seeds (VGG-1d: at the first lr)

The comparison probes (landscape, ICS) run every probe_every steps, every early_probe_every steps before
early_probe_until, and where the smoothed training loss first reaches each progress level
(`empirics.probes.ProgressTrigger`), so that networks converging at different speeds can be compared
at matched training loss (`verify.progress`).
"""

from __future__ import annotations

import math

from theory.normalisers import REGISTRY

from .config import ConfigError, ExperimentConfig, Norm, ProbeConfig, RunSpec
from .norms import uses_batch_statistics

BASELINE = (Norm.NONE, Norm.BATCHNORM)


def _vgg(config: ExperimentConfig, norms, lrs, probes: ProbeConfig, seeds=None) -> list[RunSpec]:
    return [RunSpec(config, norm, lr, seed + config.seed_offset, "vgg1d", probes)
            for lr in lrs for norm in norms for seed in (config.train.seeds if seeds is None else seeds)]


def train(config: ExperimentConfig) -> list[RunSpec]:
    return _vgg(config, config.train.norms, config.train.lrs, config.probes)


def noisy(config: ExperimentConfig) -> list[RunSpec]:
    norms = (Norm.NONE, Norm.BATCHNORM, Norm.NOISY_BATCHNORM, Norm.NOISY_NONE)
    return _vgg(config, norms, config.train.lrs[:1], ProbeConfig(histogram_every=config.train.probe_every))


def conv_layers(config: ExperimentConfig) -> int:
    """How many conv layers (each followed by the normaliser) the classification model has."""
    return {"vgg11": 8, "vgg16": 13}.get(config.model.name, len(config.model.channels))


def _comparison(t, **probes) -> ProbeConfig:
    """Landscape and/or ICS on the schedule of `t` (TrainConfig or DLNConfig): periodic, early, progress levels."""
    return ProbeConfig(early_every=t.early_probe_every, early_until=t.early_probe_until,
                       progress_levels=t.progress_levels, **probes)


def ics(config: ExperimentConfig) -> list[RunSpec]:
    # every conv layer but the first (layer 1 sees no shift: ICS 0 by definition); never the dense head,
    # which carries no normaliser (ics.layer_groups: group i is conv i with its normaliser's parameters)
    layers = tuple(range(1, conv_layers(config)))
    return _vgg(config, BASELINE, config.train.lrs[:1],
                _comparison(config.train, ics_every=config.train.probe_every, ics_layers=layers))


def _landscape_probes(config: ExperimentConfig) -> ProbeConfig:
    return _comparison(config.train, landscape_every=config.train.probe_every)


def landscape(config: ExperimentConfig) -> list[RunSpec]:
    return _vgg(config, BASELINE, config.train.lrs, _landscape_probes(config))


def lp(config: ExperimentConfig) -> list[RunSpec]:
    vgg = _vgg(config, (Norm.BATCHNORM,), config.train.lrs[:1], _landscape_probes(config))
    # the l_p networks also carry thm4.4's weight terms: their own thm4.1 analogue reaches the weights
    vgg += _vgg(config, config.lp_norms, config.train.lrs[:1], _landscape_probes(config).union(_weight_probes(config)))
    # the DLN with each lp (l2 is BN's formula: the dln experiment's BN run stands for it), no probes:
    # Fig. 14 compares their training losses
    dln_norms = [norm for norm in config.lp_norms if norm is not Norm.LP2]
    return vgg + [RunSpec(config, norm, lr, seed + config.seed_offset, "dln", ProbeConfig())
                  for lr in config.dln.lrs for norm in dln_norms for seed in config.train.seeds]


def _weight_probes(config: ExperimentConfig) -> ProbeConfig:
    # thm4.4 rows are checked against the thm4.1 capture of the same step, so weight terms are taken only on
    # steps that also capture (every lcm of the two schedules): a row without its capture cannot be checked
    t = config.train
    return ProbeConfig(weight_bounds_every=math.lcm(t.probe_every, t.capture_every))


def _bound_probes(config: ExperimentConfig) -> ProbeConfig:
    """thm4.2's Hessian forms (layers with BatchNorm's formula only: `empirics.probes`) and thm4.4's weight terms."""
    t = config.train
    return _weight_probes(config).union(ProbeConfig(curvature_every=t.curvature_every,
                                                    curvature_layers=t.curvature_layers))


def bounds(config: ExperimentConfig) -> list[RunSpec]:
    return _vgg(config, (Norm.BATCHNORM,), config.train.lrs, _bound_probes(config))


def dln(config: ExperimentConfig) -> list[RunSpec]:
    d = config.dln
    # the paper's layers #9 and #17 of 25, at the same relative depth for other depths
    layers = tuple(sorted({max(0, round(d.depth * k / 25) - 1) for k in (9, 17)}))
    probes = _comparison(d, landscape_every=d.probe_every, landscape_multipliers=d.landscape_multipliers,
                         ics_every=d.probe_every, ics_layers=layers)
    return [RunSpec(config, norm, lr, seed + config.seed_offset, "dln", probes)
            for lr in d.lrs for norm in d.norms for seed in config.train.seeds]


def norms_measured(config: ExperimentConfig) -> tuple[Norm, ...]:
    """The norms experiment's normalisers: config.norms_normalisers, or every registered one now (the registry
    with the --normaliser-file normalisers), in registration order."""
    return tuple(config.norms_normalisers) or tuple(Norm(name) for name in REGISTRY if not batchnorm_twin(name))


def batchnorm_twin(name: str) -> bool:
    """Another name for BatchNorm itself: the same formula over the same axis (l2 normalisation), so its network
    is BatchNorm's, bit for bit, and BatchNorm's runs stand for it."""
    normaliser, batchnorm = REGISTRY[name], REGISTRY[Norm.BATCHNORM.value]
    return (normaliser is not batchnorm and normaliser.formula_key() == batchnorm.formula_key()
            and normaliser.axis.split(":")[0] == batchnorm.axis.split(":")[0])


def norms(config: ExperimentConfig) -> list[RunSpec]:
    # the reference networks first (BatchNorm, the paper's subject, and the unnormalised one); runs another
    # experiment asks for too are trained once (`plan` merges them, with the union of their probes)
    measured = tuple(dict.fromkeys((*BASELINE, *norms_measured(config))))
    seeds = config.train.seeds[:config.norms_seeds]
    # every normalised network carries the bound probes, so each of its statements is checked on measured rows
    return [spec for norm in measured
            for spec in _vgg(config, (norm,), config.train.lrs[:1], _landscape_probes(config) if norm is Norm.NONE
                             else _landscape_probes(config).union(_bound_probes(config)), seeds=seeds)]


def _sharpness_probes(config: ExperimentConfig, t, steps: int, filter_landscape: bool) -> ProbeConfig:
    """The sharpness probe at the progress levels of `t` (TrainConfig or DLNConfig) and, if asked, the filter-normalised
    landscape at the run's last step."""
    s = config.sharpness
    probes = ProbeConfig(sharpness_every=s.every, sharpness_levels=s.levels, sharpness_top_k=s.top_k,
                         sharpness_iterations=s.iterations, hutchinson_probes=s.hutchinson_probes,
                         sharpness_batch=s.batch, sharpness_blocks=s.blocks, progress_levels=t.progress_levels)
    if filter_landscape:
        probes = probes.union(ProbeConfig(filter_landscape_steps=(steps - 1,),
                                          filter_landscape_points=s.filter_landscape_points,
                                          filter_landscape_grid=s.filter_landscape_grid,
                                          filter_landscape_batch=s.filter_landscape_batch))
    return probes


def sharpness(config: ExperimentConfig) -> list[RunSpec]:
    s = config.sharpness
    seeds = config.train.seeds[:s.seeds]
    specs = []
    for index, seed in enumerate(seeds):
        flat = index < s.filter_landscape_seeds
        for position, lr in enumerate(config.train.lrs):  # the filter landscape at the first lr only (its cost)
            probes = _sharpness_probes(config, config.train, config.train.steps, flat and position == 0)
            specs += _vgg(config, BASELINE, (lr,), probes, seeds=(seed,))
        specs += [RunSpec(config, norm, lr, seed + config.seed_offset, "dln",
                          _sharpness_probes(config, config.dln, config.dln.steps, flat))
                  for lr in config.dln.lrs for norm in config.dln.norms]
    return specs


EXPERIMENTS = {"train": train, "noisy": noisy, "ics": ics, "landscape": landscape, "lp": lp, "bounds": bounds,
               "dln": dln, "norms": norms, "sharpness": sharpness}


def plan(config: ExperimentConfig) -> list[RunSpec]:
    """The merged runs of every experiment in config.experiments, in first-asked order."""
    unknown = [name for name in config.experiments if name not in EXPERIMENTS]
    if unknown:
        raise ConfigError(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    merged: dict[tuple, RunSpec] = {}
    for name in config.experiments:
        for spec in EXPERIMENTS[name](config):
            key = (spec.kind, spec.norm, spec.lr, spec.seed)
            if key in merged:
                old = merged[key]
                spec = RunSpec(old.config, old.norm, old.lr, old.seed, old.kind, old.probes.union(spec.probes))
            merged[key] = spec
    return list(merged.values())


def runs_of(config: ExperimentConfig, experiment: str, specs: list[RunSpec]) -> list[RunSpec]:
    """The merged runs that serve `experiment` (for the report's per-figure selection)."""
    wanted = {(s.kind, s.norm, s.lr, s.seed) for s in EXPERIMENTS[experiment](config)}
    return [s for s in specs if (s.kind, s.norm, s.lr, s.seed) in wanted]


def run_specs(config: ExperimentConfig) -> list[RunSpec]:
    """Every run the config's experiments need, merged and in a stable order."""
    return plan(config)


# each data set and the models built for its inputs
DATA_MODELS = {"mnist1d": ("vgg1d",), "digits": ("vgg2d_digits",), "cifar10": ("vgg11", "vgg16")}


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Reject values no run can use, with the rule and the fix."""
    t = config.train
    if t.steps < 1:
        raise ConfigError(f"train.steps={t.steps} must be >= 1; give a positive number of steps")
    if any(lr <= 0 for lr in t.lrs):
        raise ConfigError(f"train.lrs={list(t.lrs)} must all be > 0; give positive learning rates")
    if config.norms_seeds < 1:
        raise ConfigError(f"norms_seeds={config.norms_seeds} must be >= 1 (the norms experiment's seeds per normaliser)")
    specs = plan(config)  # also rejects unknown experiments
    batch_statistics = sorted({s.norm.value for s in specs if s.kind == "vgg1d" and uses_batch_statistics(s.norm)})
    if t.batch_size < 2 and batch_statistics:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is below 2, where the batch statistics of {', '.join(batch_statistics)} "
            "are undefined; use >= 2"
        )
    d = config.dln
    if d.steps < 1 or any(lr <= 0 for lr in d.lrs):
        raise ConfigError(f"dln.steps={d.steps} must be >= 1 and dln.lrs={list(d.lrs)} all > 0; fix them")
    if d.samples < 2 and any(uses_batch_statistics(s.norm) for s in specs if s.kind == "dln"):
        raise ConfigError(f"dln.samples={d.samples} is below 2, where batch statistics are undefined; use >= 2")
    for key in ("eval_every", "log_every", "capture_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.bn_eps <= 0:
        raise ConfigError(f"train.bn_eps={t.bn_eps} must be > 0 (torch rejects eps = 0 in training mode)")
    if config.checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every={config.checkpoint_every} must be >= 0 (0 turns checkpoints off)")
    if config.threads < 0 or config.workers < 1:
        raise ConfigError(f"threads={config.threads} must be >= 0 and workers={config.workers} >= 1")
    if config.data.name not in DATA_MODELS:
        raise ConfigError(f"data.name={config.data.name!r} is not known; use one of {', '.join(DATA_MODELS)}")
    models = [model for names in DATA_MODELS.values() for model in names]
    if config.model.name not in models:
        raise ConfigError(f"model.name={config.model.name!r} is not known; use one of {', '.join(models)}")
    if config.model.name not in DATA_MODELS[config.data.name]:
        raise ConfigError(f"model {config.model.name} does not fit data {config.data.name}: use "
                          + ", ".join(f"{' or '.join(m)} with {d}" for d, m in DATA_MODELS.items()))
    if config.data.name == "cifar10" and not config.data.root:
        raise ConfigError("CIFAR-10 needs its local folder: give --data-root DIR (the cifar-10-batches-py "
                          "folder or its parent); it cannot be downloaded here")
    if not config.model.channels or any(c < 1 for c in config.model.channels):
        raise ConfigError(f"model.channels={list(config.model.channels)} must be positive integers")
    return config
