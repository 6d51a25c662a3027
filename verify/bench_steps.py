"""Step-cost figures of `python -m verify bench`: one VGG-1d training step against another, alternating in one process.

    pool_step        a BN step with the network's pool (pooling.PairMaxPool1d) / the same step with nn.MaxPool1d(2)
    lp_step_<norm>   a plain step of the l_p network / the BatchNorm network's (issue 15: at most 1.3 where the
                     normaliser's backward is derived; l-inf keeps autograd, FormulaNorm.backward_route says why)

The compared models share their initialisation and batch; the figure is the median of per-repetition
ratios, as every ratio of the bench. Only the VGG-1d sizes (smoke, default) have these models.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from empirics.config import PRESETS, Norm
from empirics.models import build_model
from empirics.norm_layers import FormulaNorm
from empirics.pooling import PairMaxPool1d

LP_STEP_TARGET = 1.3  # issue 15, for a normaliser whose backward is derived
LP_NORMS = (Norm.LP1, Norm.LPINF)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return lambda: _step(model, optimizer, x, y)


def _model(size: str, norm: Norm, device: torch.device) -> nn.Module:
    config = PRESETS[size]
    return build_model(config.model, norm, config.train.bn_eps, generator=torch.Generator().manual_seed(0)).to(device)


def _batch(size: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch = PRESETS[size].train.batch_size
    return (torch.randn(batch, 1, 40, generator=generator).to(device),
            torch.randint(0, 10, (batch,), generator=generator).to(device))


def step_figures(size: str, device: torch.device, paired, repeats: int, warmup: int) -> dict:
    """pool_step and lp_step_<norm> (module doc); `paired(candidate, baseline, repeats, warmup)` is the bench's
    alternating ratio measurement."""
    x, y = _batch(size, device)
    batchnorm = _model(size, Norm.BATCHNORM, device)
    native_pool = copy.deepcopy(batchnorm)
    for index, module in enumerate(native_pool):
        if isinstance(module, PairMaxPool1d):
            native_pool[index] = nn.MaxPool1d(2)
    bn_step = _stepper(batchnorm, x, y)
    figures = {"pool_step": {**paired(bn_step, _stepper(native_pool, x, y), repeats, warmup),
                             "note": "BN step with pooling.PairMaxPool1d / with nn.MaxPool1d(2) (same values and "
                                     "gradients; torch's index-returning CPU pool kernel is the difference)"}}
    for norm in LP_NORMS:
        model = _model(size, norm, device)
        routes = sorted({m.backward_route for m in model.modules() if isinstance(m, FormulaNorm)})
        figure = {**paired(_stepper(model, x, y), bn_step, repeats, warmup),
                  "note": f"{norm.value} step / BatchNorm step; backward: {'; '.join(routes)}"}
        if routes == ["derived"]:
            autograd_model = copy.deepcopy(model)
            for module in autograd_model.modules():
                if isinstance(module, FormulaNorm):
                    module._program, module.backward_route = None, "autograd"
            before = paired(_stepper(autograd_model, x, y), bn_step, max(3, repeats // 3), 1)["value"]
            figure["note"] += f" (autograd through the forward instead: {before:.2f})"
            figure["target"] = LP_STEP_TARGET
            figure["passed"] = figure["value"] <= LP_STEP_TARGET
        figures[f"lp_step_{norm.value}"] = figure
    return figures
