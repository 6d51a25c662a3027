"""The filter-normalised random-direction loss landscape of Li, Xu, Taylor, Studer and Goldstein (NeurIPS 2018),
1-D and 2-D, at chosen steps (beyond the paper, issue 16).

At parameters theta, on one probe batch (the step's batch or its first `batch` samples), in train() mode:

    loss_1d[i]     = L(theta + alpha_i d1)                alpha_i on `points` values evenly in [-radius, radius]
    loss_2d[i, j]  = L(theta + alpha_i d1 + alpha_j d2)   alpha on `grid` values evenly in [-radius, radius]

Directions. d1, d2 have the parameters' shapes, i.i.d. N(0, 1) entries drawn from a generator the caller seeds
from the run seed and step (`sharpness.probe_generator`), never from the run's own streams, then filter-normalised:

    for every parameter of dimension >= 2 (conv / linear weights, a weight-space layer's direction v), each filter
    -- the slice of one output unit, W[j] -- is rescaled to the norm of the weights' filter:
        d[j] <- d[j] / ||d[j]|| * ||W[j]||        (so ||d[j]|| = ||W[j]||, Li et al. eq. (1))
    every parameter of dimension <= 1 (biases, BN gamma and beta, weight-space scales) gets d = 0, as Li et al.'s
    code does (`ignore="biasbn"`): the landscape moves the filters only.

Statistics: train() mode, batch statistics on the probe batch; running statistics are neither used nor written
(Li et al. evaluate in eval() mode, with running statistics: with BN that is another function than the one the
optimiser descends, and we measure that one). The noise of noisy layers is the training step's, replayed.
Everything runs inside `landscape.training_function` under torch.no_grad: no parameter, buffer or RNG stream
changes. Cost: points + grid^2 + 1 forward passes (no backward), 21 + 121 + 1 for the defaults, CHUNK_POINTS of
them per vmapped call; priced by `python -m verify bench` (filter_landscape_point: per point / one forward).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from .landscape import LossFn, Params, parameter_dict, training_function, training_loss


def filter_normalised_direction(params: Params, generator: torch.Generator) -> Params:
    """A Gaussian direction with every filter rescaled to the norm of the parameters' filter; 0 on parameters of
    dimension <= 1 (module doc). Drawn on the CPU in float64, returned in each parameter's dtype and device."""
    direction = {}
    for name, p in params.items():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        weight = p.detach().double().cpu()
        filters = d.flatten(1)  # (out, in * kernel): one filter per row
        scale = weight.flatten(1).norm(dim=1) / filters.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        direction[name] = (filters * scale[:, None]).reshape(p.shape).to(dtype=p.dtype, device=p.device)
    return direction


def _flat(direction: Params) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in direction.values()])


# points per torch.func.vmap call: measured (default preset, one CPU thread, 121 points) 11 a call takes 0.8 of
# the one-at-a-time loop on the VGG-1d with BN, 0.6 without, 0.35 on the DLN with BN; larger chunks gained nothing
CHUNK_POINTS = 11


def _losses(model, loss_fn, x, target, params: Params, d1: Params, d2: Params, coefficients: np.ndarray,
            chunk_size: int) -> np.ndarray:
    """L(theta + a d1 + b d2) for each row (a, b) of `coefficients`, `chunk_size` points per vmapped forward."""
    out = []
    for start in range(0, len(coefficients), chunk_size):
        chunk = torch.as_tensor(coefficients[start:start + chunk_size])
        stacked = {}
        for name, p in params.items():
            a, b = (chunk[:, k].to(device=p.device, dtype=p.dtype).view(-1, *([1] * p.dim())) for k in (0, 1))
            stacked[name] = p.unsqueeze(0) + a * d1[name].unsqueeze(0) + b * d2[name].unsqueeze(0)  # (K, *p.shape)
        out.append(vmap(lambda q: training_loss(model, q, x, target, loss_fn))(stacked).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def filter_landscape(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, target: torch.Tensor, *,
                     generator: torch.Generator, points: int = 21, grid: int = 11, radius: float = 1.0,
                     chunk_size: int = CHUNK_POINTS) -> dict:
    """The 1-D and 2-D filter-normalised landscapes around the model's parameters (module doc).

    Returns float64 numpy arrays alpha (points,), loss_1d (points,), grid_alpha (grid,), loss_2d (grid, grid)
    (row i: alpha_i along d1, column j: along d2) and scalars loss0 = L(theta), direction_cos = cos(d1, d2),
    batch. points or grid 0 leaves that landscape out (empty arrays). The points are evaluated `chunk_size` at a
    time in one torch.func.vmap (BN works under it: training_function turns running-statistics tracking off).
    """
    if points < 0 or grid < 0 or not radius > 0:
        raise ValueError(f"points={points}, grid={grid} must be >= 0 and radius={radius} > 0")
    with training_function(model), torch.no_grad():
        params = parameter_dict(model)
        d1 = filter_normalised_direction(params, generator)
        d2 = filter_normalised_direction(params, generator)

        alpha = np.linspace(-radius, radius, points) if points else np.zeros(0)
        grid_alpha = np.linspace(-radius, radius, grid) if grid else np.zeros(0)
        line = np.stack([alpha, np.zeros_like(alpha)], axis=1)
        plane = np.stack(np.meshgrid(grid_alpha, grid_alpha, indexing="ij"), axis=-1).reshape(-1, 2)
        losses = _losses(model, loss_fn, x, target, params, d1, d2, np.concatenate([line, plane]), chunk_size)
        loss_1d, loss_2d = losses[:points], losses[points:].reshape(grid, grid)
        loss0 = float(training_loss(model, params, x, target, loss_fn))
        f1, f2 = _flat(d1), _flat(d2)
        cos = float(f1 @ f2 / (f1.norm() * f2.norm())) if f1.norm() > 0 and f2.norm() > 0 else float("nan")
    return {"alpha": alpha, "loss_1d": loss_1d, "grid_alpha": grid_alpha, "loss_2d": loss_2d, "loss0": loss0,
            "direction_cos": cos, "batch": int(x.shape[0])}
