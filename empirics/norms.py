"""One place that turns a `Norm` into the module placed after a layer of `width` units.

    none             -> nothing
    batchnorm        -> nn.BatchNorm1d(width, eps)
    noisy_batchnorm  -> NoisyBatchNorm1d (BN + Algorithm 1 noise from the run's own generator)
    noisy_none       -> NoisyIdentity (the same noise, no BN)
    lp1, lp2, lpinf  -> the theory registry's formula as a module (theory.numeric.torch_forward)

Every module made here is tagged `norm_slot = True`, so probes find "the normalisation layer"
whatever it is; for Norm.NONE the layer before the slot is tagged instead (the activations the
paper's histograms show for the standard network are at the same place).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import ConfigError, Norm
from .noisy import NoisyBatchNorm1d, NoisyIdentity

NormFactory = Callable[[int], nn.Module]
FORMULA_NORMS = {Norm.LP1: "lp1", Norm.LP2: "lp2", Norm.LPINF: "lpinf"}


def _formula_module(name: str, width: int, eps: float) -> nn.Module:
    try:
        from .norm_layers import FormulaNorm
    except ImportError as error:  # pragma: no cover - present once the registry modules land
        raise ConfigError(f"normaliser {name!r} needs empirics.norm_layers, which is missing ({error})") from None
    return FormulaNorm(name, width, eps=eps)


def norm_factory(norm: Norm, eps: float, noise_generator: torch.Generator | None = None) -> NormFactory | None:
    """width -> a fresh normalisation module for `norm`, or None for Norm.NONE."""
    if norm is Norm.NONE:
        return None
    if norm in (Norm.NOISY_BATCHNORM, Norm.NOISY_NONE) and noise_generator is None:
        raise ConfigError(f"norm {norm.value} draws noise: give it the run's noise generator")

    def make(width: int) -> nn.Module:
        if norm is Norm.BATCHNORM:
            module = nn.BatchNorm1d(width, eps=eps)
        elif norm is Norm.NOISY_BATCHNORM:
            module = NoisyBatchNorm1d(width, eps, generator=noise_generator)
        elif norm is Norm.NOISY_NONE:
            module = NoisyIdentity(width, generator=noise_generator)
        elif norm in FORMULA_NORMS:
            module = _formula_module(FORMULA_NORMS[norm], width, eps)
        else:  # pragma: no cover - Norm is closed
            raise ConfigError(f"norm {norm.value!r} has no module")
        module.norm_slot = True
        return module

    return make


def norm_slots(model: nn.Module) -> list[nn.Module]:
    """The tagged normalisation modules (or, without normalisation, the layers at their place)."""
    return [m for m in model.modules() if getattr(m, "norm_slot", False)]
