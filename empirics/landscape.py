"""The loss landscape along the gradient (paper Fig. 4 / 9 / 10), and the side-effect-free training function.

At parameters x0 with training-mode gradient g = grad L(x0) on a batch B, for each probed step
eta = multiplier * lr (multipliers > 0), on the SAME batch B, in train() mode (batch statistics):

    loss[k]        = L(x0 - eta_k g)
    grad_change[k] = || grad L(x0 - eta_k g) - g ||
    loss_range          = max_k loss[k] - min_k loss[k]                  (probed etas only, x0 excluded)
    loss_range_with_x0  = the same range with L(x0) included             (the band around the current loss)
    grad_change_min/max = min_k / max_k grad_change[k]                   (eta = 0 would add a trivial 0)
    beta_eff            = max_k grad_change[k] / || eta_k g ||           (effective beta-smoothness)

Norms are Euclidean over ALL trainable parameters flattened together (weights, biases, BN gamma and
beta), accumulated in float64. The paper's ranges: VGG eta in [0.5, 4] x lr, DLN [0.01, 30] x lr.

Cost (`python -m verify bench`, one CPU thread, 6 points, grads passed, L(x0) included): one probe
point = 1.1-1.16 forward+backwards unbatched, 1.3-1.4 vmapped on the VGG-1d default (batch 128);
vmapped wins on the smoke model (0.8 against 1.2), whose passes are too small to fill a core. The
path in use per device type is BATCHED_BY_DEVICE, set from the bench at the preset's size.

Every probe runs through `training_function(model)`, the one way measurements in this package
evaluate the network: train() mode, no BN running-statistics update, the noise of the last training
forward replayed (`noisy.frozen_noise`), the global RNG forked and every buffer restored, and all
derivatives via torch.func / torch.autograd.grad, so no `.grad` field, parameter, buffer, optimiser
state or RNG stream changes. Parameters enter through `torch.func.functional_call` over displaced
parameter dicts: no copy of the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .noisy import frozen_noise

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model output, target) -> scalar
Params = dict[str, torch.Tensor]


def _rng_devices(model: nn.Module) -> list[int]:
    """CUDA device indices the model lives on (fork_rng forks these besides the CPU generator)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def training_function(model: nn.Module) -> Iterator[None]:
    """Within: `model` computes its training-mode function and can change nothing but what it returns.

    - every module in train() mode (batch statistics: the function the optimiser differentiates);
    - BatchNorm layers with track_running_stats off, so they normalise by the batch and never write
      running_mean / running_var / num_batches_tracked (also under torch.func.vmap / jvp);
    - noisy layers replay the last training draw (`frozen_noise`), drawing nothing;
    - the global CPU (and the model's CUDA) RNG forked, and every buffer restored on exit, for modules
      this package does not know about.
    All of it is undone on exit, also when an exception escapes.
    """
    modes = [(module, module.training) for module in model.modules()]
    batchnorms = [(module, module.track_running_stats) for module in model.modules()
                  if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved_buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    with torch.random.fork_rng(devices=_rng_devices(model)), frozen_noise(model):
        try:
            model.train()
            for module, _ in batchnorms:
                module.track_running_stats = False
            yield
        finally:
            for module, tracked in batchnorms:
                module.track_running_stats = tracked
            for module, mode in modes:
                module.training = mode
            with torch.no_grad():
                for buffer, saved in saved_buffers:
                    buffer.copy_(saved)


def parameter_dict(model: nn.Module) -> Params:
    """{name: detached parameter} of every trainable parameter (shares storage: never modify in place)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def training_loss(model: nn.Module, params: Params, x: torch.Tensor, target: torch.Tensor,
                  loss_fn: LossFn) -> torch.Tensor:
    """loss_fn(model_params(x), target): the model's function at `params`; call inside training_function."""
    return loss_fn(functional_call(model, params, (x,), strict=False), target)


def squared_norm(tensors: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> float:
    """sum ||t||^2 over the tensors, accumulated in float64."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return float(torch.stack([torch.sum(t.detach().double() ** 2) for t in values]).sum())  # one device read


# Whether landscape_probe evaluates its points in one vmap by default, per device type, chosen by
# `python -m verify bench` (probe_point_unbatched vs probe_point_batched): CPU from the default size
# (VGG-1d, batch 128, one thread); CUDA unbatched until a paper-size GPU bench says otherwise.
BATCHED_BY_DEVICE = {"cpu": False, "cuda": False}


def batched_by_default(device: torch.device) -> bool:
    """The faster probe path on `device`'s type as measured by the bench (BATCHED_BY_DEVICE); unbatched if unmeasured."""
    return BATCHED_BY_DEVICE.get(torch.device(device).type, False)


def _displaced(params: Params, direction: Params, eta: float) -> Params:
    return {name: p - eta * direction[name] for name, p in params.items()}


def _probe_points_unbatched(model, loss_fn, x, target, params, g, etas):
    """(losses (K,), grad changes (K,)) one eta at a time: one forward+backward per point.

    All parameters live in one flat leaf vector per point (the model sees views of it), so the point
    costs a handful of whole-vector ops besides its forward+backward instead of a few per parameter,
    and the K results leave the device together at the end: no host-device synchronisation per point.
    """
    names = list(params)
    flat_params = torch.cat([params[name].reshape(-1) for name in names])
    flat_g = torch.cat([g[name].reshape(-1) for name in names])
    sizes = [params[name].numel() for name in names]
    losses, changes = [], []
    for eta in etas:
        flat = (flat_params - float(eta) * flat_g).requires_grad_(True)
        displaced = {name: piece.view(params[name].shape) for name, piece in zip(names, flat.split(sizes))}
        loss = training_loss(model, displaced, x, target, loss_fn)
        (grad_flat,) = torch.autograd.grad(loss, flat)  # 0 where a parameter is unused
        losses.append(loss.detach())
        changes.append(torch.linalg.vector_norm(grad_flat - flat_g, dtype=torch.float64))
    return torch.stack(losses).double().cpu().numpy(), torch.stack(changes).cpu().numpy()


def _probe_points_batched(model, loss_fn, x, target, params, g, etas, chunk_size):
    """The same, all etas in one torch.func.vmap over stacked displaced parameters.

    Works with BN in train() mode because training_function turns running-statistics tracking off:
    the in-place running-stat update is what vmap cannot batch (an unbatched buffer written with a
    batched value).
    """
    eta = torch.as_tensor(np.asarray(etas, dtype=np.float64))

    def stacked(name):
        p = params[name]
        steps = eta.to(device=p.device, dtype=p.dtype).reshape(-1, *([1] * p.dim()))
        return p.unsqueeze(0) - steps * g[name].unsqueeze(0)  # (K, *p.shape)

    value_and_grad = grad_and_value(lambda p: training_loss(model, p, x, target, loss_fn))
    grads, losses = vmap(value_and_grad, chunk_size=chunk_size)({name: stacked(name) for name in params})
    change_sq = sum(torch.sum((grads[n] - g[n].unsqueeze(0)).double().flatten(1) ** 2, dim=1) for n in g)
    return losses.detach().double().cpu().numpy(), change_sq.sqrt().cpu().numpy()


def landscape_probe(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, target: torch.Tensor, lr: float,
                    step_multipliers: Sequence[float], *, batched: bool | None = None, chunk_size: int | None = None,
                    grads: Params | None = None, loss0: float | None = None) -> dict:
    """Loss, gradient change and effective beta-smoothness along -g at eta = multiplier * lr (module doc).

    `grads` may pass the training step's gradient at the current parameters on this same batch
    (e.g. {name: p.grad}) to save one forward+backward; it is then trusted, not recomputed. `loss0`
    may pass that step's loss, L(x0) on this batch, likewise (saving one forward) when grads are given.
    `batched=True` evaluates all points in one vmap (memory ~ len(multipliers) forwards; bound it
    with `chunk_size`); None takes the faster path on x's device (`batched_by_default`). Returns
    float64 numpy arrays eta, loss, grad_change and scalars loss0, grad_norm, loss_min, loss_max,
    loss_range, loss_range_with_x0, grad_change_min, grad_change_max, grad_change_range, beta_eff,
    and batched, the path taken.
    """
    multipliers = np.asarray(step_multipliers, dtype=np.float64)
    if multipliers.ndim != 1 or multipliers.size == 0 or not np.all(multipliers > 0):
        raise ValueError(f"step_multipliers={list(multipliers)} must be a non-empty list of positive numbers "
                         "(eta = 0 is the current point: its loss is returned as loss0, its grad change is 0)")
    etas = multipliers * lr
    batched = batched_by_default(x.device) if batched is None else batched
    with training_function(model):
        params = parameter_dict(model)
        loss0_tensor, g = None, grads
        if g is None:
            g, loss0_tensor = grad_and_value(lambda p: training_loss(model, p, x, target, loss_fn))(params)
        else:  # a parameter without a gradient (None, as .grad of an unused one) did not move: zero
            g = {name: torch.zeros_like(p) if grads.get(name) is None else grads[name].detach()
                 for name, p in params.items()}
        if loss0_tensor is not None:
            loss0 = float(loss0_tensor)
        elif loss0 is None:
            with torch.no_grad():
                loss0 = float(training_loss(model, params, x, target, loss_fn))
        if batched:
            losses, changes = _probe_points_batched(model, loss_fn, x, target, params, g, etas, chunk_size)
        else:
            losses, changes = _probe_points_unbatched(model, loss_fn, x, target, params, g, etas)
    grad_norm = squared_norm(g) ** 0.5
    step_norms = etas * grad_norm
    with np.errstate(divide="ignore", invalid="ignore"):  # g = 0: beta is undefined (nan), not an error
        beta = np.max(changes / step_norms) if grad_norm > 0 else float("nan")
    return {
        "eta": etas,
        "loss": losses,
        "grad_change": changes,
        "loss0": loss0,
        "grad_norm": grad_norm,
        "loss_min": float(losses.min()),
        "loss_max": float(losses.max()),
        "loss_range": float(losses.max() - losses.min()),
        "loss_range_with_x0": float(max(losses.max(), loss0) - min(losses.min(), loss0)),
        "grad_change_min": float(changes.min()),
        "grad_change_max": float(changes.max()),
        "grad_change_range": float(changes.max() - changes.min()),
        "beta_eff": float(beta),
        "batched": batched,
    }

