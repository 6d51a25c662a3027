"""One training run: SGD on a VGG (mnist1d, digits or CIFAR-10) or full-batch GD on the DLN, with probes.

Step numbering: step s (0 <= s < steps) is the s-th SGD update; its forward, logged loss and
capture all see the parameters after s updates, before update s is applied. Test evaluations
record at step s the parameters after s updates, the last one at s = steps_done.

Batches: every epoch draws a fresh permutation of the training set from the run's own generator
and cuts it into full batches of batch_size; the remainder is dropped, so every BN batch has the
same m. Nothing reads or advances the global RNGs.

Checkpoints: with `config.checkpoint_every = k > 0`, after every k-th update the run's whole state
-- parameters and buffers, optimiser, its three generators (init, batch order, normaliser noise),
the position in the current epoch's permutation, history, captures and probe tables so far -- is
written atomically to `checkpoint.pt` in the run directory. A run started again finds it and
continues from that step; on CPU it ends bit-identical to an uninterrupted run (tested). No global
or CUDA RNG stream is drawn by a run, so none is saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .capture import BoundCapture, concat_rows
from .cifar import load_cifar10
from .config import ConfigError, Device, RunSpec, register_normaliser_files, to_dict
from .experiments import validate
from .data import load_mnist1d
from .digits import IMAGE_SIZE as DIGITS_SIZE
from .digits import IN_CHANNELS as DIGITS_CHANNELS
from .digits import load_digits
from .dln import build_dln, dln_loss, synthetic_regression
from .models import build_model
from .norms import norm_factory
from .phases import PhaseClock
from .probes import ProbeRecorder
from .storage import strict_json, write_atomic, write_json
from .vgg2d import build_vgg2d, digits_layers

EVAL_CHUNK = 1000  # samples per forward when evaluating a whole split; bounds memory only


def resolve_device(device: Device) -> torch.device:
    """AUTO -> cuda when available, else cpu; an explicit CUDA request must be satisfiable."""
    if device is Device.CUDA and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was requested but torch.cuda.is_available() is False; use --device cpu or auto"
        )
    if device is Device.CPU:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _stream_generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """Independent CPU generators for model init, batch order and normaliser noise, from `seed`.

    Separate streams keep the batch order unchanged when only the model's size changes, and keep
    init and order identical between a noisy and a plain run (SeedSequence children are stable).
    """
    children = np.random.SeedSequence(seed).spawn(3)
    return tuple(torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0])) for c in children)


class _BatchOrder:
    """Endless stream of index batches: a fresh permutation per epoch, remainder dropped.

    The permutation and the position in it are state (`state_dict`), so a resumed run draws the
    batches an uninterrupted one would; the generator's own state is saved with the run's others.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.order: torch.Tensor | None = None  # (n,) this epoch's permutation
        self.start = 0

    def __iter__(self) -> _BatchOrder:
        return self

    def __next__(self) -> torch.Tensor:
        if self.order is None or self.start + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.start = 0
        batch = self.order[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"order": self.order, "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.start = state["order"], state["start"]


class _FullBatch:
    """Every sample at every step (the DLN's gradient descent); nothing to save."""

    def __init__(self, n: int):
        self.everything = torch.arange(n)

    def __iter__(self) -> _FullBatch:
        return self

    def __next__(self) -> torch.Tensor:
        return self.everything

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness; a sample with any non-finite logit counts as wrong."""
    return (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)


class _PendingAccuracy:
    """The training batches' accuracies of logged steps, computed together when the log is read.

    A logged step keeps its logits and labels (references, no copy: the step's own tensors); `flush` fills the
    reserved entries of train_log["acc"] with one batched `_correct` over every kept step, the same float32
    count / batch size each step's `_correct(...).float().mean()` gives (an integer sum is exact in float32), so
    a step pays no per-step reductions (~5 small ops, ~0.3 ms a step on this CPU: 0.02 of a VGG-1d run)."""

    def __init__(self, acc_log: list):
        self.acc_log = acc_log
        self.kept: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (index into acc_log, logits, labels)

    def keep(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.kept.append((len(self.acc_log), logits.detach(), labels))
        self.acc_log.append(None)

    @torch.no_grad()
    def flush(self) -> None:
        if not self.kept:
            return
        sizes = [labels.shape[0] for _, _, labels in self.kept]
        correct = _correct(torch.cat([logits for _, logits, _ in self.kept]),
                           torch.cat([labels for _, _, labels in self.kept]))
        counts = torch.stack([part.sum() for part in correct.split(sizes)])
        accuracies = (counts.float() / torch.tensor(sizes, dtype=torch.float32, device=counts.device)).tolist()
        for (index, _, _), accuracy in zip(self.kept, accuracies):
            self.acc_log[index] = accuracy
        self.kept.clear()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=F.cross_entropy) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split in eval() mode (BN running statistics).

    Accuracy is computed for integer labels only (nan for regression targets). Restores train()
    mode afterwards; evaluation never updates running statistics.
    """
    model.eval()
    try:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), EVAL_CHUNK):
            outputs = model(x[start : start + EVAL_CHUNK])  # (chunk, 10) logits, or (chunk, width)
            labels = y[start : start + EVAL_CHUNK]
            loss_sum += loss_fn(outputs, labels).item() * len(labels)  # every loss_fn here is a mean
            if not labels.is_floating_point():
                correct += int(_correct(outputs, labels).sum().item())
        return loss_sum / len(y), (correct / len(y) if not y.is_floating_point() else float("nan"))
    finally:
        model.train()


def _backend_flags() -> dict:
    """Numerics-relevant backend settings in force (TF32 changes the gradients we measure)."""
    return {
        "torch_version": torch.__version__,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "num_threads": torch.get_num_threads(),
    }


@dataclass
class TrainResult:
    model: nn.Module  # final parameters, train() mode, on the run's device
    history: dict  # the content of history.json (floats may be non-finite)
    captures: dict[str, np.ndarray]  # the content of captures.npz
    probes: dict[str, np.ndarray] = field(default_factory=dict)  # the content of probes.npz
    phases: PhaseClock = field(default_factory=PhaseClock)  # where the time went (empirics.phases); not saved


@dataclass
class _Task:
    """What differs between model kinds: the network, its data, loss, batches and accuracy."""

    model: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: _BatchOrder | _FullBatch
    classifies: bool  # accuracies are meaningful (mnist1d) or not (DLN regression)
    generators: dict[str, torch.Generator]  # every RNG stream the run draws from: init, order, noise


def _vgg_task(spec: RunSpec, device: torch.device) -> _Task:
    """VGG-1d on mnist1d, the 2-D VGG on scikit-learn's digits, or a 2-D VGG on CIFAR-10 from its local folder."""
    config = spec.config
    init_generator, order_generator, noise_generator = _stream_generators(spec.seed)
    if config.data.name == "digits":
        data = load_digits(config.data.seed)
        model = build_vgg2d(digits_layers(config.model.channels),
                            norm_factory(spec.norm, config.train.bn_eps, noise_generator, spatial_dims=2),
                            generator=init_generator, in_channels=DIGITS_CHANNELS, image_size=DIGITS_SIZE).to(device)
    elif config.data.name == "cifar10":
        data = load_cifar10(config.data.root)
        model = build_vgg2d(config.model.name, norm_factory(spec.norm, config.train.bn_eps, noise_generator,
                                                            spatial_dims=2),
                            generator=init_generator, width_multiplier=config.model.width_multiplier).to(device)
    else:
        data = load_mnist1d(config.data.seed)
        model = build_model(config.model, spec.norm, config.train.bn_eps, generator=init_generator,
                            noise_generator=noise_generator).to(device)
    return _Task(model, data.x_train.to(device), data.y_train.to(device),  # (4000, 1, 40), (4000,)
                 data.x_test.to(device), data.y_test.to(device), F.cross_entropy,
                 _BatchOrder(len(data.y_train), config.train.batch_size, order_generator), classifies=True,
                 generators={"init": init_generator, "order": order_generator, "noise": noise_generator})


def _dln_task(spec: RunSpec, device: torch.device) -> _Task:
    """Deep linear network, full batch: every step sees all samples; the test set is a fresh draw."""
    d, bn_eps = spec.config.dln, spec.config.train.bn_eps
    init_generator, order_generator, noise_generator = _stream_generators(spec.seed)
    model = build_dln(d.depth, d.width, norm_factory(spec.norm, bn_eps, noise_generator) or "none",
                      generator=init_generator).to(device)
    x, target, a = synthetic_regression(d.samples, d.width, seed=spec.seed)
    x_test = torch.randn(d.samples, d.width, generator=torch.Generator().manual_seed(spec.seed + 10_000))
    return _Task(model, x.to(device), target.to(device), x_test.to(device), (x_test @ a.T).to(device), dln_loss,
                 _FullBatch(d.samples), classifies=False,
                 generators={"init": init_generator, "order": order_generator, "noise": noise_generator})


def _schedule(spec: RunSpec) -> tuple[int, int, int, int]:
    """(steps, eval_every, log_every, capture_every) of the run's kind."""
    if spec.kind == "dln":
        d = spec.config.dln
        return d.steps, d.eval_every, d.log_every, 0
    t = spec.config.train
    return t.steps, t.eval_every, t.log_every, t.capture_every


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # bump when the checkpoint's content changes; an older one is then ignored


@dataclass
class _Progress:
    """Everything a run has produced so far, besides the model and optimiser: what a checkpoint adds."""

    next_step: int = 0
    train_log: dict = field(default_factory=lambda: {"step": [], "loss": [], "acc": []})
    test_log: dict = field(default_factory=lambda: {"step": [], "loss": [], "acc": []})
    capture_chunks: list = field(default_factory=list)
    last_finite: dict | None = None  # {"step", "loss"} of the last step whose loss was finite
    wall_s: float = 0.0  # training time before this process took over
    resumed_at: list = field(default_factory=list)  # steps at which the run was resumed from a checkpoint


def _save_checkpoint(path: Path, spec: RunSpec, task: _Task, optimizer, probes: ProbeRecorder,
                     progress: _Progress) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "run_id": spec.run_id,
        "model": task.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {name: generator.get_state() for name, generator in task.generators.items()},
        "batches": task.batches.state_dict(),
        "probes": probes.state_dict(),
        "progress": progress,
    }
    write_atomic(path, lambda file: torch.save(state, file))


def _load_checkpoint(path: Path, spec: RunSpec, task: _Task, optimizer, probes: ProbeRecorder) -> _Progress | None:
    """Restore the run's state from `path`; None (start from step 0) if there is no usable checkpoint.

    The file is this run's own, written by `_save_checkpoint` into the output directory, so it is
    unpickled in full (weights_only=False: it holds numpy capture rows and the progress record).
    A checkpoint that cannot be read or belongs to another run id or format is ignored: the run
    then starts over, which costs time but never gives a wrong result.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - any unreadable checkpoint is only a lost shortcut
        return None
    if not (isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and state.get("run_id") == spec.run_id):
        return None
    task.model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, generator in task.generators.items():
        generator.set_state(state["generators"][name])
    task.batches.load_state_dict(state["batches"])
    probes.load_state_dict(state["probes"])
    progress = state["progress"]
    progress.resumed_at.append(progress.next_step)
    return progress


def train_model(spec: RunSpec, progress: bool = True, checkpoint: Path | None = None,
                clock: PhaseClock | None = None) -> TrainResult:
    """Train one run in memory; a non-finite loss stops it cleanly with `diverged_at` set.

    With `checkpoint` (a file path) the run resumes from it if it holds this run's state, and writes
    it every `config.checkpoint_every` updates (0: never). `clock` (a fresh one if None) receives the
    time of every phase and step (empirics.phases); it is returned as TrainResult.phases.
    """
    clock = clock if clock is not None else PhaseClock()
    register_normaliser_files(spec.config.normaliser_files)  # a worker process: the user's formulas
    validate(spec.config)
    device = resolve_device(spec.config.device)
    with clock.phase("setup"):
        task = (_dln_task if spec.kind == "dln" else _vgg_task)(spec, device)
    model = task.model
    steps, eval_every, log_every, capture_every = _schedule(spec)
    # foreach: one fused dispatch for every parameter instead of torch's per-tensor loop on CPU, the same
    # elementwise p - lr * g bit for bit (tests/test_empirics_train.py); 0.72-0.78 of the loop's update time here
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.0, weight_decay=0.0, foreach=True)
    capture = BoundCapture(model) if capture_every else None
    capture = capture if capture is not None and capture.points else None  # nothing to capture without a normaliser
    probes = ProbeRecorder(spec.probes, model, task.loss_fn, spec.lr, seed=spec.seed)
    state = (_load_checkpoint(checkpoint, spec, task, optimizer, probes) if checkpoint is not None else None) \
        or _Progress()
    train_log, test_log, capture_chunks = state.train_log, state.test_log, state.capture_chunks
    checkpoint_every = spec.config.checkpoint_every if checkpoint is not None else 0
    diverged_at = None
    steps_done = state.next_step
    started = time.perf_counter()

    def record_test(step: int) -> None:
        loss, acc = evaluate(model, task.x_test, task.y_test, task.loss_fn)
        test_log["step"].append(step)
        test_log["loss"].append(loss)
        test_log["acc"].append(acc if task.classifies else None)

    accuracy = _PendingAccuracy(train_log["acc"])
    bar = tqdm(range(state.next_step, steps), desc=spec.run_id, disable=not progress, initial=state.next_step,
               total=steps)
    for step in bar:
        if step % eval_every == 0:
            with clock.phase("eval"):
                record_test(step)
        step_started = clock.now()
        indices = next(task.batches).to(device)
        xb, yb = task.x_train[indices], task.y_train[indices]  # (batch, 1, 40), (batch,) for VGG
        capturing = capture is not None and (step % capture_every == 0 or step == steps - 1)

        optimizer.zero_grad(set_to_none=True)
        with (capture.active() if capturing else nullcontext()):
            logits = model(xb)  # (batch, 10) for VGG, (batch, width) for the DLN
            loss = task.loss_fn(logits, yb)
            loss_value = loss.item()
            finite = math.isfinite(loss_value)
            if finite:
                loss.backward()
        step_seconds = clock.now() - step_started  # the step's own work; the update is added below

        if step % log_every == 0 or step == steps - 1 or not finite:
            with clock.phase("log"):
                train_log["step"].append(step)
                train_log["loss"].append(loss_value)
                if task.classifies:
                    accuracy.keep(logits, yb)
                else:
                    train_log["acc"].append(None)
        if not finite:
            diverged_at = step
            break
        state.last_finite = {"step": step, "loss": loss_value}
        if capturing:
            with clock.phase("capture_collect"):
                capture_chunks.append(capture.collect(step))
        with clock.phase("probes"):
            probes.before_update(step, xb, yb, loss_value)
            before = ({n: p.detach().clone() for n, p in model.named_parameters()}
                      if probes.wants_snapshot(step) else None)
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()} if before is not None else None
        update_started = clock.now()
        optimizer.step()
        clock.step(step_seconds + clock.now() - update_started, captured=capturing)
        if before is not None:
            with clock.phase("probes"):
                probes.after_update(step, xb, yb, before, grads)
        steps_done = step + 1
        if checkpoint_every and steps_done % checkpoint_every == 0 and steps_done < steps:
            at = dataclasses.replace(state, next_step=steps_done, wall_s=state.wall_s + time.perf_counter() - started)
            with clock.phase("checkpoint"):
                accuracy.flush()
                _save_checkpoint(checkpoint, spec, task, optimizer, probes, at)
        if progress and step % log_every == 0:
            bar.set_postfix(loss=f"{loss_value:.3g}")
    bar.close()
    with clock.phase("log"):
        accuracy.flush()

    with clock.phase("eval"):
        if not test_log["step"] or test_log["step"][-1] != steps_done:  # a divergence may land on an eval step
            record_test(steps_done)
        final_train = evaluate(model, task.x_train, task.y_train, task.loss_fn)
    history = {
        "train": train_log,
        "test": test_log,
        "final_train_acc": final_train[1] if task.classifies else None,
        "final_test_acc": test_log["acc"][-1],
        "final_train_loss": final_train[0],
        "final_test_loss": test_log["loss"][-1],
        "diverged_at": diverged_at,
        "last_finite": state.last_finite,
        "steps_done": steps_done,
        "wall_s": state.wall_s + time.perf_counter() - started,
        "resumed_at": state.resumed_at,
        "device": str(device),
        "backend": _backend_flags(),
    }
    return TrainResult(model=model, history=history, captures=concat_rows(capture_chunks), probes=probes.arrays(),
                       phases=clock)


def check_trainable(config) -> None:
    """Build each run's network with every normaliser from a user's file (--normaliser-file) and take one forward
    and backward on its first batch, before anything is written: a formula with no torch translation, an axis or
    a width the model cannot host, or a non-finite loss or gradient at initialisation is a ConfigError naming the
    normaliser and the reason. The project's own normalisers are covered by the tests instead."""
    from .config import _user_formula
    from .experiments import run_specs

    seen: set[tuple[str, str]] = set()
    for spec in run_specs(config):
        if (spec.kind, spec.norm.value) in seen or _user_formula(spec.norm) is None:
            continue
        seen.add((spec.kind, spec.norm.value))
        name, where = spec.norm.value, "the deep linear network" if spec.kind == "dln" else f"the {config.model.name}"
        try:
            task = (_dln_task if spec.kind == "dln" else _vgg_task)(spec, torch.device("cpu"))
            indices = next(task.batches)
            loss = task.loss_fn(task.model(task.x_train[indices]), task.y_train[indices])
            loss.backward()
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - the user's formula failed in torch; say which and why
            message = str(error).splitlines()[0] if str(error) else ""
            raise ConfigError(f"normaliser {name} has no working torch translation in {where} ({type(error).__name__}: "
                              f"{message}); use functions torch provides (sympy.lambdify's torch printer)") from None
        if not math.isfinite(loss.item()):
            raise ConfigError(f"normaliser {name} gives {where} a non-finite loss ({loss.item()}) at initialisation, on "
                              "the first batch; check where its formula divides by zero or leaves its domain")
        bad = [n for n, p in task.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise ConfigError(f"normaliser {name} gives {where} non-finite gradients at initialisation (first in "
                              f"{bad[0]}); check where its formula's derivative divides by zero")


def train_run(spec: RunSpec, out_dir: Path, progress: bool = True, clock: PhaseClock | None = None) -> dict:
    """Train one run and write spec.json, history.json, captures.npz, probes.npz, then the `done` marker.

    Resumes from the directory's checkpoint when it holds one of this run, and deletes it once the
    run is done. Returns the history as written (non-finite floats as None). `clock`, if given, receives
    the phases of `train_model` and "write", the time taken by the files.
    """
    clock = clock if clock is not None else PhaseClock()
    register_normaliser_files(spec.config.normaliser_files)  # before spec.run_id, which hashes a user's formula
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "done").unlink(missing_ok=True)  # a rerun is incomplete until it finishes
    write_json(
        out_dir / "spec.json",
        {"run_id": spec.run_id, "kind": spec.kind, "norm": spec.norm.value, "lr": spec.lr, "seed": spec.seed,
         "probes": to_dict(spec.probes), "config": to_dict(spec.config)},
    )
    result = train_model(spec, progress=progress, checkpoint=out_dir / CHECKPOINT, clock=clock)
    with clock.phase("write"):
        write_json(out_dir / "history.json", result.history)
        write_atomic(out_dir / "captures.npz", lambda file: np.savez(file, **result.captures))
        write_atomic(out_dir / "probes.npz", lambda file: np.savez(file, **result.probes))
        write_atomic(out_dir / "done", lambda file: None)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)  # the finished files supersede it
    return strict_json(result.history)
