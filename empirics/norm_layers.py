"""Every registered normaliser as a torch module, computed from its SymPy formula.

    z = weight_c * hat(y; statistics over `dims`) + bias_c        (per channel c; init weight 1, bias 0)

The normalised values come from `theory.numeric.torch_forward(name)`, lambdified from the very
formula the theory derives its statements from, so the module and the theory cannot drift apart.

Statistics are always those of the current input (training-mode semantics) -- in eval() too:
there are no running statistics, unlike nn.BatchNorm1d, whose eval() normalises with running
averages. Probes that must see the training-mode function can therefore use either mode.

`dims` names the input axes the statistics run over (the m values of one group):

    batch style (BatchNorm, l1/l2/l-inf):  (0, 2) for (N, C, L);  (0,) for (N, C);  (0, 2, 3) for (N, C, H, W)
    layer style (LayerNorm, RMSNorm):      (1, 2) for (N, C, L);  (1,) for (N, C)
    instance style:                        (2,) for (N, C, L)
    group style (GroupNorm):               groups=G views (N, C, *S) as (N, G, C/G, *S) and `dims` index
                                           that view: (2, 3) for (N, C, L)
    weight style (WeightNorm):             dims=(1,), channel_dim=0 on a weight (out, in): one row per unit

eps is added where the formula puts it (inside the root for BatchNorm/LayerNorm/RMSNorm, onto the
l1 / l-inf average for lp1 / lpinf); WeightNorm has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from theory import numeric

BATCH_DIMS = {2: (0,), 3: (0, 2), 4: (0, 2, 3)}  # input ndim -> BatchNorm-style statistic axes
LAYER_DIMS = {2: (1,), 3: (1, 2), 4: (1, 2, 3)}  # input ndim -> LayerNorm-style statistic axes


class FormulaNorm(nn.Module):
    """The registered normaliser `name` over the axes `dims`, with a per-channel affine map."""

    def __init__(self, name: str, num_channels: int, dims: tuple[int, ...] | str, eps: float = 1e-5,
                 groups: int | None = None, channel_dim: int = 1, affine: bool = True) -> None:
        super().__init__()
        if groups is not None and (channel_dim != 1 or groups < 1 or num_channels % groups):
            raise ValueError(f"groups={groups} needs channel_dim=1 and must divide num_channels={num_channels}")
        self.name = name
        self.num_channels = num_channels
        # "batch": BatchNorm-style axes chosen from the input's rank at each call ((N,C), (N,C,L), (N,C,H,W))
        self.dims = dims if dims == "batch" else tuple(dims)
        self.eps = float(eps)
        self.groups = groups
        self.channel_dim = channel_dim
        self._normalise = numeric.torch_forward(name)  # raises KeyError for an unknown name
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def reset_parameters(self) -> None:
        """gamma = 1, beta = 0 (no RNG): models built on the meta device call this after to_empty()."""
        if self.weight is not None:
            with torch.no_grad():
                self.weight.fill_(1.0)
                self.bias.zero_()

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups is not None else ""
        return f"{self.name!r}, {self.num_channels}, dims={self.dims}, eps={self.eps}{groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= self.channel_dim or x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(f"{self.name}: expected {self.num_channels} channels on axis {self.channel_dim}, "
                             f"got input of shape {tuple(x.shape)}")
        values = x
        if self.groups is not None:  # (N, C, *S) -> (N, G, C/G, *S)
            values = x.reshape(x.shape[0], self.groups, self.num_channels // self.groups, *x.shape[2:])
        dims = BATCH_DIMS[values.dim()] if self.dims == "batch" else self.dims
        z = self._normalise(values, dims, self.eps).reshape(x.shape)
        if self.weight is None:
            return z
        shape = [1] * x.dim()
        shape[self.channel_dim] = self.num_channels
        return z * self.weight.view(shape) + self.bias.view(shape)


class WeightNormalisedLinear(nn.Module):
    """y = x W^T + b with each row of W reparametrised by a weight-space normaliser: W_j = g_j v_j / ||v_j||.

    The reparametrisation is `FormulaNorm(name, out_features, dims=(1,), channel_dim=0)` applied to
    v (out_features, in_features), without its bias; g starts at ||v_j|| so that W = v initially,
    as torch.nn.utils.parametrizations.weight_norm does.
    """

    def __init__(self, in_features: int, out_features: int, name: str = "weightnorm") -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.direction, a=5**0.5)  # nn.Linear's default init
        self.norm = FormulaNorm(name, out_features, dims=(1,), eps=0.0, channel_dim=0)
        with torch.no_grad():
            self.norm.weight.copy_(self.direction.norm(dim=1))
        self.norm.bias.requires_grad_(False)  # zero: a weight reparametrisation has no shift
        self.bias = nn.Parameter(torch.zeros(out_features))

    def effective_weight(self) -> torch.Tensor:
        return self.norm(self.direction)  # (out_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)
