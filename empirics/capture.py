"""Capture, at chosen training steps, every BatchNorm channel's share of the thm4.1 quantities.

For one BN channel the "batch" is every value that channel normalises together: all (sample,
position) pairs of a (N, C, L) conv activation, so m = N * L; all (sample, h, w) of a (N, C, H, W)
Conv2d activation, m = N * H * W; or the N samples of a (N, C) dense activation. With y the BN
input of the channel, z = gamma * yhat + beta its output, g = dL/dz and dy = dL/dy (both from
autograd in the training-mode graph):

    mean  = <1, y> / m                 var = ||y - mean||^2 / m   (biased, as BN normalises)
    sigma = sqrt(var + eps)            yhat = (y - mean) / sigma
    g_sum = <1, g>   g_sq = ||g||^2    g_yhat = <g, yhat>         lhs = ||dy||^2

These are everything thm4.1's two sides need: lhs is the measured left side; the right side
(gamma^2 / sigma^2) (g_sq - g_sum^2 / m - c g_yhat^2) is assembled downstream for any c.

Capturing is observational: hooks hold detached references and return None (so no gradient is
changed), nothing the network uses is written, and no RNG is drawn. A layer's reductions run in
float64 inside backward, the moment its input gradient exists (BN's backward has just read y and g,
so all three are still in cache: on a CPU ~2.5x cheaper than reducing after backward), on one float64
copy of the three in a buffer reused across steps; collect() then copies (8, C) numbers per layer to
the host, all layers in one copy. Cost (`python -m verify bench`, VGG-1d default, one CPU thread, after the
faster pool made the plain step ~7% cheaper): a captured step is ~1.4 plain steps, ~0.1 of it the hooks and
~0.3 the float64 two-pass reductions, which are memory-bound (about 20 float64 passes over each layer's y, g
and dy; ~0.4 ms a layer). No host synchronisation happens before collect().
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

REDUCTION_KEYS = ("m", "eps", "gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs")
ROW_KEYS = ("step", "layer", "channel", *REDUCTION_KEYS)
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


_FLOAT_KEYS = ("gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs")


class _Scratch:
    """A float64 buffer reused from call to call. On a CPU a fresh multi-megabyte tensor is fresh pages
    from the OS, zeroed and faulted in on every call: measured 5-10x the cost of the arithmetic."""

    def __init__(self):
        self._flat = torch.empty(0, dtype=torch.float64)

    def views(self, count: int, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]:
        size = math.prod(shape)
        if self._flat.numel() < count * size or self._flat.device != device:
            self._flat = torch.empty(count * size, dtype=torch.float64, device=device)
        return [self._flat[k * size:(k + 1) * size].view(shape) for k in range(count)]


def _reduction_tensors(y: torch.Tensor, g: torch.Tensor, dy: torch.Tensor, gamma: torch.Tensor, eps: float,
                       scratch: _Scratch) -> torch.Tensor:
    """(len(_FLOAT_KEYS), C) float64 on the tensors' device: channel_reductions' float columns.

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


def _reduction_arrays(columns: torch.Tensor, m: int, eps: float) -> dict[str, np.ndarray]:
    """The dict of channel_reductions from _reduction_tensors' output (one device-to-host copy)."""
    values = columns.cpu().numpy()
    channels = values.shape[1]
    return {"m": np.full(channels, m, dtype=np.int64), "eps": np.full(channels, eps, dtype=np.float64),
            **dict(zip(_FLOAT_KEYS, values))}


def channel_reductions(y, g, dy, gamma, eps: float) -> dict[str, np.ndarray]:
    """Per-channel float64 reductions of one BN layer's input y, output-gradient g, input-gradient dy.

    y, g, dy: (N, C), (N, C, L) or (N, C, H, W), tensors or arrays of one shape; gamma: (C,); eps:
    BN's eps. Statistics are over every axis but the channel axis, with biased variance and eps
    inside the square root, as BatchNorm1d/2d compute them in train() mode. Returns 1-D arrays of
    length C keyed by REDUCTION_KEYS (m as int64, the rest float64).
    """
    y, g, dy = _tensor(y, "y"), _tensor(g, "g"), _tensor(dy, "dy")  # (N, C, *spatial)
    gamma = gamma if isinstance(gamma, torch.Tensor) else torch.as_tensor(np.asarray(gamma, dtype=np.float64))
    return _reduction_arrays(_reduction_tensors(y, g, dy, gamma, eps, _Scratch()), y.numel() // y.shape[1], eps)


def empty_rows() -> dict[str, np.ndarray]:
    """Capture columns with no rows (int64 ids and m, float64 reductions)."""
    return {key: np.zeros(0, dtype=np.int64 if key in INT_KEYS else np.float64) for key in ROW_KEYS}


def concat_rows(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack the row dicts of several collect() calls into one."""
    if not chunks:
        return empty_rows()
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in ROW_KEYS}


@dataclass
class _LayerRecord:
    """One forward pass of one BN layer: its input until backward reaches it, then its reductions."""

    y: torch.Tensor | None  # BN input, detached; dropped once reduced
    gamma: torch.Tensor
    eps: float
    g: torch.Tensor | None = None  # dL/d(BN output), until reduced
    columns: torch.Tensor | None = None  # _reduction_tensors(y, g, dL/d(BN input)), on the device
    m: int = 0


class BoundCapture:
    """Hooks every BatchNorm1d/2d layer of `model` while `active()`, then reduces per channel.

        with capture.active():
            loss = loss_fn(model(x), target)
            loss.backward()
        rows = capture.collect(step)

    Exactly one forward and one backward per active() block; hooks exist only inside it.
    """

    def __init__(self, model: nn.Module):
        self.layers = batchnorm_layers(model)
        self._records: dict[int, list[_LayerRecord]] = {}
        self._handles: list = []
        self._scratch = _Scratch()  # kept across steps: the reductions reuse one float64 buffer

    def _forward_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            (y,) = inputs
            if not (torch.is_grad_enabled() and y.requires_grad and output.requires_grad):
                return  # no backward can follow (e.g. evaluation under no_grad)
            gamma = module.weight.detach() if module.weight is not None else torch.ones(module.num_features)
            record = _LayerRecord(y=y.detach(), gamma=gamma, eps=float(module.eps))
            self._records.setdefault(index, []).append(record)

            def on_output_grad(grad: torch.Tensor) -> None:
                record.g = grad.detach()

            def on_input_grad(grad: torch.Tensor) -> None:
                # BN's backward has just read y and g and written dy: reduce now, while all three are
                # in cache (after backward they are not), and keep only the (8, C) result
                if record.g is None:
                    return  # no output gradient: collect() reports it
                with torch.no_grad():
                    record.columns = _reduction_tensors(record.y, record.g, grad.detach(), record.gamma, record.eps,
                                                        self._scratch)
                record.m = record.y.numel() // record.y.shape[1]
                record.y = record.g = None

            self._handles.append(y.register_hook(on_input_grad))
            self._handles.append(output.register_hook(on_output_grad))

        return hook

    @contextlib.contextmanager
    def active(self) -> Iterator[BoundCapture]:
        """Install the hooks; remove every one of them on exit, also when an exception escapes."""
        if self._handles:
            raise RuntimeError("BoundCapture.active() is already open; nest no captures")
        self._records = {}
        try:
            for index, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_hook(self._forward_hook(index)))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def collect(self, step: int) -> dict[str, np.ndarray]:
        """Rows for every (layer, channel) of the last active() block, then forget it.

        Keys: step, layer (index into batchnorm_layers), channel, and channel_reductions' keys.
        """
        columns, widths, ms, eps = [], [], [], []
        for index in range(len(self.layers)):
            records = self._records.get(index, [])
            if len(records) != 1:
                raise RuntimeError(
                    f"BN layer {index} ran {len(records)} grad-enabled forwards inside active(); "
                    "run exactly one forward and one backward per active() block"
                )
            (record,) = records
            if record.columns is None:
                raise RuntimeError(
                    f"BN layer {index} received no gradient; call loss.backward() inside active()"
                )
            columns.append(record.columns)
            widths.append(record.columns.shape[1])
            ms.append(record.m)
            eps.append(record.eps)
        self._records = {}
        if not columns:
            return empty_rows()
        values = torch.cat([c.to(columns[0].device) for c in columns], dim=1).cpu().numpy()  # one device-to-host copy
        layer = np.repeat(np.arange(len(widths), dtype=np.int64), widths)
        return {"step": np.full(len(layer), step, dtype=np.int64), "layer": layer,
                "channel": np.concatenate([np.arange(width, dtype=np.int64) for width in widths]),
                "m": np.repeat(np.asarray(ms, dtype=np.int64), widths),
                "eps": np.repeat(np.asarray(eps, dtype=np.float64), widths), **dict(zip(_FLOAT_KEYS, values))}
