"""BatchNorm's formula reduced per group in one compiled kernel: the CPU fast path of the capture reductions.

For values laid out as (A, G, B) (`group_reductions.group_view`: the G groups on the middle axis, m = A * B values
each) and float32 or float64 y, g, dy, `batchnorm_columns` returns, per group, in float64 (`BN_COLUMNS` order):

    gamma    the group's scale (as given)          mean  = <1, y> / m          var  = ||y - mean||^2 / m (biased)
    sigma    = sqrt(var + eps)                     g_sum = <1, g>              g_sq = ||g||^2
    g_yhat   = <g, y - mean> / sigma               lhs   = ||dy||^2            yhat_sq = ||y - mean||^2 / sigma^2

the same numbers, to float64 rounding, as `group_reductions.batchnorm_reductions` (the torch reference, which the
tests compare this with): two passes, the first for the sums, the second for the centred products, every value
converted to float64 before it is multiplied (a product of two float32 values is then exact) and every sum
accumulated in float64. Why this exists: with one CPU thread the torch reduction is ~40 small whole-layer ops, and
on the default VGG-1d's small layers (~40,000 values a layer) their dispatch and their float64 copies cost
more than the step's own passes over the layer; one compiled loop reads each of y, g, dy twice and writes
nothing but the result.

Summation order. The kernel lets LLVM reassociate its float64 sums (fastmath "reassoc" and "contract" only: no
"nnan"/"ninf", so a diverged run's NaN and inf propagate as in the reference), so its vector lanes add in another
order than the reference's: the result differs from it by rounding, within a few m * 2^-53 of the summed
magnitudes, which is what the float64 analysis of `batchnorm_reductions` allows for.

Availability. numba compiles the kernel on first use (about a second; cached on disk afterwards, where numba can
write its cache). `available()` is False where numba cannot be imported; the capture then keeps the torch path.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

BN_COLUMNS = ("gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs", "yhat_sq")


ROW_KERNEL_MAX_WIDTH = 1 << 16  # G * B columns: six float64 accumulator rows of this width stay within L2


@functools.cache
def _compiled():
    """(grouped, row) jitted kernels (`_fused_kernels`), or None where numba is not installed; imported on first
    use, so that a process that captures nothing does not import numba (~0.4 s)."""
    try:
        from . import _fused_kernels
    except ImportError:
        return None
    return _fused_kernels.grouped_kernel, _fused_kernels.row_kernel


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
    columns = LayerColumns(gamma.detach().to(torch.float64).reshape(-1), y.shape[1], eps, rows)
    return torch.from_numpy(columns(*(t.detach().contiguous() for t in (y, g, dy))))


class LayerColumns:
    """`batchnorm_columns` for one layer, called at every captured step with as little Python as it can: the
    per-group scale is read through a float32 view of the parameter's storage (kept current by in-place updates;
    rebuilt when the storage moves) and the result is written into one output array reused from call to call
    (the caller copies it before the next call). Inside backward every Python operation runs with cold caches
    and costs several times what it does in a loop, so the per-call work is the three array views and the kernel.

    scale: the per-group scale (G,) (BN's gamma, a weight-space scale) or None (1); groups: G; eps; rows as for
    `batchnorm_columns`.
    """

    def __init__(self, scale: torch.Tensor | None, groups: int, eps: float, rows: int):
        if _compiled() is None:
            raise RuntimeError("the fused capture kernel needs numba; install it (pip install numba) or take the "
                               "torch path (group_reductions.batchnorm_reductions)")
        if rows < len(BN_COLUMNS):
            raise ValueError(f"rows={rows} leaves no room for the {len(BN_COLUMNS)} columns; pass rows >= "
                             f"{len(BN_COLUMNS)}")
        self.scale, self.eps = scale, float(eps)
        self.out = np.full((rows, groups), np.nan)
        self._gamma, self._pointer = np.ones(groups), None
        self._grouped, self._rows = _compiled()

    def _gamma_view(self) -> np.ndarray:
        if self.scale is None:
            return self._gamma
        pointer = self.scale.data_ptr()
        if pointer != self._pointer:
            self._gamma, self._pointer = self.scale.detach().reshape(-1).numpy(), pointer
        return self._gamma

    def __call__(self, y: torch.Tensor, g: torch.Tensor, dy: torch.Tensor) -> np.ndarray:
        """The (rows, G) output array (reused: copy it before the next call) for (A, G, B) CPU tensors of one
        dtype, float32 or float64, contiguous."""
        batch, groups, inner = y.shape
        kernel = self._rows if batch > 1 and groups * inner <= ROW_KERNEL_MAX_WIDTH else self._grouped
        kernel(y.numpy(), g.numpy(), dy.numpy(), self._gamma_view(), self.eps, self.out)
        return self.out
