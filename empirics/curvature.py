"""Hessian quadratic forms at one BatchNorm layer: the quantities of thm4.2 / thm4.2b, per channel.

Split the network at a BN layer: y = BN input, z = BN(y) its output (train() mode: batch statistics,
biased variance, eps inside the square root, affine gamma, beta), L(z) the loss of the rest of the
network as a function of z, L-hat(y) = L(BN(y)). For a channel c, its "batch" is every (sample,
position) value the channel normalises (m = N * L for (N, C, L), N for (N, C)); all other channels
are held fixed. With g = dL/dz and v = dL-hat/dy (both full tensors, autograd), u_c the tensor equal
to u on channel c and 0 elsewhere, H = d^2 L / dz^2 and J = dz/dy:

    hess_in_v[c]   = v_c^T (d^2 L-hat / dy_c^2) v_c       (the left side of thm4.2)
    hess_out_v[c]  = v_c^T H_cc v_c                        (thm4.2 first form: v used as a z-direction)
    hess_out_g[c]  = g_c^T H_cc g_c                        (thm4.2b: the "g-hat^T H g-hat" term)
    hess_out_Jv[c] = (J v)_c^T H_cc (J v)_c                (J v = (gamma/sigma) P v, exact)
    bn_second_order[c] = sum_b g_b v_c^T (d^2 z_b / dy_c^2) v_c

plus `capture.channel_reductions` of (y, g, v): m, eps, gamma, mean, var, sigma, g_sum, g_sq, g_yhat,
lhs (= ||v_c||^2). The chain rule makes hess_in_v = hess_out_Jv + bn_second_order exactly, and at
eps = 0 (P a projector, P v = v): hess_out_Jv = (gamma^2/sigma^2) hess_out_v and bn_second_order =
-(gamma / (m sigma^2)) g_yhat ||v||^2, i.e. thm4.2's first form with equality.

Per-channel cost: a quadratic form u_c^T A u_c with u nonzero in every channel would mix in the
cross-channel blocks A_cc' (the downstream layers couple channels), so each channel gets its own
Hessian-vector product, 4 C of them for one layer (3 C through L at z, C through L-hat at y). They
are exact and vectorised: torch.func.vmap over the C masked directions, `chunk_size` of them at a
time (on a CPU few enough to stay in cache: `CHUNK_ELEMENTS`); `vectorize=False` loops instead. HVPs
are reverse over reverse (the vjp of grad f, whose graph is built once per function): forward-over-reverse
measured no faster, and torch's forward-mode decompositions emit a torch.jit deprecation warning.
Measured (VGG-1d default, batch 128, one CPU thread), per HVP in units of one training forward+backward:
first BN layer (C = 16, whole net downstream) ~0.8 vmapped in chunks of 25; last BN layer (C = 64)
~0.1; so the first layer costs ~55 forward+backwards and the last ~30. Only bn_second_order needs one
HVP for all channels: BN acts channel by channel, so that Hessian is block diagonal and the
per-channel sums of v * (Hess v) are exact.

ReLU / max-pool make L piecewise smooth: these are the Hessians of the active piece (what autograd
differentiates), second derivatives of the kinks being 0. All runs inside
`landscape.training_function` (no side effects); results float64 numpy arrays of length C.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from .group_reductions import (
    FLOAT_COLUMNS,
    CapturePoint,
    Scratch,
    group_scale,
    find_point,
    group_reductions,
    group_view,
)
from .landscape import LossFn, Params, parameter_dict, training_function, training_loss


def _norm_layer(model: nn.Module, layer: int | nn.Module) -> nn.Module:
    """The hooked module of a BatchNorm-formula normalisation layer: a module of `model`, or its index."""
    return find_point(model, layer, bn_formula_only=True).module


@contextlib.contextmanager
def _substituted(module: nn.Module, *, input_value=None, output_value=None) -> Iterator[list]:
    """Within: `module`'s input (or output) is replaced by the given tensor; yields a call counter."""
    calls: list[int] = []

    def pre_hook(_module, _args):
        calls.append(1)
        return (input_value,) if input_value is not None else None

    def post_hook(_module, _args, output):
        return output_value if output_value is not None else output

    handles = [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def hessian_vector_product(f: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor,
                           u: torch.Tensor) -> torch.Tensor:
    """(d^2 f / dat^2) u, reverse over reverse: the vjp of grad f with cotangent u (H is symmetric).

    The same derivative as grad_at <grad f(at), u>, without differentiating the product and sum of that
    scalar: measured (VGG-1d default, one CPU thread, w.r.t. the first BN output) 2.35 gradients against 3.1,
    and forward over reverse (jvp of grad f) 4.7."""
    _, pullback = vjp(grad(f), at)
    return pullback(u)[0]


def _substituted_loss(model: nn.Module, bn: nn.Module, params: Params, x: torch.Tensor, target: torch.Tensor,
                      loss_fn: LossFn, side: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """a -> the training loss at `params` with `bn`'s input (side "input") or output ("output") replaced by a."""
    def loss_of(value: torch.Tensor) -> torch.Tensor:
        with _substituted(bn, **{f"{side}_value": value}) as calls:
            loss = training_loss(model, params, x, target, loss_fn)
        _check_once(calls, bn)
        return loss

    return loss_of


def output_loss(model: nn.Module, layer: int | nn.Module, params: Params, x: torch.Tensor, target: torch.Tensor,
                loss_fn: LossFn) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """(z -> L(z), z0): the loss as a function of one BN layer's output, and that output at `params`.

    Call inside `landscape.training_function(model)`; `layer` as in `activation_curvature`.
    """
    bn = _norm_layer(model, layer)
    captured: list[torch.Tensor] = []
    handle = bn.register_forward_hook(lambda _module, _args, output: captured.append(output.detach()))
    try:
        with torch.no_grad():
            training_loss(model, params, x, target, loss_fn)
    finally:
        handle.remove()
    return _substituted_loss(model, bn, params, x, target, loss_fn, "output"), captured[0]


def _jacobian_vector_product(fn: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor,
                             u: torch.Tensor) -> torch.Tensor:
    """(d fn / dat) u by two reverse passes: w -> <J^T w, u> is linear in w with gradient J u."""
    out, pullback = vjp(fn, at)
    return grad(lambda w: torch.sum(pullback(w)[0] * u))(torch.zeros_like(out))


# Directions per vmapped HVP call when the caller gives no chunk_size: about this many activation values of the
# stacked directions in flight, per device type. On a GPU 2^25 bounds memory: VGG-16's first layer (128 x 64 x
# 32 x 32 values) takes 4 directions at a time instead of 192. On a CPU the batched double backward must stay
# in cache: measured on the VGG-1d default (one thread, per HVP, in training forward+backwards), the first BN
# layer's 48 output-side directions cost 0.8 at 16-32 a chunk but 2-3 at all 48 (2^25 values put them in one
# chunk, making a curvature probe 3-4x slower); 2^21 values (25 directions of 128 x 16 x 40) is near the best
# for every layer.
CHUNK_ELEMENTS = {"cpu": 2**21, "cuda": 2**25}


def _chunk(at: torch.Tensor, chunk_size: int | None) -> int:
    """Directions per vmapped call: chunk_size, or CHUNK_ELEMENTS of at's device type over at's size."""
    if chunk_size:
        return chunk_size
    budget = CHUNK_ELEMENTS.get(at.device.type, CHUNK_ELEMENTS["cuda"])
    return max(1, budget // max(at.numel(), 1))


def group_masks(point: CapturePoint, like: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    """(len(chosen), *like.shape): mask k is 1 on the values of group chosen[k] (`group_view`) and 0 elsewhere."""
    masks = torch.zeros((len(chosen), *like.shape), dtype=like.dtype, device=like.device)
    for k, group in enumerate(chosen):
        group_view(point, masks[k])[:, group, :] = 1.0
    return masks


def _masked_directions(directions: list[torch.Tensor], masks: torch.Tensor, rows: range) -> torch.Tensor:
    """(len(rows), *shape): row r = d * K + k is direction d restricted to masked group k (zeros elsewhere)."""
    count = masks.shape[0]
    return torch.stack([directions[r // count] * masks[r % count] for r in rows])


def _per_group_quadratic_forms(f: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor,
                               directions: list[torch.Tensor], masks: torch.Tensor, vectorize: bool,
                               chunk_size: int | None) -> np.ndarray:
    """(D, K) float64: u_k^T (d^2 f / dat^2) u_k for each direction u and masked group k (one HVP each).

    The D * K masked directions are built and consumed `chunk_size` at a time (default: `_chunk`), so
    memory stays bounded on large layers. The gradient of f and its graph are formed once and every
    chunk differentiates it again: H u = vjp of grad f with cotangent u (H is symmetric), the same
    operations as `hessian_vector_product` without repeating the first forward+backward per chunk."""
    count = masks.shape[0]
    total = len(directions) * count
    chunk = _chunk(at, chunk_size)
    _, pullback = vjp(grad(f), at)  # u -> (H u,), reusable: the first-order graph is kept

    def hvp(u: torch.Tensor) -> torch.Tensor:
        return pullback(u)[0]

    forms = []
    for start in range(0, total, chunk):
        stacked = _masked_directions(directions, masks, range(start, min(start + chunk, total)))
        products = vmap(hvp)(stacked) if vectorize else torch.stack([hvp(u) for u in stacked])
        forms.append((stacked.double() * products.double()).flatten(1).sum(1))
    return torch.cat(forms).reshape(len(directions), count).cpu().numpy()


# Per-sample groups (LayerNorm's samples, GroupNorm's groups of a sample) probed per layer: samples are exchangeable,
# so this many evenly spaced ones sample the layer's rows; each costs 4 HVPs. A BatchNorm channel is probed always.
MAX_SAMPLE_GROUPS = 8


def probed_groups(point: CapturePoint, like: torch.Tensor) -> list[int]:
    """Every group on the batch axis; at most MAX_SAMPLE_GROUPS evenly spaced ones on a per-sample axis."""
    total = group_view(point, like).shape[1]
    if point.axis == "batch" or total <= MAX_SAMPLE_GROUPS:
        return list(range(total))
    return sorted({round(k * (total - 1) / (MAX_SAMPLE_GROUPS - 1)) for k in range(MAX_SAMPLE_GROUPS)})


def activation_curvature(model: nn.Module, layer: int | nn.Module, x: torch.Tensor, target: torch.Tensor,
                         loss_fn: LossFn, *, vectorize: bool = True, chunk_size: int | None = None) -> dict:
    """Per probed group of one normalisation layer with BatchNorm's formula (any axis): the thm4.2 Hessian
    quadratic forms and the group's reductions (module doc).

    layer: the layer's module, or its index among the model's BatchNorm-formula capture points in forward order
    (`group_reductions.find_point`: for a BatchNorm network the BN layers, as `BoundCapture` numbers them). The
    layer must run exactly once per forward. Keys: the forms, `group_reductions.REDUCTION_COLUMNS` and `channel`,
    the probed group indices (`probed_groups`).
    """
    with training_function(model):
        point = find_point(model, layer, bn_formula_only=True)
        bn = point.module
        params = parameter_dict(model)
        captured: dict[str, torch.Tensor] = {}

        def keep_input(_module, args):
            captured["y"] = args[0].detach().requires_grad_(True)  # a leaf, so dL/dy is an autograd grad
            return (captured["y"],)

        def keep_output(_module, _args, output):
            captured["z"] = output

        handles = [bn.register_forward_pre_hook(keep_input), bn.register_forward_hook(keep_output)]
        try:
            loss = training_loss(model, params, x, target, loss_fn)
        finally:
            for handle in handles:
                handle.remove()
        y0 = captured["y"]
        v, g = (t.detach() for t in torch.autograd.grad(loss, [y0, captured["z"]]))
        y0, z0 = y0.detach(), captured["z"].detach()
        bn_params: Params = {name: params[full] for full, name in _bn_param_names(model, bn)}

        def bn_map(y: torch.Tensor) -> torch.Tensor:
            return functional_call(bn, bn_params, (y,))

        loss_of_input = _substituted_loss(model, bn, params, x, target, loss_fn, "input")
        loss_of_output = _substituted_loss(model, bn, params, x, target, loss_fn, "output")

        chosen = probed_groups(point, y0)
        masks = group_masks(point, y0, chosen)
        jv = _jacobian_vector_product(bn_map, y0, v)  # J v, exact (the Jacobian is block diagonal by group)
        # a per-channel affine inside a per-sample group (LayerNorm, GroupNorm): the statement's z is yhat (gamma 1),
        # so its H is Gamma H_z Gamma and its g is Gamma g: the output-side forms take Gamma v and Gamma^2 g
        _, per_element = group_scale(point, y0)
        v_out, g_out = (v, g) if per_element is None else (v * per_element, g * per_element**2)
        out_forms = _per_group_quadratic_forms(loss_of_output, z0, [v_out, g_out, jv], masks, vectorize, chunk_size)
        (in_forms,) = _per_group_quadratic_forms(loss_of_input, y0, [v], masks, vectorize, chunk_size)
        second = hessian_vector_product(lambda y: torch.sum(g * bn_map(y)), y0, v)  # Hess_y <g, BN(y)> v, block diagonal
        second_order = group_view(point, v.double() * second.double()).sum((0, 2))[chosen]
        reductions = group_reductions(point, y0, g, v, Scratch())
    picked = torch.as_tensor(chosen, dtype=torch.long)
    columns = reductions[:, picked].cpu().numpy()
    m = group_view(point, y0).shape[0] * group_view(point, y0).shape[2]
    return {
        "channel": np.asarray(chosen, dtype=np.int64),
        "m": np.full(len(chosen), m, dtype=np.int64),
        "eps": np.full(len(chosen), point.eps),
        **dict(zip(FLOAT_COLUMNS, columns)),
        "hess_in_v": in_forms,
        "hess_out_v": out_forms[0],
        "hess_out_g": out_forms[1],
        "hess_out_Jv": out_forms[2],
        "bn_second_order": second_order.cpu().numpy(),
    }


def _bn_param_names(model: nn.Module, bn: nn.Module) -> list[tuple[str, str]]:
    """(name in the model, name in bn) of bn's trainable parameters."""
    prefix = next(name for name, module in model.named_modules() if module is bn)
    return [(f"{prefix}.{name}" if prefix else name, name) for name, p in bn.named_parameters() if p.requires_grad]


def _check_once(calls: list, bn: nn.Module) -> None:
    if len(calls) != 1:
        raise RuntimeError(f"{bn!r} ran {len(calls)} times in one forward; curvature needs a layer used exactly once")
