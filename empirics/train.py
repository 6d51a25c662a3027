"""One training run: plain SGD on mnist1d, with bound captures at sampled steps.

Step numbering: step s (0 <= s < steps) is the s-th SGD update; its forward, logged loss and
capture all see the parameters after s updates, before update s is applied. Test evaluations
record at step s the parameters after s updates, the last one at s = steps_done.

Batches: every epoch draws a fresh permutation of the training set from the run's own generator
and cuts it into full batches of batch_size; the remainder is dropped, so every BN batch has the
same m. Nothing reads or advances the global RNGs.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .capture import BoundCapture, concat_rows
from .storage import strict_json, write_atomic, write_json
from .config import ConfigError, Device, RunSpec, to_dict, validate
from .data import load_mnist1d
from .models import build_model, norm_layers

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


def _stream_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent CPU generators for model init and batch order, both derived from `seed`.

    Separate streams keep the batch order unchanged when only the model's size changes.
    """
    init_seed, order_seed = (int(child.generate_state(1, np.uint64)[0]) for child in np.random.SeedSequence(seed).spawn(2))
    return torch.Generator().manual_seed(init_seed), torch.Generator().manual_seed(order_seed)


def _batch_indices(n: int, batch_size: int, generator: torch.Generator):
    """Endless stream of index batches: a fresh permutation per epoch, remainder dropped."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness; a sample with any non-finite logit counts as wrong."""
    return (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a whole split in eval() mode (BN running statistics).

    Restores train() mode afterwards; evaluation never updates running statistics.
    """
    model.eval()
    try:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), EVAL_CHUNK):
            logits = model(x[start : start + EVAL_CHUNK])  # (chunk, 10)
            labels = y[start : start + EVAL_CHUNK]
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int(_correct(logits, labels).sum().item())
        return loss_sum / len(y), correct / len(y)
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


def train_model(spec: RunSpec, progress: bool = True) -> TrainResult:
    """Train one run in memory; a non-finite loss stops it cleanly with `diverged_at` set."""
    config = validate(spec.config)
    t = config.train
    device = resolve_device(config.device)
    data = load_mnist1d(config.data.seed)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)  # (4000, 1, 40), (4000,)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)

    init_generator, order_generator = _stream_generators(spec.seed)
    model = build_model(config.model, spec.norm, t.bn_eps, generator=init_generator).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.0, weight_decay=0.0)
    capture = BoundCapture(model) if norm_layers(model) else None
    batches = _batch_indices(len(y_train), t.batch_size, order_generator)

    train_log = {"step": [], "loss": [], "acc": []}
    test_log = {"step": [], "loss": [], "acc": []}
    capture_chunks = []
    diverged_at = None
    steps_done = 0
    started = time.perf_counter()

    def record_test(step: int) -> None:
        loss, acc = evaluate(model, x_test, y_test)
        test_log["step"].append(step)
        test_log["loss"].append(loss)
        test_log["acc"].append(acc)

    bar = tqdm(range(t.steps), desc=spec.run_id, disable=not progress)
    for step in bar:
        if step % t.eval_every == 0:
            record_test(step)
        indices = next(batches).to(device)
        xb, yb = x_train[indices], y_train[indices]  # (batch, 1, 40), (batch,)
        capturing = capture is not None and (step % t.capture_every == 0 or step == t.steps - 1)

        optimizer.zero_grad(set_to_none=True)
        with (capture.active() if capturing else nullcontext()):
            logits = model(xb)  # (batch, 10)
            loss = F.cross_entropy(logits, yb)
            loss_value = loss.item()
            finite = math.isfinite(loss_value)
            if finite:
                loss.backward()

        if step % t.log_every == 0 or step == t.steps - 1 or not finite:
            train_log["step"].append(step)
            train_log["loss"].append(loss_value)
            train_log["acc"].append(_correct(logits.detach(), yb).float().mean().item())
        if not finite:
            diverged_at = step
            break
        if capturing:
            capture_chunks.append(capture.collect(step))
        optimizer.step()
        steps_done = step + 1
        if progress and step % t.log_every == 0:
            bar.set_postfix(loss=f"{loss_value:.3g}")
    bar.close()

    if not test_log["step"] or test_log["step"][-1] != steps_done:  # a divergence may land on an eval step
        record_test(steps_done)
    history = {
        "train": train_log,
        "test": test_log,
        "final_train_acc": evaluate(model, x_train, y_train)[1],
        "final_test_acc": test_log["acc"][-1],
        "diverged_at": diverged_at,
        "steps_done": steps_done,
        "wall_s": time.perf_counter() - started,
        "device": str(device),
        "backend": _backend_flags(),
    }
    return TrainResult(model=model, history=history, captures=concat_rows(capture_chunks))


def train_run(spec: RunSpec, out_dir: Path, progress: bool = True) -> dict:
    """Train one run and write spec.json, history.json, captures.npz, then the `done` marker.

    Returns the history as written (non-finite floats as None).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "done").unlink(missing_ok=True)  # a rerun is incomplete until it finishes
    write_json(
        out_dir / "spec.json",
        {"run_id": spec.run_id, "norm": spec.norm.value, "lr": spec.lr, "seed": spec.seed, "config": to_dict(spec.config)},
    )
    result = train_model(spec, progress=progress)
    write_json(out_dir / "history.json", result.history)
    write_atomic(out_dir / "captures.npz", lambda file: np.savez(file, **result.captures))
    write_atomic(out_dir / "done", lambda file: None)
    return strict_json(result.history)
