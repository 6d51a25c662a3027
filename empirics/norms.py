"""One place that turns a `Norm` into what normalises a layer of `width` units: a module after it, or the layer
itself with its weight reparametrised. Every registered normaliser (theory.normalisers.REGISTRY, with the files
given to --normaliser-file) is placed along the axis its `axis` names (the leading word, as
`theory.weight_space.AXIS_LAYOUTS`):

                   activations (N, C), (N, C, L) [spatial_dims=1] or (N, C, H, W) [spatial_dims=2]
    batch          BatchNorm's formula -> nn.BatchNorm1d / nn.BatchNorm2d(C, eps)
                   any other formula   -> FormulaNorm(dims="batch"); for 2-D inside `SpatialFlatten`
                   a group: one channel over every (sample, position) pair, m = N * positions
    features       BatchNorm's formula -> nn.GroupNorm(1, C, eps): LayerNorm over channels x positions, with a
                                          per-channel affine map (as every normaliser here)
                   any other formula   -> SpatialFlatten(FormulaNorm(dims=(1, 2)))
                   a group: one sample's channels x positions, m = C * positions
    group          BatchNorm's formula -> nn.GroupNorm(C / CHANNELS_PER_GROUP, C, eps)
                   any other formula   -> SpatialFlatten(FormulaNorm(groups=C / CHANNELS_PER_GROUP, dims=(2, 3)))
                   a group: one sample's CHANNELS_PER_GROUP consecutive channels x positions
    weight space   the conv / linear layer itself, its weight W (out, in, *kernel) reparametrised row by row,
                   W_j = s_j * hat(v_j): `ReparametrisedConv1d/2d`, `ReparametrisedLinear` (the DLN's
                   `ColumnMajorLinear`: `ReparametrisedColumnMajorLinear`), m = in * kernel size

and the training variants: "none" (nothing), "noisy_batchnorm" (BN + Algorithm 1 noise from the run's own
generator: NoisyBatchNorm1d/2d), "noisy_none" (the same noise alone: NoisyIdentity).

The native torch modules compute the formula's function exactly (tests/test_empirics_norms.py compares them
with `theory.numeric.torch_forward` in float64); they are used where they exist because they are several times
faster than the formula's. "BatchNorm's formula" is `Normaliser.formula_key()` equal to BatchNorm's (BatchNorm,
LayerNorm, GroupNorm and l2 are one formula on different axes).

Every module made here (for weight space: the reparametrised layer; for "none": the layer before the slot) is
tagged for the probes and the capture:

    norm_slot = True          the normalisation layer (or the place it would be)
    norm_variant: str         the run's norm ("lp2", "noisy_batchnorm", ...)
    normaliser: str | None    the registered normaliser it computes ("batchnorm" for noisy_batchnorm; None for none)
    norm_axis: str            "batch" | "features" | "group" | "weight space" (None for none and noisy_none)
    norm_groups: int | None   channel groups per sample: C / CHANNELS_PER_GROUP for "group", 1 for "features",
                              None for the batch axis and weight space
    norm_eps: float

and `group_rows(module, values)` lays out any tensor of the slot's shape (its input, output or their gradients;
for weight space the weight) as (groups, m): one row per normalisation group, the m values of the formula.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from theory.normalisers import BATCHNORM, REGISTRY
from theory.weight_space import AXIS_LAYOUTS

from .config import TRAINING_VARIANTS, ConfigError, Norm
from .noisy import NoisyBatchNorm1d, NoisyBatchNorm2d, NoisyIdentity
from .norm_layers import FormulaNorm

NormFactory = Callable[[int], nn.Module]
# GroupNorm's groups: 4 consecutive channels each (Wu & He's default is 32 groups of a 256-512-wide layer; our
# layers are 8-512 wide, so a fixed group size keeps every group m = 4 x positions values whatever the width)
CHANNELS_PER_GROUP = 4


def normaliser_of(norm: Norm):
    """The registered normaliser `norm` computes (noisy_batchnorm: BatchNorm's), or None (none, noisy_none)."""
    name = TRAINING_VARIANTS.get(norm.value, norm.value)
    if name is None:
        return None
    if name not in REGISTRY:
        raise ConfigError(f"normaliser {name!r} is not registered (any more); give its --normaliser-file")
    return REGISTRY[name]


def axis_of(normaliser) -> str:
    """The leading word of the normaliser's `axis`: where its groups lie ("batch", "features", "group", "weight space")."""
    word = normaliser.axis.partition(":")[0].strip()
    if word not in AXIS_LAYOUTS:
        raise ConfigError(f"normaliser {normaliser.name}: axis {normaliser.axis!r} names no axis the models can host; "
                          f"start it with one of {', '.join(repr(w + ':') for w in AXIS_LAYOUTS)}")
    return word


@functools.cache  # by the Normaliser object: a re-registered user formula is compared anew
def _batchnorm_formula(normaliser) -> bool:
    return normaliser.formula_key() == BATCHNORM.formula_key()


def is_batchnorm_formula(normaliser) -> bool:
    """Whether the normaliser's formula is BatchNorm's (centre, divide by sqrt(biased var + eps)) whatever its axis."""
    return _batchnorm_formula(normaliser)


def uses_batch_statistics(norm: Norm) -> bool:
    """Whether `norm`'s statistics run over the batch (undefined for a batch of one sample)."""
    normaliser = normaliser_of(norm)
    return normaliser is not None and axis_of(normaliser) == "batch"


class SpatialFlatten(nn.Module):
    """Apply a per-channel normaliser written for (N, C, L) to (N, C, *S) by viewing it as (N, C, prod S).

    Exact for any normaliser whose groups are unions of whole channels-by-positions blocks (batch, features,
    group axes): the flattening keeps every value of a channel in that channel and only renames its positions.
    (N, C) becomes (N, C, 1).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.dim() < 2:
            raise ValueError(f"input has shape {tuple(a.shape)}; SpatialFlatten expects (N, C, *positions)")
        return self.inner(a.reshape(a.shape[0], a.shape[1], -1)).reshape(a.shape)  # (N, C, prod S) -> (N, C, *S)


def _groups(normaliser, width: int) -> int:
    if width % CHANNELS_PER_GROUP:
        raise ConfigError(f"normaliser {normaliser.name}: its groups of {CHANNELS_PER_GROUP} channels do not divide a "
                          f"layer of {width} units; use widths that are multiples of {CHANNELS_PER_GROUP}")
    return width // CHANNELS_PER_GROUP


def _activation_module(normaliser, axis: str, width: int, eps: float, spatial_dims: int) -> tuple[nn.Module, int | None]:
    """(the module after a layer of `width` units, channel groups per sample or None for the batch axis)."""
    native = is_batchnorm_formula(normaliser)
    if axis == "batch":
        if native:
            return (nn.BatchNorm1d if spatial_dims == 1 else nn.BatchNorm2d)(width, eps=eps), None
        module = FormulaNorm(normaliser.name, width, dims="batch", eps=eps)
        return (SpatialFlatten(module) if spatial_dims == 2 else module), None
    groups = 1 if axis == "features" else _groups(normaliser, width)
    if native:
        return nn.GroupNorm(groups, width, eps=eps), groups
    if axis == "features":
        return SpatialFlatten(FormulaNorm(normaliser.name, width, dims=(1, 2), eps=eps)), groups
    return SpatialFlatten(FormulaNorm(normaliser.name, width, dims=(2, 3), eps=eps, groups=groups)), groups


class _Reparametrised:
    """A conv / linear layer whose weight rows are normalised by a weight-space formula: W_j = s_j hat(v_j).

    v = `weight` (out, in, *kernel) is the trained direction, `weight_scale` s (out,) the trained scale (the
    formula's gamma; no shift: a weight reparametrisation has none), hat the formula over each row's m = in x
    kernel values (`FormulaNorm(dims=(1, ...), channel_dim=0)`, `reparametrisation`). `match_weight_scale` sets
    s_j = ||v_j|| / ||hat(v_j)||, so W keeps the rows' initial norms (for WeightNorm, W = v at initialisation, as
    torch's weight_norm). Plain parameters throughout, so torch.func.functional_call substitutes them as usual.
    """

    def _reparametrise(self, name: str, eps: float) -> None:
        out = self.weight.shape[0]
        self.reparametrisation = FormulaNorm(name, out, dims=tuple(range(1, self.weight.dim())), eps=eps,
                                             channel_dim=0, affine=False)
        self.weight_scale = nn.Parameter(torch.ones(out, device=self.weight.device, dtype=self.weight.dtype))

    def effective_weight(self) -> torch.Tensor:
        hat = self.reparametrisation(self.weight)  # (out, in, *kernel)
        return hat * self.weight_scale.view(-1, *([1] * (self.weight.dim() - 1)))

    @torch.no_grad()
    def match_weight_scale(self) -> None:
        rows = self.reparametrisation(self.weight).flatten(1)
        self.weight_scale.copy_(self.weight.flatten(1).norm(dim=1) / rows.norm(dim=1))


class ReparametrisedConv1d(_Reparametrised, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class ReparametrisedConv2d(_Reparametrised, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class ReparametrisedLinear(_Reparametrised, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def column_major_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b (F.linear's function) computed as (W x^T)^T: the (*, out) result is a transposed view.

    The same values as F.linear up to the order of float summation. Why: for a thin batch (N, 10) MKL's
    (N, in) @ (in, out) orientation is slow and (out, in) @ (in, N) fast -- measured on the 2-core CPU, one
    thread: 45-80 us against 8-12 us forward at N = 1000, width 10. The result's x^T of the next layer is then
    contiguous again, and autograd's mm backward keeps the fast orientation along a chain of such layers (a
    BatchNorm1d between returns a contiguous (N, out) whatever its input: there the gain is lost, empirics.dln).
    Inputs of fewer than 2 dimensions go through F.linear. Plain torch ops: autograd, double backward,
    torch.func.vmap / grad and functional_call see an ordinary matmul.
    """
    if x.dim() < 2:
        return F.linear(x, weight, bias)
    y = (weight @ x.mT).mT  # (out, in) @ (*, in, N) -> (*, out, N), viewed as (*, N, out)
    return y if bias is None else y + bias


class ColumnMajorLinear(nn.Linear):
    """nn.Linear (same parameters, init and isinstance) whose forward is `column_major_linear`: the DLN's layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return column_major_linear(x, self.weight, self.bias)


class ReparametrisedColumnMajorLinear(ReparametrisedLinear):
    """ReparametrisedLinear through `column_major_linear`: a weight-space normaliser's ColumnMajorLinear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return column_major_linear(x, self.effective_weight(), self.bias)


_REPARAMETRISED_LINEAR = {nn.Linear: ReparametrisedLinear, ColumnMajorLinear: ReparametrisedColumnMajorLinear}


class WeightSpaceFactory:
    """A weight-space normaliser: not a module after the layer but the layer reparametrised (`place_norm`)."""

    def __init__(self, norm: Norm, normaliser, eps: float):
        self.norm, self.normaliser, self.eps = norm, normaliser, eps

    def reparametrise(self, layer: nn.Module) -> nn.Module:
        """A fresh reparametrised copy of `layer`'s kind and shape, on its device (its parameters are not copied:
        the model builders initialise them afterwards)."""
        device = layer.weight.device
        with torch.device(device):
            if type(layer) is nn.Conv1d or type(layer) is nn.Conv2d:
                cls = ReparametrisedConv1d if type(layer) is nn.Conv1d else ReparametrisedConv2d
                new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                          bias=layer.bias is not None)
            elif type(layer) in _REPARAMETRISED_LINEAR:  # exact types: a subclass's forward may differ
                new = _REPARAMETRISED_LINEAR[type(layer)](layer.in_features, layer.out_features,
                                                          bias=layer.bias is not None)
            else:
                raise ConfigError(f"normaliser {self.normaliser.name}: weight space cannot reparametrise a "
                                  f"{type(layer).__name__}; it needs a Conv1d, Conv2d or Linear layer")
            new._reparametrise(self.normaliser.name, self.eps)
        return _tag(new, self.norm, self.normaliser, "weight space", None, self.eps)

    def __call__(self, width: int) -> nn.Module:
        raise ConfigError(f"normaliser {self.normaliser.name} lives in weight space: it reparametrises the layer "
                          "(norms.place_norm), there is no module to put after it")


def _tag(module: nn.Module, norm: Norm, normaliser, axis: str | None, groups: int | None, eps: float) -> nn.Module:
    module.norm_slot = True
    module.norm_variant = norm.value
    module.normaliser = None if normaliser is None else normaliser.name
    module.norm_axis = axis
    module.norm_groups = groups
    module.norm_eps = eps
    return module


def norm_factory(norm: Norm, eps: float, noise_generator: torch.Generator | None = None,
                 spatial_dims: int = 1) -> NormFactory | WeightSpaceFactory | None:
    """width -> a fresh normalisation module for `norm`; a `WeightSpaceFactory` for a weight-space normaliser;
    None for Norm.NONE. Raises ConfigError for an axis or a width the model cannot host.

    spatial_dims: 1 for (N, C) / (N, C, L) activations (Conv1d, Linear), 2 for (N, C, H, W) (Conv2d).
    """
    norm = Norm(norm)
    if spatial_dims not in (1, 2):
        raise ConfigError(f"spatial_dims={spatial_dims!r} is not supported; use 1 (Conv1d/Linear) or 2 (Conv2d)")
    if norm is Norm.NONE:
        return None
    if norm in (Norm.NOISY_BATCHNORM, Norm.NOISY_NONE) and noise_generator is None:
        raise ConfigError(f"norm {norm.value} draws noise: give it the run's noise generator")
    normaliser = normaliser_of(norm)
    axis = None if normaliser is None else axis_of(normaliser)
    if axis == "weight space":
        return WeightSpaceFactory(norm, normaliser, eps)

    def make(width: int) -> nn.Module:
        if norm is Norm.NOISY_BATCHNORM:
            noisy = NoisyBatchNorm1d if spatial_dims == 1 else NoisyBatchNorm2d
            return _tag(noisy(width, eps, generator=noise_generator), norm, normaliser, axis, None, eps)
        if norm is Norm.NOISY_NONE:
            return _tag(NoisyIdentity(width, generator=noise_generator), norm, None, None, None, eps)
        module, groups = _activation_module(normaliser, axis, width, eps, spatial_dims)
        return _tag(module, norm, normaliser, axis, groups, eps)

    return make


def place_norm(layer: nn.Module, width: int, make_norm: NormFactory | WeightSpaceFactory | None) -> list[nn.Module]:
    """The modules standing for `layer` (a conv or linear layer of `width` output units) and its normalisation:
    [layer, norm module], [the reparametrised layer] (weight space) or [layer] tagged as the slot (none)."""
    if make_norm is None:
        layer.norm_slot = True  # where the normaliser would be: the paper's histograms look here
        return [layer]
    if isinstance(make_norm, WeightSpaceFactory):
        return [make_norm.reparametrise(layer)]
    return [layer, make_norm(width)]


def match_weight_scales(model: nn.Module) -> None:
    """After a model's weights are initialised: every reparametrised layer's scale set from its direction."""
    for module in model.modules():
        if isinstance(module, _Reparametrised):
            module.match_weight_scale()


def norm_slots(model: nn.Module) -> list[nn.Module]:
    """The tagged normalisation modules (or, without normalisation, the layers at their place)."""
    return [m for m in model.modules() if getattr(m, "norm_slot", False)]


def group_rows(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """`values` shaped like the slot's activations (N, C, *S) -- for weight space: like its weight (out, in,
    *kernel) -- as (groups, m): one row per normalisation group of the tagged `module`, its m values in order.

        batch         (C, N * prod S)              row c: channel c over every (sample, position)
        features      (N, C * prod S)              row n: sample n
        group         (N * G, C / G * prod S)      row n * G + k: sample n, channels k C/G ... (k+1) C/G - 1
        weight space  (out, in * prod kernel)      row j: output unit j's weights
    """
    axis = getattr(module, "norm_axis", None)
    if axis == "batch":
        return values.transpose(0, 1).reshape(values.shape[1], -1)
    if axis in ("features", "weight space"):
        return values.reshape(values.shape[0], -1)
    if axis == "group":
        return values.reshape(values.shape[0] * module.norm_groups, -1)
    raise ValueError(f"{type(module).__name__} is not a normalisation slot with groups (norm_axis={axis!r})")
