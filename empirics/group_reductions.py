"""Where a model normalises, and one normalisation group's share of every statement's measured quantities.

A *capture point* is a module whose input is the normaliser's input y and whose output its normalised output,
found from the tags `empirics.norms` puts on every normalisation slot (no list of normaliser names):

    batch / features / group axes   the slot itself (nn.BatchNorm1d/2d, nn.GroupNorm, FormulaNorm, SpatialFlatten);
                                    noisy BatchNorm: its inner `bn` (the clean BN output, before the noise)
    weight space                    the slot's `reparametrisation` (input: the direction v of the weight, output
                                    hat(v); the layer's weight is W = s * hat(v), s = `weight_scale`)

A tensor of the point is viewed (no copy) as (A, G, B) by `group_view`: the G normalisation groups on the middle
axis, each group's m = A * B values on the other two (a BN channel over (sample, position): (N, C, positions); a
LayerNorm sample: (1, N, C * positions); a GroupNorm sample's group: (1, N * groups, channels * positions); a weight
row: (1, out, in * kernel)) -- the same groups as `norms.group_rows`. Over each group, with the normaliser's own
scale sigma and normalised values yhat (`theory.numeric.torch_scale_and_hat`, the formula the statements are derived
from), the reductions are, in float64 (`REDUCTION_COLUMNS`):

    gamma   the group's affine scale when one number per group (BN's gamma_c on the batch axis, the weight scale s_j
            in weight space), else 1 (a per-channel affine inside a per-sample group is folded into g)
    g       dL/dz for z = gamma * yhat + beta: the output gradient on the batch axis; gamma_c * dL/dz_c (= dL/dyhat)
            for a per-channel affine inside the group; dL/dhat / s_j = dL/dW_j in weight space
    m, eps, gamma, mean (the centre c with y - c = sigma yhat: the mean of a centring normaliser, 0 for RMSNorm),
    var = ||y - c||^2 / m, sigma, g_sum = <1,g>, g_sq = ||g||^2, g_yhat = <g,yhat>, lhs = ||dL/dy||^2 (thm4.1's
    measured left side), yhat_sq = ||yhat||^2;
    for a normaliser whose statements take more reductions than these (l1, l-inf: `numeric.piecewise_callable`):
    g_sign = <g, sign(y - c)>, sign_mean = mean(sign(y - c)), g_at_max and sign_at_max at a = argmax |y - c|,
    ties_at_max (samples attaining that maximum) and zero_signs (samples exactly at the centre) -- its smooth piece
    needs 1 and 0; NaN for the others;
    for a normaliser whose formula is not BatchNorm's: identity_err = ||dL/dy - J^T (gamma g)||, the measured
    gradient's distance from the formula's own (float64 autograd through it): rounding only when the module
    computes its formula, so the rounding `verify.checks` allows for normalisers without an a-priori bound; NaN
    for BatchNorm's formula, whose a-priori rounding bound needs it not.

Cost: BatchNorm's formula (BatchNorm, LayerNorm and GroupNorm natively, l2) takes the compiled kernel of
`fused_reductions` on a CPU (where numba is installed and `fused`), else `batchnorm_reductions` on the (A, G, B)
views (no transposes); a formula normaliser adds its float64 forward and backward once per captured layer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from theory import numeric
from theory.batch_algebra import NoClosedForm
from theory.normalisers import REGISTRY

from . import fused_reductions
from .noisy import NoisyBatchNorm1d
from .norms import SpatialFlatten, axis_of, is_batchnorm_formula, norm_slots

FLOAT_COLUMNS = ("gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs", "yhat_sq", "g_sign", "sign_mean",
                 "g_at_max", "sign_at_max", "ties_at_max", "zero_signs", "identity_err")
REDUCTION_COLUMNS = ("m", "eps", *FLOAT_COLUMNS)
PER_GROUP_AFFINE = ("batch", "weight space")  # axes whose groups share one affine scale (a channel; a weight row)
_PIECEWISE = FLOAT_COLUMNS[9:15]


BN_FLOAT_KEYS = ("gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs")


class Scratch:
    """A float64 buffer reused from call to call. On a CPU a fresh multi-megabyte tensor is fresh pages
    from the OS, zeroed and faulted in on every call: measured 5-10x the cost of the arithmetic."""

    def __init__(self):
        self._flat = torch.empty(0, dtype=torch.float64)

    def views(self, count: int, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]:
        size = math.prod(shape)
        if self._flat.numel() < count * size or self._flat.device != device:
            self._flat = torch.empty(count * size, dtype=torch.float64, device=device)
        return [self._flat[k * size:(k + 1) * size].view(shape) for k in range(count)]


def batchnorm_reductions(y: torch.Tensor, g: torch.Tensor, dy: torch.Tensor, gamma: torch.Tensor, eps: float,
                       scratch: Scratch) -> torch.Tensor:
    """(len(BN_FLOAT_KEYS), C) float64 on the tensors' device: BatchNorm's formula reduced per channel C of (N, C, *) --
    `capture.channel_reductions`' float columns, and any BN-formula group laid out as (A, G, B) by `group_view`.

    Why float64, from the tolerance verify.checks derives (it allows for float32 rounding, gamma_m = m 2^-24,
    in the autograd dL/dy; the captured reductions must add nothing comparable): ||g||^2, <1,g> and <g,yhat>
    enter the bound as ||g||^2 - <1,g>^2/m - <g,yhat>^2/m, which cancels where g nearly lies in the span of 1
    and yhat, and a float32 error of 2^-24 ||g||^2 there is up to 262144/m^2 of the tolerance's E^2 term (0.16
    at m = 1280, the VGG-1d's last BN layers); the centring y - mean loses the digits of a channel whose mean
    dwarfs its spread. In float64 (products of float32 values exact, m additions within m 2^-53) both are
    ~1e-11. Only lhs = ||dy||^2, a sum of squares without cancellation, would survive float32 squares (an error
    of 2^-24 lhs, 1/(16 m) of the tolerance); making it alone float32 measured no faster here (one pass of
    seven; the reductions are memory-bound at ~0.4 ms a VGG-1d layer on this CPU), so it stays with the rest.
    Measured alternatives, none faster on one CPU thread: a shifted one-pass (first value per channel as
    shift, 3 buffer rows instead of 6), a batched-matmul Gram of [y - s, g, dy, 1] (MKL's tall-skinny bmm
    ran at a third of the elementwise ops' bandwidth), and reducing in float32 with float64 accumulation
    (`sum(dtype=float64)` upcasts the whole tensor first).
    """
    if not (y.shape == g.shape == dy.shape):
        raise ValueError(f"y, g, dy must share one shape; got {tuple(y.shape)}, {tuple(g.shape)}, {tuple(dy.shape)}")
    batch, channels = y.shape[:2]
    gamma = gamma.detach().to(device=y.device, dtype=torch.float64).reshape(-1)
    if gamma.shape != (channels,):
        raise ValueError(f"gamma has {gamma.shape[0]} entries for {channels} channels; give one per channel")
    # float64 copies of y, g, dy as (3, N, C, positions): a channel's batch is its (sample, position) pairs.
    # Few, whole-layer ops: with one CPU thread each op's dispatch costs about what its arithmetic does.
    rows, products = scratch.views(2, (4, batch, channels, y[0, 0].numel()), y.device)
    rows = rows[:3]
    for k, tensor in enumerate((y, g, dy)):
        rows[k].copy_(tensor.reshape(batch, channels, -1))
    m = rows.shape[1] * rows.shape[3]
    sums = rows.sum(1).sum(-1)  # (3, C): <1, y>, <1, g>, <1, dy>; samples first: contiguous, vectorised adds
    mean = sums[0] / m
    rows[0] -= mean[:, None]  # y centred, two-pass: exact zeros for a constant channel
    torch.mul(rows, rows, out=products[:3])
    torch.mul(rows[1], rows[0], out=products[3])
    inner = products.sum(1).sum(-1)  # (4, C): ||y - mean||^2, ||g||^2, ||dy||^2, <g, y - mean>
    var = inner[0] / m  # biased (/m), as BN normalises
    sigma = torch.sqrt(var + eps)
    # in _FLOAT_KEYS order: gamma, mean, var, sigma, g_sum, g_sq, g_yhat = <g, y - mean> / sigma, lhs
    return torch.stack([gamma, mean, var, sigma, sums[1], inner[1], inner[3] / sigma, inner[2]])


@dataclass(frozen=True)
class CapturePoint:
    """One normalisation layer of a model, as the capture hooks it (module docstring)."""

    slot: nn.Module  # the tagged slot: its axis and groups lay the tensors out
    module: nn.Module  # hooked: input y, output the normalised values
    normaliser: str  # the registered normaliser it computes
    axis: str  # batch | features | group | weight space
    eps: float
    bn_formula: bool  # BatchNorm's formula: the fused reductions, an a-priori rounding bound (verify.checks)
    piecewise: bool  # its statements need the sign / maximum reductions (no closed form in g_sq, g_sum, g_yhat)
    groups: int | None = None  # channel groups per sample on the "group" axis (the slot's norm_groups)

    def affine(self) -> torch.Tensor | None:
        """The per-channel (or per-weight-row) scale applied to the normalised values, or None (no affine)."""
        if self.axis == "weight space":
            return self.slot.weight_scale
        inner = self.module.inner if isinstance(self.module, SpatialFlatten) else self.module
        return getattr(inner, "weight", None)


def _needs_piecewise(name: str) -> bool:
    try:
        numeric.grad_sq_norm(name)
    except NoClosedForm:
        return True
    return False


def capture_points(model: nn.Module) -> list[CapturePoint]:
    """Every normalisation layer of `model` with a registered normaliser, in forward order (module doc)."""
    points = []
    for slot in norm_slots(model):
        name = getattr(slot, "normaliser", None)
        if name is None:
            continue  # none / noisy_none: the slot marks where a normaliser would be
        normaliser = REGISTRY[name]
        axis = axis_of(normaliser)
        module = slot.reparametrisation if axis == "weight space" else slot.bn if isinstance(slot, NoisyBatchNorm1d) \
            else slot
        points.append(CapturePoint(slot, module, name, axis, float(slot.norm_eps), is_batchnorm_formula(normaliser),
                                   _needs_piecewise(name), getattr(slot, "norm_groups", None)))
    return points


def batchnorm_point(module: nn.Module) -> CapturePoint:
    """A BatchNorm1d/2d module as a capture point, tagged or not (BatchNorm's formula over the batch axis)."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"{module!r} is not a BatchNorm layer")
    return CapturePoint(module, module, "batchnorm", "batch", float(module.eps), True, False)


def find_point(model: nn.Module, layer: int | nn.Module, bn_formula_only: bool = False) -> CapturePoint:
    """The capture point `layer` names: its index among the model's capture points (BatchNorm-formula ones only
    with `bn_formula_only`), or its hooked module; a model of untagged BatchNorm layers counts those."""
    points = [p for p in capture_points(model) if p.bn_formula or not bn_formula_only]
    if not points:
        points = [batchnorm_point(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if isinstance(layer, nn.Module):
        for point in points:
            if point.module is layer or point.slot is layer:
                return point
        raise ValueError(f"{layer!r} is not a normalisation layer of the model; pass one of its layers or an index")
    if not 0 <= layer < len(points):
        raise IndexError(f"layer_index={layer} but the model has {len(points)} normalisation layers "
                         f"(0..{len(points) - 1})")
    return points[layer]


def group_view(point: CapturePoint, values: torch.Tensor) -> torch.Tensor:
    """`values` (shaped like the point's input; for weight space like its weight) as (A, G, B), the G groups of
    `norms.group_rows` on the middle axis: a view whenever values is contiguous (module doc)."""
    axis = point.axis
    if axis == "batch":
        return values.reshape(values.shape[0], values.shape[1], -1)
    if axis in ("features", "weight space"):
        return values.reshape(1, values.shape[0], -1)
    if axis == "group":
        return values.reshape(1, values.shape[0] * point.groups, -1)
    raise ValueError(f"{type(point.slot).__name__} is not a normalisation slot with groups (axis={axis!r})")


def group_scale(point: CapturePoint, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(per-group gamma (G,) or None, per-element gamma shaped like `like` or None) from the point's affine."""
    scale = point.affine()
    if scale is None:
        return None, None
    scale = scale.detach()
    if point.axis in PER_GROUP_AFFINE:
        return scale.reshape(-1), None
    return None, scale.reshape(1, -1, *([1] * (like.dim() - 2)))  # per channel, broadcast over the group


def group_reductions(point: CapturePoint, y: torch.Tensor, g: torch.Tensor, dy: torch.Tensor,
                     scratch: Scratch, fused: bool = True) -> torch.Tensor:
    """(len(FLOAT_COLUMNS), G) float64 on y's device: the point's reductions (module doc) of one forward's input y,
    output gradient g (dL/d module output) and input gradient dy, all of y's shape (for weight space: the
    weight's). BatchNorm's formula on a CPU takes the compiled kernel of `fused_reductions` when `fused` and numba
    is installed, else the torch reduction `batchnorm_reductions` (its reference)."""
    if not (y.shape == g.shape == dy.shape):
        raise ValueError(f"y, g, dy must share one shape; got {tuple(y.shape)}, {tuple(g.shape)}, {tuple(dy.shape)}")
    per_group, per_element = group_scale(point, y)
    if per_element is not None:
        g = g * per_element  # dL/dyhat: the affine lies inside the group, gamma 1
    views = [group_view(point, t) for t in (y, g, dy)]  # (A, G, B) each
    groups = views[0].shape[1]
    gamma = per_group if per_group is not None else torch.ones(groups, dtype=y.dtype, device=y.device)
    if point.bn_formula and fused and y.device.type == "cpu" and fused_reductions.available() \
            and y.dtype == g.dtype == dy.dtype and y.dtype in (torch.float32, torch.float64):
        return fused_reductions.batchnorm_columns(*views, gamma, point.eps, rows=len(FLOAT_COLUMNS))
    if point.bn_formula:
        columns = batchnorm_reductions(*views, gamma, point.eps, scratch)
        m = views[0].shape[0] * views[0].shape[2]
        yhat_sq = columns[2] * m / columns[3] ** 2  # ||y - mu||^2 / sigma^2
        missing = torch.full((len(FLOAT_COLUMNS) - len(BN_FLOAT_KEYS) - 1, groups), float("nan"), dtype=torch.float64,
                             device=y.device)
        return torch.cat([columns, yhat_sq[None], missing])
    return _formula_reductions(point, views, gamma.to(torch.float64), scratch)


def _formula_reductions(point: CapturePoint, views: list[torch.Tensor], gamma: torch.Tensor,
                        scratch: Scratch) -> torch.Tensor:
    """group_reductions for a normaliser whose formula is not BatchNorm's (float64 throughout)."""
    shape = views[0].shape
    values, grad, dgrad = scratch.views(3, tuple(shape), views[0].device)
    for out, view in zip((values, grad, dgrad), views):
        out.copy_(view)
    if point.axis == "weight space":
        grad.div_(gamma[None, :, None])  # dL/dhat = s_j dL/dW_j: g is dL/dW_j, the gradient at z = s_j hat
    axes = (0, 2)
    with torch.no_grad():
        sigma, yhat = numeric.torch_scale_and_hat(point.normaliser, values, point.eps, dims=axes)
        centred = values - sigma * yhat
        centre = centred.mean(axes, keepdim=True)
        centred = values - centre
        reference = _formula_gradient(point, values, grad * gamma[None, :, None], axes)

        def total(tensor):
            return tensor.sum(axes)

        columns = [gamma, centre.reshape(-1), total(centred * centred) / (shape[0] * shape[2]), sigma.reshape(-1),
                   total(grad), total(grad * grad), total(grad * yhat), total(dgrad * dgrad), total(yhat * yhat)]
        if point.piecewise:
            columns += _sign_reductions(centred, grad)
        else:
            columns += [torch.full_like(gamma, float("nan"))] * len(_PIECEWISE)
        columns.append(torch.linalg.vector_norm((dgrad - reference).transpose(0, 1).reshape(shape[1], -1), dim=1))
    return torch.stack(columns)


def _sign_reductions(centred: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """g_sign, sign_mean, g_at_max, sign_at_max, ties_at_max, zero_signs per group of (A, G, B) views. At a tie the
    values at the maximum are averaged over the tied samples (the smooth-piece assumption excludes such groups)."""
    axes = (0, 2)
    signs = torch.sign(centred)
    distance = centred.abs()
    at_peak = (distance == distance.amax(axes, keepdim=True)).to(centred.dtype)
    ties = at_peak.sum(axes)
    return [(grad * signs).sum(axes), signs.mean(axes), (at_peak * grad).sum(axes) / ties,
            (at_peak * signs).sum(axes) / ties, ties, (centred == 0).sum(axes).to(centred.dtype)]


@functools.cache
def _derived_program(name: str):
    """numeric.torch_program(name), or None where the backward has no derived form (autograd then)."""
    try:
        return numeric.torch_program(name)
    except NoClosedForm:
        return None


def _formula_gradient(point: CapturePoint, values: torch.Tensor, grad_hat: torch.Tensor, axes) -> torch.Tensor:
    """J^T grad_hat for the normaliser's formula over the groups of `values`, in float64: its derived backward
    (`numeric.torch_program`) where it has one, else autograd of its forward."""
    program = _derived_program(point.normaliser)
    if program is not None:
        _, stats = program.forward(values, axes, point.eps)
        return program.backward(values, stats, grad_hat, [None] * len(stats), axes, point.eps)[0]
    forward = numeric.torch_forward(point.normaliser)
    with torch.enable_grad():
        leaf = values.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(forward(leaf, dims=axes, eps=point.eps), leaf, grad_hat)
    return gradient


def normalised_layers(model: nn.Module) -> list[nn.Module]:
    """For each capture point, in order, the Conv1d/Conv2d/Linear layer whose output it normalises: the last such
    layer before the slot in forward (module) order, or for a weight-space normaliser the reparametrised layer."""
    slots = {id(point.slot): point for point in capture_points(model)}
    layers, last = [], None
    for module in model.modules():
        point = slots.get(id(module))
        if point is not None:
            layers.append(module if point.axis == "weight space" else last)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            last = module
    if any(layer is None for layer in layers):
        raise ValueError("a normalisation slot has no Conv/Linear layer before it: thm4.4 needs y = X W")
    return layers
