"""Step-cost figures of `python -m verify bench`: one training step against another, alternating in one process.

    pool_step        a BN step with the network's pool (pooling.PairMaxPool1d) / the same step with nn.MaxPool1d(2)
    lp_step_<norm>   a plain step of the l_p network / the BatchNorm network's (issue 15: at most 1.3 where the
                     normaliser's backward is derived -- l1's, and l-inf's batch maximum on its smooth piece;
                     FormulaNorm.backward_route says which)
    noisy_step       a noisy-BN step (Algorithm 1's draws, empirics.noisy) / the BN step
    sgd_update       optimizer.step() of SGD(foreach=True), as empirics.train builds it / the per-tensor loop
                     (foreach=False), on the BN network's gradients
    dln_step_<norm>  a full-batch GD step of the size's deep linear network (empirics.dln: norms.ColumnMajorLinear
                     layers, y = (W h^T)^T) / the same network with its layers back to nn.Linear (F.linear)
    lockstep_<model>_<norm>  one SGD step of LOCKSTEP_SEEDS seeds trained in lockstep (torch.func.vmap of the
                     gradient over their stacked parameters and buffers) / the same seeds' steps one after the other
                     (issue 15: lockstep training is adopted only where this is below 1; the models are VGG-1d and
                     the DLN, without a normaliser and with BatchNorm)

The compared models share their initialisation and batch; the figure is the median of per-repetition
ratios, as every ratio of the bench. Only the VGG-1d sizes (smoke, default) have these models; the DLN is the
size's preset's (default: depth 25, width 10, 1000 samples).

Measured at the default size on the 2-core CPU, one torch thread, other processes' load on the machine (medians
of 15 alternating repetitions): dln_step_none 0.69, dln_step_batchnorm 0.98, dln_step_lp1 0.85 (empirics.dln's
docstring has the spread over several measurements), sgd_update 0.75 (0.72-0.78 elsewhere), noisy_step 1.37
(1.37-1.49; the in-place draws and addcmul made the noisy step 0.89-0.97 of the former out-of-place draws',
empirics.noisy).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from empirics.config import PRESETS, Norm
from empirics.dln import build_dln, dln_loss, synthetic_regression
from empirics.models import build_model
from empirics.norm_layers import FormulaNorm
from empirics.norms import ColumnMajorLinear, ReparametrisedColumnMajorLinear, ReparametrisedLinear, norm_factory
from empirics.pooling import PairMaxPool1d

LP_STEP_TARGET = 1.3  # issue 15, for a normaliser whose backward is derived
LP_NORMS = (Norm.LP1, Norm.LPINF)
DLN_NORMS = (Norm.NONE, Norm.BATCHNORM, Norm.LP1)  # the DLN runs of the default preset: none and BN, l1 (l-inf alike)
LOCKSTEP_SEEDS = 5  # the default preset's seeds per compared configuration
LOCKSTEP_NORMS = (Norm.NONE, Norm.BATCHNORM)


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=F.cross_entropy, lr: float = 0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, foreach=True)  # as empirics.train

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return step


def _model(size: str, norm: Norm, device: torch.device) -> nn.Module:
    config = PRESETS[size]
    return build_model(config.model, norm, config.train.bn_eps, generator=torch.Generator().manual_seed(0),
                       noise_generator=torch.Generator().manual_seed(1)).to(device)


def _f_linear_twin(model: nn.Module) -> nn.Module:
    """A deep copy whose column-major layers are nn.Linear / ReparametrisedLinear again (only forward differs)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, ReparametrisedColumnMajorLinear):
            module.__class__ = ReparametrisedLinear
        elif isinstance(module, ColumnMajorLinear):
            module.__class__ = nn.Linear
    return twin


def _dln_figures(size: str, device: torch.device, paired, repeats: int, warmup: int) -> dict:
    d, eps = PRESETS[size].dln, PRESETS[size].train.bn_eps
    x, target, _ = synthetic_regression(d.samples, d.width, seed=0)
    x, target = x.to(device), target.to(device)
    figures = {}
    for norm in DLN_NORMS:
        model = build_dln(d.depth, d.width, norm_factory(norm, eps) or "none",
                          generator=torch.Generator().manual_seed(0)).to(device)
        step = _stepper(model, x, target, dln_loss, d.lrs[0])
        baseline = _stepper(_f_linear_twin(model), x, target, dln_loss, d.lrs[0])
        figures[f"dln_step_{norm.value}"] = {
            **paired(step, baseline, repeats, warmup),
            "note": f"DLN {norm.value} (depth {d.depth}, width {d.width}, {d.samples} samples): (W h^T)^T layers / "
                    "F.linear layers, full-batch GD step"}
    return figures


def _lockstep_stepper(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, loss_fn, lr: float):
    """One plain SGD step of every model at once: the gradient of each model's loss on the shared batch, vmapped over
    their stacked parameters and buffers (BatchNorm's running statistics update per model), then one fused update."""
    params, buffers = stack_module_state(models)
    template = copy.deepcopy(models[0]).to("meta")

    def loss_of(p: dict, b: dict) -> torch.Tensor:
        return loss_fn(functional_call(template, (p, b), (x,)), y)

    gradients = vmap(grad(loss_of), randomness="error")

    def step() -> None:
        g = gradients(params, buffers)
        with torch.no_grad():
            torch._foreach_add_(list(params.values()), [g[name] for name in params], alpha=-lr)
    step.state = (params, buffers)  # the stacked tensors it updates, for the test of its equality to own steps
    return step


def _lockstep_figures(size: str, device: torch.device, paired, repeats: int, warmup: int) -> dict:
    config = PRESETS[size]
    d, eps = config.dln, config.train.bn_eps
    x_dln, target, _ = synthetic_regression(d.samples, d.width, seed=0)
    x, y = _batch(size, device)
    tasks = {"vgg1d": (lambda norm, seed: build_model(config.model, norm, eps,
                                                      generator=torch.Generator().manual_seed(seed)),
                       x, y, F.cross_entropy, config.train.lrs[0]),
             "dln": (lambda norm, seed: build_dln(d.depth, d.width, norm_factory(norm, eps) or "none",
                                                  generator=torch.Generator().manual_seed(seed)),
                     x_dln.to(device), target.to(device), dln_loss, d.lrs[0])}
    figures = {}
    for kind, (build, inputs, labels, loss_fn, lr) in tasks.items():
        for norm in LOCKSTEP_NORMS:
            models = [build(norm, seed).to(device) for seed in range(LOCKSTEP_SEEDS)]
            steppers = [_stepper(copy.deepcopy(model), inputs, labels, loss_fn, lr) for model in models]
            lockstep = _lockstep_stepper(models, inputs, labels, loss_fn, lr)
            figures[f"lockstep_{kind}_{norm.value}"] = {
                **paired(lockstep, lambda steppers=steppers: [step() for step in steppers], repeats, warmup),
                "note": f"{LOCKSTEP_SEEDS} {kind} {norm.value} seeds: one vmapped step / their steps in sequence"}
    return figures


def _sgd_figure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, paired, repeats: int, warmup: int) -> dict:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()  # one step's gradients, kept: only the updates are timed
    fused, looped = (torch.optim.SGD(model.parameters(), lr=1e-9, foreach=foreach) for foreach in (True, False))
    steps = 20  # an update is ~0.2 ms: time 20 of them per repetition
    return {**paired(lambda: [fused.step() for _ in range(steps)], lambda: [looped.step() for _ in range(steps)],
                     repeats, warmup),
            "note": f"SGD(foreach=True).step() / SGD(foreach=False).step(), {len(list(model.parameters()))} "
                    "parameters of the BN network (the same update bit for bit)"}


def _batch(size: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch = PRESETS[size].train.batch_size
    return (torch.randn(batch, 1, 40, generator=generator).to(device),
            torch.randint(0, 10, (batch,), generator=generator).to(device))


def step_figures(size: str, device: torch.device, paired, repeats: int, warmup: int) -> dict:
    """pool_step, lp_step_<norm>, noisy_step, sgd_update, dln_step_<norm> and lockstep_<model>_<norm> (module doc);
    `paired(candidate, baseline, repeats, warmup)` is the bench's alternating ratio measurement."""
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
    noisy = _model(size, Norm.NOISY_BATCHNORM, device)
    figures["noisy_step"] = {**paired(_stepper(noisy, x, y), bn_step, repeats, warmup),
                             "note": "noisy-BN step (Algorithm 1's draws in place, from the run's generator) / BN step"}
    figures["sgd_update"] = _sgd_figure(copy.deepcopy(batchnorm), x, y, paired, repeats, warmup)
    figures.update(_dln_figures(size, device, paired, repeats, warmup))
    figures.update(_lockstep_figures(size, device, paired, repeats, warmup))
    return figures
