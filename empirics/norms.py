"""One place that turns a `Norm` into the module placed after a layer of `width` units.

                     spatial_dims=1: (N, C) or (N, C, L)     spatial_dims=2: (N, C, H, W)
    none             -> nothing                               nothing
    batchnorm        -> nn.BatchNorm1d(width, eps)            nn.BatchNorm2d(width, eps)
    noisy_batchnorm  -> NoisyBatchNorm1d                      NoisyBatchNorm2d
                        (BN + Algorithm 1 noise from the run's own generator)
    noisy_none       -> NoisyIdentity (the same noise, no BN; accepts either layout)
    lp1, lp2, lpinf  -> the theory registry's formula as a module (theory.numeric.torch_forward);
                        for 2-D wrapped in `SpatialFlatten`, which views (N, C, H, W) as (N, C, H * W)

In every case a channel's batch is all its (sample, position) values, m = N * L or N * H * W.

Every module made here is tagged `norm_slot = True`, so probes find "the normalisation layer"
whatever it is; for Norm.NONE the layer before the slot is tagged instead (the activations the
paper's histograms show for the standard network are at the same place).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import ConfigError, Norm
from .noisy import NoisyBatchNorm1d, NoisyBatchNorm2d, NoisyIdentity

NormFactory = Callable[[int], nn.Module]
FORMULA_NORMS = {Norm.LP1: "lp1", Norm.LP2: "lp2", Norm.LPINF: "lpinf"}


def _formula_module(name: str, width: int, eps: float) -> nn.Module:
    try:
        from .norm_layers import FormulaNorm
    except ImportError as error:  # pragma: no cover - present once the registry modules land
        raise ConfigError(f"normaliser {name!r} needs empirics.norm_layers, which is missing ({error})") from None
    return FormulaNorm(name, width, dims="batch", eps=eps)


class SpatialFlatten(nn.Module):
    """Apply a per-channel normaliser written for (N, C, L) to (N, C, H, W) by viewing it as (N, C, H * W).

    Exact for any normaliser whose channel batch is the set of all (sample, position) values: the
    flattening keeps every value of a channel in that channel and only renames its positions.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.dim() != 4:
            raise ValueError(f"input has shape {tuple(a.shape)}; SpatialFlatten expects (N, C, H, W)")
        return self.inner(a.flatten(2)).reshape(a.shape)  # (N, C, H * W) -> (N, C, H, W)


def norm_factory(norm: Norm, eps: float, noise_generator: torch.Generator | None = None,
                 spatial_dims: int = 1) -> NormFactory | None:
    """width -> a fresh normalisation module for `norm`, or None for Norm.NONE.

    spatial_dims: 1 for (N, C) / (N, C, L) activations (Conv1d, Linear), 2 for (N, C, H, W) (Conv2d).
    """
    if spatial_dims not in (1, 2):
        raise ConfigError(f"spatial_dims={spatial_dims!r} is not supported; use 1 (Conv1d/Linear) or 2 (Conv2d)")
    if norm is Norm.NONE:
        return None
    if norm in (Norm.NOISY_BATCHNORM, Norm.NOISY_NONE) and noise_generator is None:
        raise ConfigError(f"norm {norm.value} draws noise: give it the run's noise generator")
    batchnorm, noisy_batchnorm = ((nn.BatchNorm1d, NoisyBatchNorm1d) if spatial_dims == 1
                                  else (nn.BatchNorm2d, NoisyBatchNorm2d))

    def make(width: int) -> nn.Module:
        if norm is Norm.BATCHNORM:
            module = batchnorm(width, eps=eps)
        elif norm is Norm.NOISY_BATCHNORM:
            module = noisy_batchnorm(width, eps, generator=noise_generator)
        elif norm is Norm.NOISY_NONE:
            module = NoisyIdentity(width, generator=noise_generator)
        elif norm in FORMULA_NORMS:
            module = _formula_module(FORMULA_NORMS[norm], width, eps)
            if spatial_dims == 2:
                module = SpatialFlatten(module)
        else:  # pragma: no cover - Norm is closed
            raise ConfigError(f"norm {norm.value!r} has no module")
        module.norm_slot = True
        return module

    return make


def norm_slots(model: nn.Module) -> list[nn.Module]:
    """The tagged normalisation modules (or, without normalisation, the layers at their place)."""
    return [m for m in model.modules() if getattr(m, "norm_slot", False)]
