"""Deep linear network (paper §4 DLN, Fig. 3 / 9 / 14): 25 bias-free linear layers fit to x -> A x.

    f(x) = W_depth ... W_1 x         W_i in R^{width x width}, Linear(width, width, bias=False)
    loss = (1/n) sum_i ||f(x_i) - A x_i||^2       squared error summed over the width outputs,
                                                  averaged over the n samples (`reduction="mean"`)

optionally with a normaliser after each of the first depth - 1 (hidden) layers, none after the output
layer. Trained by full-batch gradient descent: every step sees all n samples, so BN's statistics
are those of the whole data set.

Choices the paper leaves [open] (paper-notes §4), made here and recorded by the caller:
- width 10 (A is 10 x 10, so input = output = 10; hidden width equal, the simplest reading);
- x ~ N(0, I_width), n_samples = 1000 by default (full batch; n >> width so the fit is determined);
- A with i.i.d. N(0, 1) entries, drawn with x from one generator seeded by `seed`;
- the loss averaged over samples: with a sum instead, the paper's lr 1e-6 corresponds to lr 1e-6 * n
  here (`reduction="sum"` reproduces that reading);
- Glorot-uniform weights (U(-a, a), a = sqrt(6 / (2 width)), gain 1), BN gamma = 1, beta = 0.

Each layer is a `norms.ColumnMajorLinear`: an nn.Linear (parameter `weight`, isinstance nn.Linear) whose
product is computed as (W h^T)^T, the same function as F.linear to float rounding (tests/test_empirics_dln.py,
float64: forward, gradients, double backward, torch.func.grad under vmap); its output is a transposed
(n, width) view, which BatchNorm1d, GroupNorm and FormulaNorm take as it is. Measured on the 2-core CPU, one
torch thread, 25 x 10 wide, 1000 samples, a full-batch GD step against the same network through F.linear,
alternating in one process (`python -m verify bench`, dln_step_<norm>): no normaliser 0.59-0.69 (5.0 against
7.5 ms), l1 0.85-0.90, l-inf 0.80-0.93, BatchNorm 0.98-1.05 (BN's output is contiguous (n, width) whatever its
input, so the next layer's backward takes the slow orientation; a .contiguous() on the layer's output measured
1.02, on its input's transpose 1.18: not adopted). A whole default-preset run with its probes: 0.68-0.85 (none),
0.81-0.85 (l1), ~1 (BN). The trajectories are not bit-identical to F.linear's, and this network is chaotic:
over 500 steps a 1e-7 relative change of one weight moves the loss as much as the summation order does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .norms import (ColumnMajorLinear, NormFactory, WeightSpaceFactory, match_weight_scales, norm_factory,
                    place_norm)


def _normaliser(norm: str | NormFactory | WeightSpaceFactory, bn_eps: float) -> NormFactory | WeightSpaceFactory | None:
    if callable(norm) or isinstance(norm, WeightSpaceFactory):
        return norm
    return norm_factory(norm, bn_eps)  # a registered normaliser's name or "none"; ConfigError otherwise


def build_dln(depth: int = 25, width: int = 10, norm: str | NormFactory = "none", *,
              generator: torch.Generator | None = None, bn_eps: float = 1e-5,
              dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """ColumnMajorLinear(width, width, bias=False) x depth (nn.Linear subclasses), a normaliser after each hidden
    one, Glorot init, train() mode.

    `norm`: "none", a registered normaliser's name (`norms.norm_factory`: e.g. "batchnorm" is
    BatchNorm1d(width, eps=bn_eps)), or a factory from `norms.norm_factory` / a callable width -> module
    (its own init is left as its constructor made it, and it must not draw from the global RNG). A
    weight-space normaliser reparametrises the hidden layers themselves. Weights draw only from
    `generator` (None: the global RNG, advanced).
    """
    if depth < 1 or width < 1:
        raise ValueError(f"depth={depth}, width={width} must both be >= 1")
    factory = _normaliser(norm, bn_eps)
    layers: list[nn.Module] = []
    with torch.device("meta"):  # no default (Kaiming) init drawn from the global RNG
        linears = [ColumnMajorLinear(width, width, bias=False) for _ in range(depth)]
    for index, linear in enumerate(linears):
        placed = place_norm(linear, width, factory) if factory is not None and index < depth - 1 else [linear]
        placed[0].to_empty(device="cpu")  # the linear layer (reparametrised for a weight-space normaliser)
        nn.init.xavier_uniform_(placed[0].weight, generator=generator)
        layers.extend(placed)
    model = nn.Sequential(*layers)
    match_weight_scales(model)  # weight-space normalisers: the scale from the initialised direction
    return model.to(dtype).train()


def synthetic_regression(n_samples: int = 1000, width: int = 10, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, target, A): x (n, width) ~ N(0, I), A (width, width) ~ N(0, 1) entrywise, target = x A^T.

    One private generator seeded by `seed` draws A first, then x (in float64, then cast), so the
    data do not depend on dtype and the global RNG is untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(width, width, generator=generator, dtype=torch.float64)
    x = torch.randn(n_samples, width, generator=generator, dtype=torch.float64)
    return x.to(dtype), (x @ a.T).to(dtype), a.to(dtype)


def dln_loss(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """sum over outputs of the squared error, then mean (or sum) over samples."""
    per_sample = ((prediction - target) ** 2).sum(dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    raise ValueError(f"reduction={reduction!r} is not 'mean' or 'sum'")


def train_dln(model: nn.Module, x: torch.Tensor, target: torch.Tensor, lr: float, steps: int, *,
              reduction: str = "mean", on_step: Callable[[int, nn.Module, torch.Tensor], None] | None = None
              ) -> list[float]:
    """Full-batch gradient descent, W <- W - lr * grad L(W) on all of (x, target), `steps` times.

    Returns the loss before each update. `on_step(step, model, loss)` runs after backward and before
    the update (the .grad fields hold this step's gradient: the point where measurements belong).
    Stops early, returning what it has, when the loss becomes non-finite.
    """
    losses = []
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        loss = dln_loss(model(x), target, reduction)
        losses.append(loss.item())
        if not torch.isfinite(loss):
            break
        loss.backward()
        if on_step is not None:
            on_step(step, model, loss.detach())
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    return losses
