"""Internal covariate shift, paper Definition 2.1 (paper-notes §3), per layer, on one batch.

For parameter groups W_1 .. W_k in forward order, parameters W^t, their update Delta (W^{t+1} =
W^t + Delta, the optimiser's actual step) and ONE batch B, in train() mode (batch statistics):

    G_i  = grad_{W_i} L(W_1^t,             ..., W_{i-1}^t,             W_i^t, ..., W_k^t)
    G'_i = grad_{W_i} L(W_1^t + Delta_1,   ..., W_{i-1}^t + Delta_{i-1}, W_i^t, ..., W_k^t)
    ics_l2[i]  = || G_i - G'_i ||_2        (Euclidean norm of the group's gradients flattened together)
    ics_cos[i] = <G_i, G'_i> / (||G_i|| ||G'_i||)    (nan when either gradient is 0)
    earlier_update_norm[i] = || (Delta_1, ..., Delta_{i-1}) ||   (the shift that causes G'_i; 0 for i = 1)

Scale-free readings for comparing networks (verify.effects): ics_l2 / grad_norm (relative ICS) and
ics_l2 / earlier_update_norm (ICS per unit of the earlier layers' update).

Only the groups before i move for G'_i (parameters in no group never move). For i = 1 nothing
moves, so G'_1 = G_1 exactly (ics_l2 = 0, cos = 1) and it is not recomputed. Reductions in float64.

Cost: G from one forward+backward, or free when the training step's gradients are passed; then one
forward plus a backward truncated at W_i (torch.func.grad w.r.t. group i only) per layer i > 1.
Measured (VGG-1d default, batch 128, one CPU thread): 0.7-0.9 of a training forward+backward per
shifted layer, 8 groups in all. Everything runs through `landscape.training_function`: no running-statistics update, no .grad
written, noise replayed, RNG untouched.

The update: plain SGD has Delta = -lr * G (`sgd_update`). With momentum or any other optimiser,
take the update it actually applied: snapshot the parameters, call optimizer.step(), and pass
`observed_update(before, model)` together with `params=before` (the parameters at step t).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import grad

from .landscape import LossFn, Params, parameter_dict, training_function, training_loss


def sgd_update(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None], lr: float) -> Params:
    """Delta = -lr * grad for every named parameter (plain SGD, no momentum or weight decay).

    A missing or None gradient gives a zero update (as SGD skips parameters without .grad).
    """
    update = {}
    for name, p in params.items():
        g = grads.get(name)
        update[name] = torch.zeros_like(p.detach()) if g is None else -lr * g.detach()
    return update


def observed_update(before: dict[str, torch.Tensor], model: nn.Module) -> Params:
    """Delta = W^{t+1} - W^t from a snapshot {name: p.detach().clone()} taken before optimizer.step()."""
    return {name: p.detach() - before[name] for name, p in model.named_parameters() if name in before}


def layer_groups(model: nn.Module) -> list[list[str]]:
    """One group per Conv/Linear layer in forward (registration) order: its parameters plus those of
    every following parameterised non-Conv/Linear module (e.g. its BatchNorm gamma, beta) up to the
    next Conv/Linear. Parameters before the first Conv/Linear form their own leading group.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    for module_name, module in model.named_modules():
        own = [f"{module_name}.{name}" if module_name else name
               for name, p in module.named_parameters(recurse=False) if p.requires_grad]
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and current:
            groups.append(current)
            current = []
        current += own
    if current:
        groups.append(current)
    return groups


def _validate(groups: Sequence[Sequence[str]], params: Params, update: Params) -> None:
    seen: set[str] = set()
    for index, group in enumerate(groups):
        for name in group:
            if name not in params:
                raise KeyError(f"layer group {index} names {name!r}, which is not a trainable parameter; "
                               f"use names from model.named_parameters() (e.g. {next(iter(params))!r})")
            if name in seen:
                raise ValueError(f"parameter {name!r} is in two layer groups; each may move only once")
            seen.add(name)
            if index < len(groups) - 1 and name not in update:
                raise KeyError(f"update has no entry for {name!r}; give the update of every grouped parameter")


def _flat64(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def ics(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, target: torch.Tensor,
        layer_params: Sequence[Sequence[str]], update: dict[str, torch.Tensor], *,
        grads: dict[str, torch.Tensor] | None = None, params: dict[str, torch.Tensor] | None = None,
        measure: Sequence[int] | None = None) -> dict:
    """Per layer group i: ||G_i - G'_i||_2 and cos(G_i, G'_i) of Definition 2.1 (module doc).

    layer_params: groups of parameter names in forward order (`layer_groups(model)` is one choice);
    update: {name: Delta}; grads: the gradients at `params` on this batch, if already computed (the
    training step's .grad); params: the parameters W^t when the model already holds W^{t+1}.
    measure: indices of the groups to measure (default all); the others still move, at no cost, and
    report nan. Returns float64 numpy arrays ics_l2, ics_cos, grad_norm (||G_i||), shifted_grad_norm (||G'_i||),
    earlier_update_norm (||Delta_{<i}||).
    """
    with training_function(model):
        current = parameter_dict(model)
        if params is not None:
            current = {name: params[name].detach() if name in params else p for name, p in current.items()}
        _validate(layer_params, current, update)
        if grads is None:
            grads = grad(lambda p: training_loss(model, p, x, target, loss_fn))(current)
        l2, cos, norm, shifted_norm, earlier = [], [], [], [], []
        moved = dict(current)  # groups < i displaced by their update as i advances
        earlier_sq = 0.0  # ||Delta||^2 of the groups before i
        for index, group in enumerate(layer_params):
            # a parameter with no gradient (None .grad: unused by the loss) has G = 0
            g = _flat64([torch.zeros_like(current[name]) if grads.get(name) is None else grads[name]
                         for name in group])
            if measure is not None and index not in measure:
                g_shift = torch.full_like(g, float("nan"))
            elif index == 0:
                g_shift = g
            else:
                fixed = {name: p for name, p in moved.items() if name not in group}

                def group_loss(own: Params, fixed: Params = fixed) -> torch.Tensor:
                    return training_loss(model, {**fixed, **own}, x, target, loss_fn)

                shifted = grad(group_loss)({name: current[name] for name in group})
                g_shift = _flat64([shifted[name] for name in group])
            earlier.append(earlier_sq ** 0.5)
            for name in group:  # move this group before measuring the next
                moved[name] = current[name] + update[name].detach() if name in update else current[name]
                if name in update:
                    earlier_sq += float(torch.sum(update[name].detach().double() ** 2))
            g_norm, s_norm = float(torch.linalg.vector_norm(g)), float(torch.linalg.vector_norm(g_shift))
            l2.append(float(torch.linalg.vector_norm(g - g_shift)))
            norm.append(g_norm)
            shifted_norm.append(s_norm)
            cos.append(float(g @ g_shift) / (g_norm * s_norm) if g_norm > 0 and s_norm > 0 else float("nan"))
    return {"ics_l2": np.array(l2), "ics_cos": np.array(cos), "grad_norm": np.array(norm),
            "shifted_grad_norm": np.array(shifted_norm), "earlier_update_norm": np.array(earlier)}
