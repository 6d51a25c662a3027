"""Capture, at chosen training steps, every normalisation group's share of the quantities its statements need.

`BoundCapture` hooks every normalisation layer of a model (`group_reductions.capture_points`: every registered
normaliser on every axis it can be placed on -- a BatchNorm channel over the batch, a LayerNorm or RMSNorm sample, a
GroupNorm sample's group, a WeightNorm weight row -- found from the tags of `empirics.norms`, no list of names) and,
for each forward+backward inside `active()`, reduces the layer's input y, output gradient and input gradient dL/dy
per group to the columns of `group_reductions.REDUCTION_COLUMNS` (sigma and yhat the normaliser's own, from its
formula; lhs = ||dL/dy||^2 the measured left side of thm4.1; for BatchNorm's channel, with z = gamma yhat + beta,
g = dL/dz:

    mean  = <1, y> / m                 var = ||y - mean||^2 / m   (biased, as BN normalises)
    sigma = sqrt(var + eps)            yhat = (y - mean) / sigma
    g_sum = <1, g>   g_sq = ||g||^2    g_yhat = <g, yhat>         lhs = ||dy||^2

which is everything thm4.1's two sides need, the right side (gamma^2 / sigma^2)(g_sq - g_sum^2 / m - c g_yhat^2)
being assembled downstream for any c). `channel_reductions` is the same reduction for one BatchNorm layer's tensors.

Capturing is observational: hooks hold detached references and return None (so no gradient is
changed), nothing the network uses is written, and no RNG is drawn. A layer's reductions run in
float64 inside backward, the moment its input gradient exists (the normaliser's backward has just read y and g,
so all three are still in cache: on a CPU ~2.5x cheaper than reducing after backward). Running no Python inside
backward instead -- every gradient from one torch.autograd.grad call with each layer's input and output among its
inputs, the kernel run after it -- measured slower on the VGG-1d (a one-off timing: asking autograd for those
non-leaf gradients costs more than the hooks it saves, and holding them past backward made the allocator fault
fresh pages on every captured step). Where the output's autograd
node reads y directly (a native normaliser, a derived backward), one hook on that node sees both g (its output
gradient) and dy (its input gradient); dy is then the gradient through the normaliser (the quantity the bounds are
about), which is dL/dy whenever the normaliser is y's only consumer (every model here); elsewhere two tensor hooks
on y and the output take g and the whole dL/dy.
BatchNorm's formula on a CPU (BatchNorm, l2, LayerNorm, GroupNorm) is reduced by the compiled kernel of
`fused_reductions` (numba: one loop reads y, g and dy twice; a per-element affine is folded into g first, by
`group_reductions`; `BoundCapture(fused=False)` keeps the torch reduction `batchnorm_reductions`, its reference in
the tests); other normalisers and devices take
the torch reductions on one float64 copy of the three in a buffer reused across steps, and a formula normaliser
(l1, RMSNorm, ...) adds its float64 gradient for the identity check. collect() then copies (columns, groups)
numbers per layer to the host, all layers in one copy. `python -m verify bench` measures a captured step against
a plain one (`capture_overhead`, and `capture_overhead_torch` for the torch path). No host synchronisation happens
before collect().
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from . import fused_reductions
from .group_reductions import (
    BN_FLOAT_KEYS,
    FLOAT_COLUMNS,
    REDUCTION_COLUMNS,
    CapturePoint,
    Scratch,
    batchnorm_reductions,
    capture_points,
    group_reductions,
    group_scale,
)

REDUCTION_KEYS = ("m", "eps", "gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs")  # channel_reductions'
ROW_KEYS = ("step", "layer", "channel", *REDUCTION_COLUMNS)  # a BoundCapture row
INT_KEYS = ("step", "layer", "channel", "m")


def _tensor(values, name: str) -> torch.Tensor:
    """A tensor or array as a detached tensor (dtype unchanged) of a BatchNorm input's rank."""
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.dim() not in (2, 3, 4):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; BatchNorm1d/2d inputs are (N, C), (N, C, L) "
                         "or (N, C, H, W)")
    return tensor


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm1d and BatchNorm2d layers in forward order, also inside noisy BN.

    For 1-D models exactly `models.norm_layers` (BatchNorm1d only), so layer indices are unchanged.
    """
    return [module for module in model.modules() if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))]


def _reduction_arrays(columns: torch.Tensor, m: int, eps: float) -> dict[str, np.ndarray]:
    """The dict of channel_reductions from _reduction_tensors' output (one device-to-host copy)."""
    values = columns.cpu().numpy()
    channels = values.shape[1]
    return {"m": np.full(channels, m, dtype=np.int64), "eps": np.full(channels, eps, dtype=np.float64),
            **dict(zip(BN_FLOAT_KEYS, values))}


def channel_reductions(y, g, dy, gamma, eps: float) -> dict[str, np.ndarray]:
    """Per-channel float64 reductions of one BN layer's input y, output-gradient g, input-gradient dy.

    y, g, dy: (N, C), (N, C, L) or (N, C, H, W), tensors or arrays of one shape; gamma: (C,); eps:
    BN's eps. Statistics are over every axis but the channel axis, with biased variance and eps
    inside the square root, as BatchNorm1d/2d compute them in train() mode. Returns 1-D arrays of
    length C keyed by REDUCTION_KEYS (m as int64, the rest float64).
    """
    y, g, dy = _tensor(y, "y"), _tensor(g, "g"), _tensor(dy, "dy")  # (N, C, *spatial)
    gamma = gamma if isinstance(gamma, torch.Tensor) else torch.as_tensor(np.asarray(gamma, dtype=np.float64))
    return _reduction_arrays(batchnorm_reductions(y, g, dy, gamma, eps, Scratch()), y.numel() // y.shape[1], eps)


def empty_rows() -> dict[str, np.ndarray]:
    """Capture columns with no rows (int64 ids and m, float64 reductions)."""
    return {key: np.zeros(0, dtype=np.int64 if key in INT_KEYS else np.float64) for key in ROW_KEYS}


def concat_rows(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack the row dicts of several collect() calls into one."""
    if not chunks:
        return empty_rows()
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in ROW_KEYS}


def _layout_rows(widths: list[int], ms: list[int], eps: list[float]) -> dict[str, np.ndarray]:
    """The layer, channel, m and eps columns of collect()'s rows for layers of these widths, read-only (one set
    shared by every step's rows)."""
    rows = {"layer": np.repeat(np.arange(len(widths), dtype=np.int64), widths),
            "channel": np.concatenate([np.arange(width, dtype=np.int64) for width in widths]),
            "m": np.repeat(np.asarray(ms, dtype=np.int64), widths),
            "eps": np.repeat(np.asarray(eps, dtype=np.float64), widths)}
    for values in rows.values():
        values.flags.writeable = False
    return rows


def _input_slot(node, y: torch.Tensor) -> int | None:
    """The index of y among the inputs of autograd node `node` (y's gradient is then the node's grad_inputs at
    that index), or None: no node, y a leaf, or y not a direct input of it (the output is the last of several
    ops: a formula normaliser without a derived backward)."""
    if node is None or y.grad_fn is None:
        return None
    inputs = node.next_functions
    if inputs and inputs[0][0] is y.grad_fn and inputs[0][1] == y.output_nr:
        return 0  # the usual place (a native normaliser's input)
    for slot, (function, output_nr) in enumerate(inputs):
        if function is y.grad_fn and output_nr == y.output_nr:
            return slot
    return None


class _LayerHooks:
    """The hooks of one capture point and the state of its one forward in an active() block: the forward hook
    keeps y and hooks the backward of the output's node; the backward hook reduces. Everything a hook reads is
    an attribute here and every hook a bound method made once: inside backward every Python operation runs with
    cold caches and costs several times what it does in a loop."""

    __slots__ = ("capture", "point", "kernels", "forwards", "y", "g", "kernel_now", "slot", "output_nr",
                 "columns", "m")

    def __init__(self, capture: BoundCapture, point: CapturePoint):
        self.capture, self.point = capture, point
        self.kernels: dict[torch.dtype, fused_reductions.LayerColumns | None] = {}  # CPU inputs of this dtype
        self.reset()

    def reset(self) -> None:
        """Forget the last block's forward."""
        self.forwards = 0  # grad-enabled forwards in this block (collect() wants exactly one)
        self.y = self.g = self.kernel_now = self.columns = None  # y until reduced; g until dy (tensor hooks)
        self.slot = self.output_nr = None
        self.m = 0

    def kernel(self, y: torch.Tensor) -> fused_reductions.LayerColumns | None:
        """The compiled reduction for CPU inputs like y, or None where the layer takes the torch path: not
        BatchNorm's formula, a per-element scale, not float32/float64, numba missing, or fused=False."""
        if y.dtype not in self.kernels:
            point = self.point
            fits = (self.capture.fused and point.bn_formula and y.dtype in (torch.float32, torch.float64)
                    and fused_reductions.available())
            per_group, per_element = group_scale(point, y) if fits else (None, None)
            self.kernels[y.dtype] = fused_reductions.LayerColumns(
                point.affine, point.axis, point.groups or 1, point.eps, len(FLOAT_COLUMNS)) \
                if fits and per_element is None else None
        return self.kernels[y.dtype]

    def reduce(self, g: torch.Tensor | None, dy: torch.Tensor) -> None:
        """Reduce the forward's (y, g, dy) into `columns` the moment dy exists: the normaliser's backward has
        just read y and g and written dy, so all three are in cache (after backward they are not)."""
        y, kernel = self.y, self.kernel_now
        if g is None or y is None:
            return  # no output gradient (collect() reports it), or reduced already (a retained graph)
        if g.requires_grad or dy.requires_grad:  # a backward with create_graph
            g, dy = g.detach(), dy.detach()
        if kernel is not None and y.dtype == g.dtype == dy.dtype and y.is_contiguous() and g.is_contiguous() \
                and dy.is_contiguous():  # as the kernel was chosen for (another dtype or layout: torch path)
            self.columns = kernel(y, g, dy)
        else:
            with torch.no_grad():
                self.columns = group_reductions(self.point, y, g, dy, self.capture._scratch, self.capture.fused)
        self.m = y.numel() // self.columns.shape[1]
        self.y = None

    def forward(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        y = inputs[0]
        if not (output.requires_grad and y.requires_grad and torch.is_grad_enabled()):
            return  # no backward can follow (e.g. evaluation under no_grad)
        self.forwards += 1
        self.y, self.columns = y.detach(), None
        self.kernel_now = (self.kernels[y.dtype] if y.dtype in self.kernels else self.kernel(y)) if y.is_cpu \
            else None
        node = output.grad_fn
        self.slot = _input_slot(node, y)
        handles = self.capture._handles
        if self.slot is not None:  # one node computes output from y (a native normaliser, a derived backward)
            self.output_nr = output.output_nr
            handles.append(node.register_hook(self.on_node))
        else:
            handles.append(y.register_hook(self.on_input_grad))
            handles.append(output.register_hook(self.on_output_grad))

    def on_node(self, grad_inputs: tuple, grad_outputs: tuple) -> None:
        self.reduce(grad_outputs[self.output_nr], grad_inputs[self.slot])

    def on_output_grad(self, grad: torch.Tensor) -> None:
        self.g = grad

    def on_input_grad(self, grad: torch.Tensor) -> None:
        self.reduce(self.g, grad)
        self.g = None


class BoundCapture:
    """Hooks every normalisation layer of `model` (`group_reductions.capture_points`: every registered normaliser,
    on any axis) while `active()`, then reduces per normalisation group.

        with capture.active():
            loss = loss_fn(model(x), target)
            loss.backward()
        rows = capture.collect(step)

    Exactly one forward and one backward per active() block; hooks exist only inside it. `fused` (default True):
    BatchNorm's formula on a CPU is reduced by the compiled kernel of `fused_reductions` where numba is installed;
    False keeps every layer on the torch reduction (the reference the tests compare the kernel with).
    """

    def __init__(self, model: nn.Module, fused: bool = True):
        self.points = capture_points(model)
        self.fused = fused
        self.layers = [point.module for point in self.points]  # the hooked modules, in forward order
        self._hooks = [_LayerHooks(self, point) for point in self.points]
        self._handles: list = []
        self._scratch = Scratch()  # kept across steps: the reductions reuse one float64 buffer
        self._layout: dict[tuple, dict[str, np.ndarray]] = {}  # (widths, ms, eps): _layout_rows

    @contextlib.contextmanager
    def active(self) -> Iterator[BoundCapture]:
        """Install the hooks; remove every one of them on exit, also when an exception escapes."""
        if self._handles:
            raise RuntimeError("BoundCapture.active() is already open; nest no captures")
        try:
            for hooks in self._hooks:
                hooks.reset()
                for kernel in hooks.kernels.values():
                    if kernel is not None:
                        kernel.refresh()  # a replaced scale parameter: read outside backward
                self._handles.append(hooks.point.module.register_forward_hook(hooks.forward))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def collect(self, step: int) -> dict[str, np.ndarray]:
        """Rows for every (layer, group) of the last active() block, then forget it.

        Keys: step, layer (index into `points`), channel (the group's index in the layer: the channel on the batch
        axis, sample * groups + group on a per-sample axis, the output unit in weight space; `norms.group_rows`),
        and `group_reductions.REDUCTION_COLUMNS`.
        """
        columns, widths, ms, eps = [], [], [], []
        for index, hooks in enumerate(self._hooks):
            forwards, layer_columns, m = hooks.forwards, hooks.columns, hooks.m
            hooks.reset()
            if forwards != 1:
                raise RuntimeError(
                    f"normalisation layer {index} ran {forwards} grad-enabled forwards inside active(); "
                    "run exactly one forward and one backward per active() block"
                )
            if layer_columns is None:
                raise RuntimeError(
                    f"normalisation layer {index} received no gradient; call loss.backward() inside active()"
                )
            columns.append(layer_columns)
            widths.append(layer_columns.shape[1])
            ms.append(m)
            eps.append(hooks.point.eps)
        if not columns:
            return empty_rows()
        if all(isinstance(c, np.ndarray) or c.device.type == "cpu" for c in columns):
            values = np.concatenate([np.asarray(c) for c in columns], axis=1)  # copies the kernels' reused outputs
        else:  # on a device: one device-to-host copy
            values = torch.cat([c.to(columns[0].device) for c in columns], dim=1).cpu().numpy()
        key = (tuple(widths), tuple(ms), tuple(eps))
        if key not in self._layout:  # the same at every captured step of a run: built once
            self._layout[key] = _layout_rows(widths, ms, eps)
        rows = self._layout[key].copy()
        rows["step"] = np.full(values.shape[1], step, dtype=np.int64)
        rows.update(zip(FLOAT_COLUMNS, values))
        return rows
