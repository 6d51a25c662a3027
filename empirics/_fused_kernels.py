"""The numba kernels of `fused_reductions` (that module's doc: what they compute, and why in this order).

Imported only by `fused_reductions._compiled`, on first use: importing this module imports numba.
"""

from __future__ import annotations

import numba
import numpy as np

_FASTMATH = {"reassoc", "contract"}  # reorder float64 sums (vector lanes); NaN and inf semantics kept


def _jit(function):
    try:
        return numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)(function)
    except RuntimeError:  # numba finds no writable cache location: compile in memory, in every process
        return numba.njit(nogil=True, fastmath=_FASTMATH)(function)


@_jit
def _write(gamma, eps, m, mean, sum_g, centred_sq, g_sq, g_centred, dy_sq, out):
    """The BN_COLUMNS rows of `out` from the per-group sums."""
    scaled = gamma.shape[0] > 0  # an empty gamma: no scale (1)
    for j in range(mean.shape[0]):
        var = centred_sq[j] / m
        sigma = np.sqrt(var + eps)
        out[0, j] = gamma[j] if scaled else 1.0
        out[1, j] = mean[j]
        out[2, j] = var
        out[3, j] = sigma
        out[4, j] = sum_g[j]
        out[5, j] = g_sq[j]
        out[6, j] = g_centred[j] / sigma
        out[7, j] = dy_sq[j]
        out[8, j] = centred_sq[j] / (sigma * sigma)


@_jit
def grouped_kernel(y, g, dy, gamma, eps, out):  # (A, G, B) x 3, (G,) or (0,): no scale, float, (>= 9, G) float64
    """Each group's values summed along B in registers: for long rows (B large, e.g. A = 1 per-sample groups)."""
    batch, groups, inner = y.shape
    m = batch * inner
    sum_y = np.zeros(groups)
    sum_g = np.zeros(groups)
    for a in range(batch):
        for j in range(groups):
            acc_y = 0.0
            acc_g = 0.0
            for b in range(inner):
                acc_y += np.float64(y[a, j, b])
                acc_g += np.float64(g[a, j, b])
            sum_y[j] += acc_y
            sum_g[j] += acc_g
    mean = sum_y / m
    centred_sq = np.zeros(groups)
    g_sq = np.zeros(groups)
    g_centred = np.zeros(groups)
    dy_sq = np.zeros(groups)
    for a in range(batch):
        for j in range(groups):
            shift = mean[j]
            acc_c = 0.0
            acc_g = 0.0
            acc_gc = 0.0
            acc_d = 0.0
            for b in range(inner):
                centred = np.float64(y[a, j, b]) - shift
                grad = np.float64(g[a, j, b])
                dgrad = np.float64(dy[a, j, b])
                acc_c += centred * centred
                acc_g += grad * grad
                acc_gc += grad * centred
                acc_d += dgrad * dgrad
            centred_sq[j] += acc_c
            g_sq[j] += acc_g
            g_centred[j] += acc_gc
            dy_sq[j] += acc_d
    _write(gamma, eps, m, mean, sum_g, centred_sq, g_sq, g_centred, dy_sq, out)


@_jit
def row_kernel(y, g, dy, gamma, eps, out):  # as grouped_kernel
    """Sums along A of each (group, b) column, one contiguous row of G * B values at a time (vectorised along the
    row), then along B: for short B (a BN channel's few positions, B = 1 after a Linear layer)."""
    batch, groups, inner = y.shape
    width = groups * inner
    m = batch * inner
    rows_y = y.reshape(batch, width)
    rows_g = g.reshape(batch, width)
    rows_dy = dy.reshape(batch, width)
    column_y = np.zeros(width)
    column_g = np.zeros(width)
    for a in range(batch):
        for k in range(width):
            column_y[k] += np.float64(rows_y[a, k])
            column_g[k] += np.float64(rows_g[a, k])
    mean = np.zeros(groups)
    sum_g = np.zeros(groups)
    for j in range(groups):
        for b in range(inner):
            mean[j] += column_y[j * inner + b]
            sum_g[j] += column_g[j * inner + b]
    mean /= m
    shift = np.empty(width)  # each column's group mean
    for j in range(groups):
        for b in range(inner):
            shift[j * inner + b] = mean[j]
    column_c = np.zeros(width)
    column_gg = np.zeros(width)
    column_gc = np.zeros(width)
    column_d = np.zeros(width)
    for a in range(batch):
        for k in range(width):
            centred = np.float64(rows_y[a, k]) - shift[k]
            grad = np.float64(rows_g[a, k])
            dgrad = np.float64(rows_dy[a, k])
            column_c[k] += centred * centred
            column_gg[k] += grad * grad
            column_gc[k] += grad * centred
            column_d[k] += dgrad * dgrad
    centred_sq = np.zeros(groups)
    g_sq = np.zeros(groups)
    g_centred = np.zeros(groups)
    dy_sq = np.zeros(groups)
    for j in range(groups):
        for b in range(inner):
            k = j * inner + b
            centred_sq[j] += column_c[k]
            g_sq[j] += column_gg[k]
            g_centred[j] += column_gc[k]
            dy_sq[j] += column_d[k]
    _write(gamma, eps, m, mean, sum_g, centred_sq, g_sq, g_centred, dy_sq, out)


ROW_KERNEL_MAX_WIDTH = 1 << 16  # G * B columns: six float64 accumulator rows of this width stay within L2
AXIS_CODES = {"batch": 0, "features": 1, "weight space": 1, "group": 2}  # group_reductions.group_view's layouts


@_jit
def layer_kernel(y, g, dy, gamma, eps, axis, groups, out):  # y, g, dy: a layer's tensors, C-contiguous, any ndim
    """One layer's reductions straight from its tensors' own shape: the (A, G, B) view of `group_view` for the
    axis code (`AXIS_CODES`; groups: a GroupNorm's groups per sample) and the kernel for its width, chosen here so
    that the caller's only per-call work is the three array views."""
    size = y.size
    if axis == 0:
        batch, width = y.shape[0], y.shape[1]
    elif axis == 1:
        batch, width = 1, y.shape[0]
    else:
        batch, width = 1, y.shape[0] * groups
    if out.shape[1] != width:
        raise IndexError("the output array has another number of groups than the layer's input")
    if gamma.shape[0] not in (0, width):
        raise ValueError("the scale has another number of entries than the layer has groups")
    inner = size // (batch * width)
    shape = (batch, width, inner)
    values, grads, dgrads = y.reshape(shape), g.reshape(shape), dy.reshape(shape)
    if batch > 1 and width * inner <= ROW_KERNEL_MAX_WIDTH:
        row_kernel(values, grads, dgrads, gamma, eps, out)
    else:
        grouped_kernel(values, grads, dgrads, gamma, eps, out)
