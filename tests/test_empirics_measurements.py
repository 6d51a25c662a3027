"""Shared tiny float64 nets for the measurement tests, and the one property every measurement owes:
it leaves parameters, .grad fields, buffers, train/eval flags, the global RNG and the noise generator
exactly as it found them.

The topic files (test_empirics_landscape.py, ..._ics.py, ...) import `tiny_net` and `tiny_batch`
from here; only helpers are imported, never test functions, so nothing is collected twice.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empirics.activations import activation_summary
from empirics.curvature import activation_curvature
from empirics.ics import ics, layer_groups, sgd_update
from empirics.landscape import landscape_probe
from empirics.noisy import NoisyBatchNorm1d, NoisyIdentity
from empirics.weight_bounds import weight_bound_terms

LENGTH = 6  # signal length of the tiny nets: conv channels see m = N * 6 values
CLASSES = 4
NORMS = ("none", "batchnorm", "noisy_bn", "noisy_only")






def _norm(kind: str, channels: int, generator: torch.Generator) -> list[nn.Module]:
    if kind == "none":
        return []
    if kind == "batchnorm":
        return [nn.BatchNorm1d(channels, eps=1e-5)]
    if kind == "noisy_bn":
        return [NoisyBatchNorm1d(channels, 1e-5, generator=generator)]
    if kind == "noisy_only":
        return [NoisyIdentity(channels, generator=generator)]
    raise ValueError(kind)


def tiny_net(norm: str = "batchnorm", seed: int = 0, dtype=torch.float64, widths=(3, 2)) -> nn.Sequential:
    """conv3 -> [norm] -> ReLU -> conv3 -> [norm] -> ReLU -> maxpool2 -> flatten -> linear(4), float64.

    Random non-trivial parameters (BN gamma in [0.5, 2], beta in [-0.5, 0.5]) from a private
    generator; the noise generator is seeded separately (seed + 100).
    """
    noise_generator = torch.Generator().manual_seed(seed + 100)
    layers: list[nn.Module] = []
    previous = 1
    with torch.random.fork_rng(devices=[]):  # PyTorch's default init draws from the global RNG
        for width in widths:
            layers += [nn.Conv1d(previous, width, 3, padding=1), *_norm(norm, width, noise_generator), nn.ReLU()]
            previous = width
        layers += [nn.MaxPool1d(2), nn.Flatten(), nn.Linear(previous * (LENGTH // 2), CLASSES)]
        model = nn.Sequential(*layers).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator, dtype=dtype) * 0.7)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator, dtype=dtype) * 0.3)
            elif isinstance(module, nn.BatchNorm1d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator, dtype=dtype) * 1.5 + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator, dtype=dtype) - 0.5)
    return model.train()


def tiny_batch(n: int = 5, seed: int = 1, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, LENGTH, generator=generator, dtype=dtype)  # (batch, 1, length)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return x, labels


def training_step_forward(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """What the training loop does before measuring: one train() forward + backward (draws the noise)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), labels).backward()


def _state(model: nn.Module) -> dict:
    noise = [m for m in model.modules() if isinstance(m, NoisyIdentity)]
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "training": [m.training for m in model.modules()],
        "tracking": [m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d)],
        "rng": torch.random.get_rng_state(),
        "noise": [m.generator.get_state() for m in noise] + [m.last_scale.clone() for m in noise],
        "frozen": [m.frozen for m in noise],
    }


def _assert_same_state(before: dict, after: dict) -> None:
    for key in ("params", "grads", "buffers"):
        assert before[key].keys() == after[key].keys(), key
        for name in before[key]:
            a, b = before[key][name], after[key][name]
            assert (a is None and b is None) or torch.equal(a, b), f"{key}[{name}] changed"
    assert before["training"] == after["training"]
    assert before["tracking"] == after["tracking"]
    assert torch.equal(before["rng"], after["rng"]), "global RNG advanced"
    assert all(torch.equal(a, b) for a, b in zip(before["noise"], after["noise"])), "noise generator advanced"
    assert before["frozen"] == after["frozen"]


def _measurements(model, x, labels):
    loss_fn = F.cross_entropy
    bn = next((m for m in model.modules() if isinstance(m, nn.BatchNorm1d)), None)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv1d))
    groups = layer_groups(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    update = sgd_update(dict(model.named_parameters()), grads, lr=0.3)
    runs = {
        "landscape": lambda: landscape_probe(model, loss_fn, x, labels, 0.1, [0.5, 2.0]),
        "landscape_batched": lambda: landscape_probe(model, loss_fn, x, labels, 0.1, [0.5, 2.0], batched=True),
        "ics": lambda: ics(model, loss_fn, x, labels, groups, update),
        "weight_bounds": lambda: weight_bound_terms(model, conv, x, labels, loss_fn),
        "activations": lambda: activation_summary(model, x, [conv], np.linspace(-3, 3, 7)),
    }
    if bn is not None:
        runs["curvature"] = lambda: activation_curvature(model, bn, x, labels, loss_fn)
    return runs


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_measurement_leaves_parameters_grads_buffers_modes_and_rngs_untouched(norm, mode):
    model = tiny_net(norm)
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)  # running stats moved once, .grad set, noise drawn
    model.train(mode == "train")
    for run in _measurements(model, x, labels).values():
        before = _state(model)
        run()
        _assert_same_state(before, _state(model))


@pytest.mark.parametrize("norm", NORMS)
def test_measurements_see_the_training_mode_function_even_when_called_in_eval_mode(norm):
    model = tiny_net(norm)
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    with torch.no_grad():
        for m in model.modules():  # running stats far from the batch's: eval() would give another loss
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(0.1)
        reference = copy.deepcopy(model)
        for m in reference.modules():
            if isinstance(m, NoisyIdentity):
                m.frozen = True
        train_loss = F.cross_entropy(reference(x), labels).item()
    model.eval()
    probe = landscape_probe(model, F.cross_entropy, x, labels, 0.1, [1.0])
    assert probe["loss0"] == pytest.approx(train_loss, rel=1e-12)


@pytest.mark.parametrize("norm", ["batchnorm", "noisy_bn"])
def test_measurements_create_no_grad_fields(norm):
    model = tiny_net(norm)
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    model.zero_grad(set_to_none=True)  # as after optimizer.zero_grad(): measurements must not refill .grad
    for name, run in _measurements(model, x, labels).items():
        run()
        assert all(p.grad is None for p in model.parameters()), name
