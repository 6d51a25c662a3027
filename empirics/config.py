"""Experiment configuration: frozen dataclasses, named presets, typed command-line overrides.

A run is fully described by an `ExperimentConfig` plus the triple (norm, lr, seed) it was
started with (`RunSpec`); its id is a hash of that resolved description, so results on disk can
never be mistaken for those of another configuration.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration value or override is invalid; the message says how to fix it."""


# The training variants beside the registered normalisers, each with the registered normaliser it builds on
# (None: no normalisation). Noise is Algorithm 1's (empirics.noisy); "noisy_none" is the paper's "noise added
# to a standard network". Every other norm is a normaliser of the theory registry (theory.normalisers.REGISTRY,
# which --normaliser-file extends at run time): there is no second list of normaliser names.
TRAINING_VARIANTS: dict[str, str | None] = {"none": None, "noisy_none": None, "noisy_batchnorm": "batchnorm"}


def norm_names() -> tuple[str, ...]:
    """Every name a norm may take now: the training variants, then the registry in registration order."""
    from theory.normalisers import REGISTRY

    return (*TRAINING_VARIANTS, *(name for name in REGISTRY if name not in TRAINING_VARIANTS))


class _NormType(type):
    """Norm.LAYERNORM, Norm.LP1, ...: the upper-cased name of any registered normaliser, looked up on use."""

    def __getattr__(cls, attribute: str):
        if attribute.isupper() and attribute.lower() in norm_names():
            return cls(attribute.lower())
        raise AttributeError(f"type object 'Norm' has no attribute {attribute!r}")


class Norm(str, metaclass=_NormType):
    """What is placed after every convolution (VGG) or hidden layer (DLN): a registered normaliser's name
    (theory.normalisers.REGISTRY) or a training variant (`TRAINING_VARIANTS`).

    A validated string: Norm("typo") raises ConfigError listing the valid names. Instances are interned,
    so `spec.norm is Norm.BATCHNORM` holds for every "batchnorm"; `.value` is the plain name (run ids hash it).
    """

    __slots__ = ()
    _interned: dict[str, Norm] = {}

    def __new__(cls, name) -> Norm:
        if isinstance(name, Norm):
            return name
        name = str(name)
        names = norm_names()  # now: a user's formula may have been registered, or withdrawn, since
        if name not in names:
            raise ConfigError(f"norm {name!r} is neither a registered normaliser nor a training variant; use one of "
                              f"{', '.join(names)} (or register a formula with --normaliser-file)")
        return cls._interned.setdefault(name, super().__new__(cls, name))

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Norm({self.value!r})"

    def __reduce__(self):
        # unpickled interned but unchecked: a worker process registers the run's --normaliser-file formulas
        # (`register_normaliser_files`) only once it holds the spec that names them
        return (_unpickled_norm, (self.value,))


def _unpickled_norm(name: str) -> Norm:
    known = Norm._interned.get(name)
    return known if known is not None else Norm._interned.setdefault(name, str.__new__(Norm, name))


def register_normaliser_files(paths) -> None:
    """Register the user's normaliser files (--normaliser-file) in this process, unless already registered:
    a spawned worker starts with the project's registry only."""
    import inspect
    from pathlib import Path

    from theory.normalisers import REGISTRY, load_normaliser_file

    known = {Path(inspect.getfile(normaliser.hat)).resolve() for normaliser in REGISTRY.values()}
    for path in paths:
        if Path(path).resolve() not in known:
            load_normaliser_file(path)


Norm.NONE = Norm("none")
Norm.NOISY_NONE = Norm("noisy_none")
Norm.NOISY_BATCHNORM = Norm("noisy_batchnorm")
Norm.BATCHNORM = Norm("batchnorm")  # the paper's subject: the reference of every comparison


def lp_family(include_batchnorm_formula: bool = False) -> tuple[Norm, ...]:
    """The registry's l_p batch normalisations of §3.3 (names "lp..."); lp2 is BatchNorm's formula exactly
    (`Normaliser.formula_key`), so it is left out unless `include_batchnorm_formula` (the paper's Fig. 11 keeps it)."""
    from theory.normalisers import BATCHNORM, REGISTRY

    return tuple(Norm(name) for name, normaliser in REGISTRY.items() if name.startswith("lp")
                 and (include_batchnorm_formula or normaliser.formula_key() != BATCHNORM.formula_key()))


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Executor(str, enum.Enum):
    """What trains the runs of a sweep (empirics.executors); never changes a result."""

    LOCAL = "local"  # this machine: in this process, or `workers` spawned processes
    RAY = "ray"  # one Ray task per run, on a local Ray instance or a cluster (`address`); needs normcheck[ray]


@dataclass(frozen=True)
class DataConfig:
    """mnist1d (generated procedurally, offline: 4000 train / 1000 test signals), scikit-learn's digits (1,797
    real 8 x 8 images shipped inside scikit-learn, offline: a seeded 1,497 / 300 split, empirics.digits) or
    CIFAR-10 read from a local `cifar-10-batches-py` directory (`root`, the CLI's --data-root)."""

    name: str = "mnist1d"  # "mnist1d" | "digits" | "cifar10"
    seed: int = 42  # mnist1d's own generation seed (its published default); digits: the split's seed
    root: str = ""  # CIFAR-10: the cifar-10-batches-py folder or its parent


@dataclass(frozen=True)
class ModelConfig:
    """vgg1d: blocks of (conv3 -> [norm] -> ReLU), max-pool after every second conv (mnist1d);
    vgg2d_digits: the same blocks in 2-D (Conv2d 3 x 3, MaxPool2d(2) after every second conv) with one dense
    layer, for 8 x 8 digits (empirics.vgg2d; `channels` as for vgg1d, `hidden` unused);
    vgg11 / vgg16: the 2-D VGGs for CIFAR-10 (empirics.vgg2d), widths scaled by width_multiplier."""

    name: str = "vgg1d"  # "vgg1d" | "vgg2d_digits" | "vgg11" | "vgg16"
    # vgg1d only. 8-8-16-16-32-32 with a 128-unit head: ~9 ms per SGD step at batch 128 on one core here, half
    # of the earlier 16-16-32-32-64-64 with 256 units (~17 ms), so that 5 paired seeds of every compared
    # configuration fit the default preset's 300 s (the wider one: --set model.channels=16,16,32,32,64,64
    # --set model.hidden=256)
    channels: tuple[int, ...] = (8, 8, 16, 16, 32, 32)
    hidden: int = 128
    width_multiplier: float = 1.0  # vgg11 / vgg16 only


@dataclass(frozen=True)
class TrainConfig:
    """Plain SGD (no momentum, no weight decay) on cross-entropy, fixed batch size, Glorot init."""

    steps: int = 600
    batch_size: int = 128
    lrs: tuple[float, ...] = (0.1, 0.5)
    norms: tuple[Norm, ...] = (Norm.NONE, Norm.BATCHNORM)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # paired across normalisers: verdicts need >= 3 (verify.statistics)
    bn_eps: float = 1e-5  # PyTorch's BatchNorm default
    eval_every: int = 50  # steps between test-set evaluations
    log_every: int = 1  # steps between recorded training loss/accuracy points (steps to threshold to the step)
    capture_every: int = 10  # steps between bound captures (hooks exist only on those steps); 10 gives the default
    # preset > 100,000 checked thm4.1 rows (224 BN channels x 101 steps x 6 BN runs)
    probe_every: int = 100  # landscape, ICS, weight-bound and histogram probes of the experiments
    # landscape and ICS also every early_probe_every steps before early_probe_until (the early window: both
    # networks still train), and where the smoothed training loss first reaches each progress level (fractions
    # of the zero-output loss, ln 10 here: 1.96, 1.61, ... 0.35), for comparisons at matched progress
    early_probe_every: int = 25
    early_probe_until: int = 100
    # the standard network at lr 0.1 reaches ~0.35 x ln 10 in 600 steps; lower levels would be probed in the
    # fast networks only, where no comparison uses them
    progress_levels: tuple[float, ...] = (0.85, 0.7, 0.55, 0.45, 0.35, 0.27, 0.2, 0.15)
    curvature_every: int = 300  # thm4.2 Hessian forms: ~50-85 forward+backwards per BN layer, so sparse
    curvature_layers: tuple[int, ...] = (0, -1)  # first and last BN layer (negative: from the end)


@dataclass(frozen=True)
class ProbeConfig:
    """How often (in steps; 0 = never) each measurement runs during a training run.

    Probes evaluate the training-mode function on the step's own batch and change nothing
    (a test shows trajectories are bit-identical with and without them).
    """

    landscape_every: int = 0
    # step sizes eta = multiplier * lr along -grad; paper: [0.5, 4] x lr for VGG, [0.01, 30] x lr for the DLN
    landscape_multipliers: tuple[float, ...] = (0.5, 1.0, 1.75, 2.5, 3.25, 4.0)
    ics_every: int = 0
    ics_layers: tuple[int, ...] = ()  # layer groups to measure (0-based, empirics.ics.layer_groups); () = all
    # The comparison probes (landscape, ICS) also run every `early_every` steps before step `early_until`
    # (the early window in which a fast and a slow network both still train, verify.progress) ...
    early_every: int = 0
    early_until: int = 0
    # ... and at the first step where the run's smoothed training loss reaches each of these fractions of
    # the zero-output loss (ln 10 for ten classes): every network is probed at the same training losses,
    # so comparisons can be made at matched progress instead of at matched steps (verify.progress)
    progress_levels: tuple[float, ...] = ()
    curvature_every: int = 0  # thm4.2 Hessian quadratic forms at BN layers
    curvature_layers: tuple[int, ...] = ()  # BN layer indices (negative from the end); () = all
    weight_bounds_every: int = 0  # thm4.4 weight-gradient terms at every conv followed by a norm
    histogram_every: int = 0  # activation distributions of every normalisation layer's output
    # Beyond the paper (issue 16): sharpness (empirics.sharpness) and the filter-normalised landscape
    # (empirics.filter_landscape). At these defaults a run's id is what it was before they existed: RunSpec.run_id
    # leaves default-valued EXTENSION_PROBE_FIELDS out of its hash
    sharpness_every: int = 0  # top Hessian eigenvalues, Hutchinson trace, effective sharpness every k steps ...
    sharpness_levels: tuple[float, ...] = ()  # ... and where the smoothed loss first reaches these progress_levels
    sharpness_top_k: int = 1
    sharpness_iterations: int = 10  # Lanczos steps: HVPs per operator (raw H; D H D where layers are scale-invariant)
    hutchinson_probes: int = 8  # Rademacher probes of the trace (>= the parameter count: the exact trace)
    sharpness_batch: int = 0  # the first n samples of the step's batch (0: the whole batch)
    sharpness_blocks: bool = False  # also every layer's diagonal Hessian block
    filter_landscape_steps: tuple[int, ...] = ()  # steps at which the 1-D and 2-D landscapes are drawn
    filter_landscape_points: int = 21  # 1-D: points in [-1, 1]
    filter_landscape_grid: int = 11  # 2-D: grid x grid points in [-1, 1]^2
    filter_landscape_batch: int = 0  # the first n samples of the step's batch (0: the whole batch)

    def union(self, other: ProbeConfig) -> ProbeConfig:
        """Every probe either config asks for, at the finer of the two frequencies."""
        def finer(a: int, b: int) -> int:
            return min(x for x in (a, b) if x > 0) if a or b else 0

        def layers(a_every: int, a_layers: tuple, b_every: int, b_layers: tuple) -> tuple[int, ...]:
            # () means "every layer" only for a config that runs the probe; one that does not adds no layers
            if not (a_every and b_every):
                return a_layers if a_every else b_layers if b_every else ()
            return () if not (a_layers and b_layers) else tuple(sorted(set(a_layers) | set(b_layers)))

        comparing = [c for c in (self, other) if c.landscape_every or c.ics_every]
        levelled = comparing + [c for c in (self, other) if c.sharpness_levels and c not in comparing]
        if self.landscape_every and other.landscape_every and self.landscape_multipliers != other.landscape_multipliers:
            raise ConfigError("two experiments probe the same run with different landscape grids; use one grid")
        multipliers = self.landscape_multipliers if self.landscape_every else other.landscape_multipliers
        return ProbeConfig(
            landscape_every=finer(self.landscape_every, other.landscape_every), landscape_multipliers=multipliers,
            ics_every=finer(self.ics_every, other.ics_every),
            ics_layers=layers(self.ics_every, self.ics_layers, other.ics_every, other.ics_layers),
            curvature_every=finer(self.curvature_every, other.curvature_every),
            curvature_layers=layers(self.curvature_every, self.curvature_layers, other.curvature_every,
                                    other.curvature_layers),
            weight_bounds_every=finer(self.weight_bounds_every, other.weight_bounds_every),
            histogram_every=finer(self.histogram_every, other.histogram_every),
            early_every=min((c.early_every for c in comparing if c.early_every), default=0),
            early_until=max((c.early_until for c in comparing), default=0),
            progress_levels=tuple(sorted({level for c in levelled for level in c.progress_levels}, reverse=True)),
            **_extension_union(self, other),
        )


# ProbeConfig's fields of the extension beyond the paper (issue 16): left out of a run id's hash at their defaults
EXTENSION_PROBE_FIELDS = ("sharpness_every", "sharpness_levels", "sharpness_top_k", "sharpness_iterations",
                          "hutchinson_probes", "sharpness_batch", "sharpness_blocks", "filter_landscape_steps",
                          "filter_landscape_points", "filter_landscape_grid", "filter_landscape_batch")


def _extension_union(a: ProbeConfig, b: ProbeConfig) -> dict:
    """The extension fields of a.union(b): schedules merged, sizes the largest asked for by a config that runs the
    probe (defaults where neither does); two different probe batches for one run are an error."""
    def merged(using: list[ProbeConfig], batch_key: str, keys: tuple[str, ...]) -> dict:
        batches = {getattr(c, batch_key) for c in using}
        if len(batches) > 1:
            raise ConfigError(f"two experiments probe the same run with {batch_key} {sorted(batches)}; use one")
        defaults = ProbeConfig()
        return {key: max((getattr(c, key) for c in using), default=getattr(defaults, key)) for key in keys} | \
            {batch_key: batches.pop() if batches else getattr(defaults, batch_key)}

    sharp = [c for c in (a, b) if c.sharpness_every or c.sharpness_levels]
    flat = [c for c in (a, b) if c.filter_landscape_steps]
    every = [c.sharpness_every for c in (a, b) if c.sharpness_every]
    return {
        "sharpness_every": min(every, default=0),
        "sharpness_levels": tuple(sorted({v for c in sharp for v in c.sharpness_levels}, reverse=True)),
        "sharpness_blocks": any(c.sharpness_blocks for c in sharp),
        "filter_landscape_steps": tuple(sorted({s for c in flat for s in c.filter_landscape_steps})),
        **merged(sharp, "sharpness_batch", ("sharpness_top_k", "sharpness_iterations", "hutchinson_probes")),
        **merged(flat, "filter_landscape_batch", ("filter_landscape_points", "filter_landscape_grid")),
    }


@dataclass(frozen=True)
class SharpnessConfig:
    """The sharpness experiment (beyond the paper, issue 16; empirics.sharpness, empirics.filter_landscape): the
    runs of the landscape and dln experiments ({none, BN} VGG-1d at every train lr, the DLN at every dln lr) on
    their first `seeds` seeds carry the sharpness probe, and on their first `filter_landscape_seeds` seeds the
    filter-normalised landscape at the last step (VGG-1d at the first lr only: 0.5-0.9 s of CPU a landscape). Not in
    run ids itself: it decides the ProbeConfig they carry.

    Schedule: the probe runs where the smoothed training loss first reaches each of `levels` (a subset of the
    runs' progress levels: the landscape probe measures beta at the same steps, and bn-lower-sharpness compares
    the networks at matched progress there), plus every `every` steps (0: not periodically). 0.7 and 0.45 x the
    zero-output loss are reached by the standard VGG-1d at lr 0.1 within 600 steps and by both DLNs; a stuck
    network (the standard one at lr 0.5) reaches none and costs nothing, and the claims do not compare it.
    Cost per probe: iterations x (1 + [scale-invariant layers]) + hutchinson_probes HVPs, 1.7-1.8 forward+backwards
    each in a probe (`python -m verify bench`: sharpness_per_hvp; 28 HVPs ~ 49 forward+backwards on the BN VGG-1d).
    """

    levels: tuple[float, ...] = (0.7, 0.45)
    every: int = 0
    top_k: int = 1
    # residual <= 1% of ||H|| by 6-10 steps on the VGG-1d, 10-16 on the DLN with BN (its value within 1% by 10)
    iterations: int = 10
    hutchinson_probes: int = 8  # standard error ~10-20% of the trace on these networks
    batch: int = 0  # 0: the step's batch (BN's statistics as trained; a sub-batch is another BN function)
    blocks: bool = False
    # the first `seeds` of train.seeds: 5, as every other compared configuration of the default preset. With 3 (the
    # fewest a verdict takes, verify.statistics.MIN_SEEDS) the bootstrap interval of a ratio is about the range of
    # three values, and bn-lower-sharpness at VGG-1d lr 0.1 (ratio ~1.1) was inconclusive with one thread per run
    # and reproduced with two. Cost, measured per probe (one CPU thread): BN VGG-1d 0.7-0.77 s, standard
    # 0.3-0.36 s, DLN with BN 0.85-0.93 s, without 0.12-0.14 s; 50 probes (the standard network at lr 0.5 reaches
    # no level) ~28 s of CPU in the default preset, and its four filter landscapes 1.5 s
    seeds: int = 5
    filter_landscape_seeds: int = 1
    filter_landscape_points: int = 21
    filter_landscape_grid: int = 11
    filter_landscape_batch: int = 0


@dataclass(frozen=True)
class DLNConfig:
    """Deep linear network (paper §4): depth x Linear(width, width, bias=False), x ~ N(0, I), target A x.

    Full-batch gradient descent on the mean over samples of ||f(x) - A x||^2 (empirics.dln).
    """

    depth: int = 25
    width: int = 10
    samples: int = 1000
    steps: int = 500  # paper: 10k (the `paper` preset); ~30 ms a step here, overhead-bound
    # mean loss over 1000 samples: the paper's summed-loss lrs 1e-6, 1e-7 correspond to 1e-3, 1e-4 here
    lrs: tuple[float, ...] = (1e-3,)
    norms: tuple[Norm, ...] = (Norm.NONE, Norm.BATCHNORM)
    eval_every: int = 50
    log_every: int = 10
    probe_every: int = 100  # landscape and ICS (layers #9, #17 in the paper)
    early_probe_every: int = 25  # as TrainConfig's: the early window and the progress levels
    early_probe_until: int = 100
    progress_levels: tuple[float, ...] = (0.85, 0.7, 0.55, 0.45, 0.35, 0.27, 0.2, 0.15, 0.1, 0.07, 0.05)
    landscape_multipliers: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0)


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)  # probes of the `train` runs themselves
    dln: DLNConfig = field(default_factory=DLNConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)  # beyond the paper (issue 16)
    # named experiments to run (empirics.experiments): train, noisy, ics, landscape, lp, dln, bounds
    experiments: tuple[str, ...] = ("train",)
    # the lp experiment's normalisers beside BN; lp2 is BN exactly (theory: the formulas coincide), so
    # the CPU presets skip its run and the paper preset keeps it as the paper's Fig. 11 does
    lp_norms: tuple[Norm, ...] = field(default_factory=lp_family)
    # the norms experiment: the classification model with each of these normalisers (() = every registered one,
    # --normaliser-file's included; the CLI's --norm), on the first norms_seeds of train.seeds: two, so that every
    # normaliser's training curve has a second seed beside it and every normaliser's non-refuted statements are
    # checked on at least 10,000 rows at the default size (WeightNorm, whose groups are the 112 output units, has
    # the fewest: 2 x 61 capture steps x 112 = 13,664)
    norms_normalisers: tuple[Norm, ...] = ()
    norms_seeds: int = 2
    # user normaliser files (--normaliser-file, absolute paths): registered again in every worker process
    normaliser_files: tuple[str, ...] = ()
    device: Device = Device.AUTO
    seed_offset: int = 0  # added to every seed in train.seeds (the CLI's --seed)
    threads: int = 1  # torch intra-op threads per run (0 = torch's default; recorded; affects float sums)
    workers: int = 2  # runs trained in parallel processes (does not change any result; not in run ids)
    # updates between a run's checkpoints (0 = none): an interrupted run resumes from the last one,
    # bit-identically on CPU (empirics.train); scheduling only, so not in run ids
    checkpoint_every: int = 0
    # where the runs are trained (the CLI's --executor, --address); scheduling only, like workers: not in run ids.
    # address (ray only): "" starts a Ray instance on this machine, "auto" or ray://host:port joins a cluster
    executor: Executor = Executor.LOCAL
    address: str = ""
    # what one Ray task reserves: num_cpus 0 = threads (1 when threads is 0); num_gpus -1 = 1 for a run on CUDA,
    # else 0 (device auto: 1 when the cluster has GPUs); fractions let several small runs share one card
    num_cpus: float = 0.0
    num_gpus: float = -1.0


# What a run's result depends on, per model kind: the run id hashes exactly these sections (minus the
# sweep lists, which say which runs exist, not what one run does), so adding an experiment or a
# learning rate to a sweep never invalidates the runs already done. `workers`, `executor`, `address`,
# `num_cpus` and `num_gpus` are scheduling only.
RUN_SECTIONS = {"vgg1d": ("data", "model", "train", "threads", "device"), "dln": ("dln", "threads", "device")}
SWEEP_KEYS = ("lrs", "norms", "seeds")


@dataclass(frozen=True)
class RunSpec:
    """One training run: the config, the (norm, lr, seed) that distinguish it, its kind and probes."""

    config: ExperimentConfig
    norm: Norm
    lr: float
    seed: int
    kind: str = "vgg1d"  # "vgg1d" (mnist1d, SGD) or "dln" (deep linear network, full-batch GD)
    probes: ProbeConfig = field(default_factory=ProbeConfig)

    @property
    def run_id(self) -> str:
        config = to_dict(self.config)
        relevant = {}
        for key in RUN_SECTIONS[self.kind]:
            value = config[key]
            relevant[key] = {k: v for k, v in value.items() if k not in SWEEP_KEYS} if isinstance(value, dict) else value
        payload = {"kind": self.kind, "config": relevant, "norm": self.norm.value, "lr": self.lr, "seed": self.seed,
                   "probes": _probes_payload(self.probes)}
        formula = _user_formula(self.norm)
        if formula is not None:  # a researcher's file: an edited formula is another run under the same name
            payload["formula"] = formula
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
        prefix = "dln-" if self.kind == "dln" else ""
        return f"{prefix}{self.norm.value}-lr{self.lr:g}-s{self.seed}-{digest}"


def _probes_payload(probes: ProbeConfig) -> dict:
    """The probes as run ids hash them: extension fields at their defaults left out (`EXTENSION_PROBE_FIELDS`)."""
    defaults = to_dict(ProbeConfig())
    return {key: value for key, value in to_dict(probes).items()
            if key not in EXTENSION_PROBE_FIELDS or value != defaults[key]}


def _user_formula(norm: Norm) -> str | None:
    """The formula and axis of a normaliser registered from outside theory/normalisers/, as text; None otherwise
    (the project's own normalisers are fixed by the code revision, and their run ids stay as they were)."""
    from theory.normalisers import REGISTRY

    normaliser = REGISTRY.get(norm.value)
    if normaliser is None or normaliser.hat.__module__.startswith("theory.normalisers"):
        return None
    return str((normaliser.formula_key(), normaliser.axis))


ALL_EXPERIMENTS = ("train", "noisy", "ics", "landscape", "lp", "bounds", "dln", "norms", "sharpness")
PRESET_EXPERIMENTS = ALL_EXPERIMENTS

PRESETS: dict[str, ExperimentConfig] = {
    # seconds: for tests and CI
    "smoke": ExperimentConfig(
        model=ModelConfig(channels=(8, 8, 16, 16), hidden=32),
        train=TrainConfig(steps=30, batch_size=32, lrs=(0.1,), seeds=(0,), eval_every=15, log_every=5,
                          capture_every=10, probe_every=10, curvature_every=20, curvature_layers=(0,)),
        dln=DLNConfig(depth=6, samples=200, steps=30, eval_every=10, log_every=5, probe_every=10),
        # tiny: every 20 steps (0 and 20) besides the levels, few products, a 5 x 5 landscape
        sharpness=SharpnessConfig(every=20, iterations=4, hutchinson_probes=3, seeds=1, filter_landscape_points=7,
                                  filter_landscape_grid=5),
        experiments=PRESET_EXPERIMENTS,
        workers=1,  # tiny runs: spawning processes would cost more than it saves
        checkpoint_every=10,  # so the tests exercise resuming mid-run
    ),
    # minutes on a 2-core CPU
    "default": ExperimentConfig(experiments=PRESET_EXPERIMENTS),
    # the 2-D path on real images on a CPU: the 2-D VGG (Conv2d + BatchNorm2d, 2-D GroupNorm, ...) on
    # scikit-learn's 8 x 8 digits; every experiment but the deep linear network's
    "digits": ExperimentConfig(
        data=DataConfig(name="digits"),
        model=ModelConfig(name="vgg2d_digits", channels=(8, 8, 16, 16)),
        train=TrainConfig(steps=300, batch_size=128, seeds=(0, 1, 2), eval_every=50, log_every=1, capture_every=10,
                          probe_every=50, early_probe_until=50, curvature_every=150),
        experiments=("train", "noisy", "ics", "landscape", "bounds", "norms"),
    ),
    # the paper's scale, for a GPU: VGG-16 on CIFAR-10 (local folder via --data-root), 15k steps,
    # batch 128, lr 0.1 / 0.5; the DLN at 10k steps and both of the paper's learning rates
    "paper": ExperimentConfig(
        data=DataConfig(name="cifar10"),
        model=ModelConfig(name="vgg16"),
        train=TrainConfig(steps=15_000, batch_size=128, lrs=(0.1, 0.5), seeds=(0, 1, 2), eval_every=500,
                          log_every=50, capture_every=500, probe_every=100, curvature_every=2500),
        dln=DLNConfig(steps=10_000, lrs=(1e-3, 1e-4), eval_every=500, log_every=50, probe_every=100),
        experiments=PRESET_EXPERIMENTS,
        lp_norms=lp_family(include_batchnorm_formula=True),
        threads=0,
        workers=1,  # one GPU: runs in sequence
        checkpoint_every=500,  # a killed 15k-step run loses at most 500 steps
    ),
}


def to_dict(obj) -> dict:
    """Plain JSON-able dict of a config dataclass (enums by value, tuples as lists)."""

    def convert(value):
        if isinstance(value, Norm):
            return value.value
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(obj)


def _parse_scalar(text: str, kind: type, key: str):
    if kind is Norm:
        if text not in norm_names():
            raise ConfigError(f"{key}={text!r} is not one of {list(norm_names())}; pick one of those (or register "
                              "a formula with --normaliser-file)")
        return Norm(text)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        allowed = [member.value for member in kind]
        if text not in allowed:
            raise ConfigError(f"{key}={text!r} is not one of {allowed}; pick one of those")
        return kind(text)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"{key}={text!r} is not a boolean; use true or false")
        return text.lower() in ("true", "1")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a valid {kind.__name__}; give a {kind.__name__}") from None


def _parse_value(text: str, annotation, key: str):
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_kind, _ellipsis) = typing.get_args(annotation)
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise ConfigError(f"{key} needs at least one value; give a comma-separated list")
        return tuple(_parse_scalar(item, item_kind, key) for item in items)
    return _parse_scalar(text, annotation, key)


def override(config, assignment: str):
    """Return `config` with one `dotted.key=value` assignment applied, type-checked.

    >>> override(PRESETS["default"], "train.steps=200").train.steps
    200
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} has no '='; write it as section.key=value, e.g. train.steps=200")
    key, text = assignment.split("=", 1)
    path = key.strip().split(".")
    return _override_path(config, path, text.strip(), key.strip())


def _override_path(obj, path: list[str], text: str, full_key: str):
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys here: {', '.join(names)}")
    current = getattr(obj, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config key {full_key!r} goes too deep: {head} is a value, not a section")
        return dataclasses.replace(obj, **{head: _override_path(current, path[1:], text, full_key)})
    if dataclasses.is_dataclass(current):
        sub = [f.name for f in dataclasses.fields(current)]
        raise ConfigError(f"config key {full_key!r} is a section; set one of its keys: {', '.join(sub)}")
    return dataclasses.replace(obj, **{head: _parse_value(text, hints[head], full_key)})
