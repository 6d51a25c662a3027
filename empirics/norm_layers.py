"""Every registered normaliser as a torch module, computed from its SymPy formula.

    z = weight_c * hat(y; statistics over `dims`) + bias_c        (per channel c; init weight 1, bias 0)

The normalised values come from `theory.numeric`, lambdified from the very formula the theory
derives its statements from, so the module and the theory cannot drift apart. The gradient too:
where the formula's backward has a form in batch reductions (`numeric.torch_program`: every registered
normaliser -- BatchNorm, l1, l2, l-inf, LayerNorm, GroupNorm, RMSNorm, WeightNorm), the module runs the
forward and that derived backward as one torch.autograd.Function (`_DerivedNormalise`), a few batch sums
and one elementwise expression instead of autograd through the forward's dozen small ops. l-inf's
statistic is a batch maximum R = max_i |y_i - mu|: its derived backward is the derivative on the smooth
piece, dR/dy_i = w_i sign(y_i - mu) with w_i = 1[|y_i - mu| = R] / #{samples attaining R} recomputed in the
backward, which at a tie is the subgradient torch's amax backward takes (the samples attaining the maximum
share its gradient evenly): it equals autograd of the forward at ties too (tests/test_empirics_formula_backward).
Measured (VGG-1d default, one CPU thread, steps alternating in one process, `verify.bench_steps`'s lp_step):
a step of the l1 network costs ~1.17 of BatchNorm's (~1.58 with autograd through the forward, ~1.24 before
the programs' per-call constants and redundant ops were removed), of the l-inf network ~1.25 (~1.92 with
autograd); on another machine of the same kind, whose native BatchNorm step was faster (7.4 ms against
12.2), 1.51 and 1.60, and on an AMD EPYC 1.22 and 1.25 (reports/default/bench.json: the ratio moves with the
CPU, not only with the code);
the deep linear network's step (24 normaliser layers on (1000, 10)) ~0.77 of its autograd cost for l-inf,
~0.91 of the earlier derived one for l1. The backward is itself torch ops on the saved input and statistics,
so it differentiates again (HVPs, double backward) and vmaps (generate_vmap_rule); it has no forward-mode rule
(torch.func.jvp raises). `FormulaNorm.backward_route` says which route a module takes (autograd where a
normaliser's statistic is not linear in its reductions, or derived_backward=False).

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
from theory.batch_algebra import NoClosedForm

BATCH_DIMS = {2: (0,), 3: (0, 2), 4: (0, 2, 3)}  # input ndim -> BatchNorm-style statistic axes
LAYER_DIMS = {2: (1,), 3: (1, 2), 4: (1, 2, 3)}  # input ndim -> LayerNorm-style statistic axes


def _derived_backward(ctx, grad, grad_stats) -> tuple:
    """Gradients of (y, gamma, beta) for both Functions below, from ctx's saved y, gamma and statistics."""
    values, gamma, *stats = ctx.saved_tensors
    if grad is None:
        grad = torch.zeros_like(values)
    grads = ctx.program.backward(values, stats, grad, list(grad_stats), ctx.axes, ctx.eps, gamma)
    if gamma is None:
        return grads[0], None, None
    return grads[0], _summed_like(grads[1], gamma), _summed_like(grads[2], gamma)


class _DerivedNormalise(torch.autograd.Function):
    """(y, gamma, beta, program, axes, eps) -> (z, *statistics), backward by `program.backward` (theory.numeric).

    gamma and beta are one number per group broadcasting against y (a batch-style normaliser's per-channel
    affine), or both None (the caller applies the affine). The statistics are outputs, unused by the
    network (their gradients are None in training), so that a second derivative reaches them: the
    backward is torch ops on the saved y, gamma and statistics, and autograd carries d(backward)/d(statistics)
    back here as their gradients (the seeds Q_t of `numeric._fused_programs`). This class is the one
    torch.func transforms use (setup_context, generate_vmap_rule); `_EagerDerivedNormalise` is the same
    outside them.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(values, gamma, beta, program, axes, eps):
        z, stats = program.forward(values, axes, eps, gamma, beta)
        return (z, *stats)

    @staticmethod
    def setup_context(ctx, inputs, output):
        values, gamma, _, program, axes, eps = inputs
        ctx.program, ctx.axes, ctx.eps = program, axes, eps
        ctx.save_for_backward(values, gamma, *output[1:])
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None instead of a zero tensor

    @staticmethod
    def backward(ctx, grad, *grad_stats):
        return (*_derived_backward(ctx, grad, grad_stats), None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError("FormulaNorm's derived backward has no forward-mode rule: use reverse mode "
                                  "(torch.func.grad, vjp, HVPs as reverse over reverse), or build the module with "
                                  "derived_backward=False to differentiate its forward with autograd")


class _EagerDerivedNormalise(torch.autograd.Function):
    """`_DerivedNormalise` outside torch.func transforms, in the older style (forward with ctx): a setup_context
    Function binds its arguments with inspect.signature on every call, measured ~0.1 ms per layer per step
    here, a tenth of a VGG-1d l1 step. Double backward works the same (torch.autograd.grad, create_graph)."""

    @staticmethod
    def forward(ctx, values, gamma, beta, program, axes, eps):
        z, stats = program.forward(values, axes, eps, gamma, beta)
        ctx.program, ctx.axes, ctx.eps = program, axes, eps
        ctx.save_for_backward(values, gamma, *stats)
        ctx.set_materialize_grads(False)
        return (z, *stats)

    @staticmethod
    def backward(ctx, grad, *grad_stats):
        return (*_derived_backward(ctx, grad, grad_stats), None, None, None)


def _normalise(*args) -> torch.Tensor:
    """z of `_DerivedNormalise`, through the Function fit for the moment: torch.func's, or the eager one."""
    function = _DerivedNormalise if torch._C._are_functorch_transforms_active() else _EagerDerivedNormalise
    return function.apply(*args)[0]


def _summed_like(per_group: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-group gradient summed over the groups that share a parameter entry (e.g. instance norm's samples)."""
    if per_group.shape == like.shape:
        return per_group
    axes = tuple(d for d in range(per_group.dim()) if like.shape[d] == 1 and per_group.shape[d] != 1)
    return per_group.sum(dim=axes, keepdim=True)


def _axes(dims, ndim: int) -> tuple[int, ...]:
    axes = tuple(sorted({d % ndim for d in dims}))
    if len(axes) != len(tuple(dims)):
        raise ValueError(f"dims={tuple(dims)} must name distinct axes of a {ndim}-d input (statistics run over them)")
    return axes


class FormulaNorm(nn.Module):
    """The registered normaliser `name` over the axes `dims`, with a per-channel affine map."""

    def __init__(self, name: str, num_channels: int, dims: tuple[int, ...] | str, eps: float = 1e-5,
                 groups: int | None = None, channel_dim: int = 1, affine: bool = True,
                 derived_backward: bool = True) -> None:
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
        self._program = None
        self.backward_route = "autograd (derived_backward=False)"
        if derived_backward:
            try:
                self._program = numeric.torch_program(name)
                self.backward_route = "derived"  # numeric.torch_program's backward, one autograd.Function
            except NoClosedForm as reason:
                self.backward_route = f"autograd ({reason})"
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
        shape = [1] * x.dim()
        shape[self.channel_dim] = self.num_channels
        if self._program is not None:
            axes = _axes(dims, values.dim())
            if self.weight is not None and self.groups is None and self.channel_dim % x.dim() not in axes:
                # the affine is one number per group: fused into the program, one tensor-sized pass less each way
                return _normalise(values, self.weight.view(shape), self.bias.view(shape), self._program, axes, self.eps)
            z = _normalise(values, None, None, self._program, axes, self.eps)
        else:
            z = self._normalise(values, dims, self.eps)
        if self.groups is not None:  # (N, G, C/G, *S) -> (N, C, *S); else z has x's shape (no view node per call)
            z = z.reshape(x.shape)
        if self.weight is None:
            return z
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
