"""BatchNorm's formula reduced per group in one compiled kernel: the CPU fast path of the capture reductions.

For values laid out as (A, G, B) (`group_reductions.group_view`: the G groups on the middle axis, m = A * B values
each) and float32 or float64 y, g, dy, `batchnorm_columns` returns, per group, in float64 (`BN_COLUMNS` order):

    gamma    the group's scale (as given)          mean  = <1, y> / m          var  = ||y - mean||^2 / m (biased)
    sigma    = sqrt(var + eps)                     g_sum = <1, g>              g_sq = ||g||^2
    g_yhat   = <g, y - mean> / sigma               lhs   = ||dy||^2            yhat_sq = ||y - mean||^2 / sigma^2

the same numbers, to float64 rounding, as `group_reductions.batchnorm_reductions` (the torch reference, which the
tests compare this with): two passes, the first for the sums, the second for the centred products, every value
converted to float64 before it is multiplied (a product of two float32 values is then exact) and every sum
accumulated in float64 (why float64: `batchnorm_reductions`' tolerance analysis). Why this exists: with one CPU
thread the torch reduction is a dozen whole-layer ops on float64 copies of the three tensors, and on the default
VGG-1d's small layers (128 x 8 x 40 = 40,960 values at batch 128) their dispatch and copies cost more than the
arithmetic; one compiled loop reads each of y, g, dy at most twice and writes nothing but the result. Two loop
orders: along contiguous rows of G * B values (vectorised across the row; a BN channel's few positions) and,
where a row is too wide for its accumulators to stay in cache or A = 1 (a per-sample group), along each group's
B values in registers. `python -m verify bench` prices a captured step with it (`capture_overhead`) and with
the torch path (`capture_overhead_torch`).

Summation order. The kernel lets LLVM reassociate its float64 sums (fastmath "reassoc" and "contract" only: no
"nnan"/"ninf", so a diverged run's NaN and inf propagate as in the reference), so its vector lanes add in another
order than the reference's: the result differs from it by rounding, within a few m * 2^-53 of the summed
magnitudes, which is what the float64 analysis of `batchnorm_reductions` allows for.

Availability. numba compiles the kernel on first use for each input dtype and rank (cached on disk afterwards,
where numba can write its cache). `available()` is False where numba cannot be imported; the capture then keeps the torch path.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

_NO_SCALE = np.ones(0)  # the kernels' "no scale" (1): an empty array, one type for every layer

BN_COLUMNS = ("gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs", "yhat_sq")


@functools.cache
def _compiled():
    """The `_fused_kernels` module, or None where numba is not installed; imported on first use, so that a process
    that captures nothing does not import numba (~0.4 s)."""
    try:
        from . import _fused_kernels
    except ImportError:
        return None
    return _fused_kernels


def available() -> bool:
    """Whether the compiled kernel can run here (numba importable)."""
    return _compiled() is not None


def batchnorm_columns(y: torch.Tensor, g: torch.Tensor, dy: torch.Tensor, gamma: torch.Tensor, eps: float,
                      rows: int = len(BN_COLUMNS)) -> torch.Tensor:
    """(rows, G) float64 CPU tensor: BatchNorm's formula per group of (A, G, B) CPU tensors y, g, dy (one dtype,
    float32 or float64) with per-group scale gamma (G,) (module doc) in its first len(BN_COLUMNS) rows, NaN in any
    further ones (the capture's columns that BatchNorm's formula does not need)."""
    if not (y.shape == g.shape == dy.shape) or y.dim() != 3:
        raise ValueError(f"y, g, dy must share one (A, G, B) shape; got {tuple(y.shape)}, {tuple(g.shape)}, "
                         f"{tuple(dy.shape)}")
    if y.device.type != "cpu" or not (y.dtype == g.dtype == dy.dtype) or y.dtype not in (torch.float32,
                                                                                         torch.float64):
        raise ValueError(f"the fused kernel takes CPU float32/float64 tensors of one dtype; got {y.dtype}, "
                         f"{g.dtype}, {dy.dtype} on {y.device}")
    scale = gamma.detach().to(torch.float64).reshape(-1)
    if scale.shape != (y.shape[1],):
        raise ValueError(f"gamma has {scale.numel()} entries for {y.shape[1]} groups; give one per group")
    kernels = _kernels(rows)
    out = np.full((rows, y.shape[1]), np.nan)
    kernels.layer_kernel(*(t.detach().contiguous().numpy() for t in (y, g, dy)), scale.numpy(), float(eps),
                         kernels.AXIS_CODES["batch"], 1, out)
    return torch.from_numpy(out)


def _kernels(rows: int):
    """The compiled kernels, for an output of `rows` rows; a clear error where numba is missing or rows too few."""
    kernels = _compiled()
    if kernels is None:
        raise RuntimeError("the fused capture kernel needs numba; install it (pip install numba) or take the "
                           "torch path (group_reductions.batchnorm_reductions)")
    if rows < len(BN_COLUMNS):
        raise ValueError(f"rows={rows} leaves no room for the {len(BN_COLUMNS)} columns; pass rows >= "
                         f"{len(BN_COLUMNS)}")
    return kernels


class LayerColumns:
    """`batchnorm_columns` for one layer, called at every captured step with as little Python as it can: the
    kernel takes the layer's tensors in their own shape (it works out the (A, G, B) view of `group_view` itself),
    reads the per-group scale through a numpy view of the parameter's storage (`refresh()` re-reads it; in-place
    updates need no refresh) and writes into an output array reused from call to call (the caller copies it before
    the next call). Inside backward every Python operation runs with cold caches and costs several times what it
    does in a loop, so the per-call work is the three array views and the kernel.

    scale_of: returns the layer's current per-group scale (G,) (BN's gamma, a weight-space scale) or None (1);
    axis: the capture point's axis (`group_reductions.group_view`); groups: a GroupNorm's groups per sample (1
    elsewhere); eps; rows as for `batchnorm_columns`.
    """

    def __init__(self, scale_of, axis: str, groups: int, eps: float, rows: int):
        kernels = _kernels(rows)
        if axis not in kernels.AXIS_CODES:
            raise ValueError(f"axis {axis!r} has no group layout; use one of {sorted(kernels.AXIS_CODES)}")
        self.scale_of, self.eps, self.rows, self.groups = scale_of, float(eps), rows, int(groups)
        self._axis, self._kernel = kernels.AXIS_CODES[axis], kernels.layer_kernel
        self._outs: dict[int, np.ndarray] = {}  # by G: a per-sample axis has as many groups as the batch
        self.out = self._output(1)
        self._scale, self._pointer = None, None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the scale: after the parameter was replaced (an in-place update needs none)."""
        scale = self.scale_of()
        if scale is None or scale.device.type != "cpu":  # no scale; or the model moved off the CPU (no kernel)
            self._gamma, self._scale = _NO_SCALE, None
        elif scale is not self._scale or scale.data_ptr() != self._pointer:
            self._gamma = scale.detach().reshape(-1).numpy()
            self._scale, self._pointer = scale, scale.data_ptr()

    def _output(self, groups: int) -> np.ndarray:
        if groups not in self._outs:
            self._outs[groups] = np.full((self.rows, groups), np.nan)
        return self._outs[groups]

    def __call__(self, y: torch.Tensor, g: torch.Tensor, dy: torch.Tensor) -> np.ndarray:
        """The (rows, G) output array (reused: copy it before the next call) for CPU tensors y, g, dy shaped like
        the layer's input, of one dtype (float32 or float64), contiguous, none requiring grad."""
        values = y.numpy()
        try:
            self._kernel(values, g.numpy(), dy.numpy(), self._gamma, self.eps, self._axis, self.groups, self.out)
        except IndexError:  # another number of groups than the last call's (a per-sample axis, another batch)
            self.out = self._output(self._width(values))
            self._kernel(values, g.numpy(), dy.numpy(), self._gamma, self.eps, self._axis, self.groups, self.out)
        return self.out

    def _width(self, values: np.ndarray) -> int:
        return values.shape[1] if self._axis == 0 else values.shape[0] * (self.groups if self._axis == 2 else 1)
