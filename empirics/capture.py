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
changed), nothing is done in place, no RNG is drawn, and all reductions run after backward in
float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

REDUCTION_KEYS = ("m", "eps", "gamma", "mean", "var", "sigma", "g_sum", "g_sq", "g_yhat", "lhs")
ROW_KEYS = ("step", "layer", "channel", *REDUCTION_KEYS)
INT_KEYS = ("step", "layer", "channel", "m")


def _float64(values) -> np.ndarray:
    """A tensor or array as a float64 numpy array, converted before any arithmetic."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _channels_by_rows(values, name: str) -> np.ndarray:
    """(N, C), (N, C, L) or (N, C, H, W) -> float64 (C, m): one row per channel, its whole BN batch."""
    array = _float64(values)
    if array.ndim == 2:  # (batch, channels)
        return array.T
    if array.ndim in (3, 4):  # (batch, channels, *spatial): a channel's batch is all (sample, position)
        return np.moveaxis(array, 1, 0).reshape(array.shape[1], -1)
    raise ValueError(f"{name} has shape {array.shape}; BatchNorm1d/2d inputs are (N, C), (N, C, L) "
                     "or (N, C, H, W)")


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm1d and BatchNorm2d layers in forward order, also inside noisy BN.

    For 1-D models exactly `models.norm_layers` (BatchNorm1d only), so layer indices are unchanged.
    """
    return [module for module in model.modules() if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))]


def channel_reductions(y, g, dy, gamma, eps: float) -> dict[str, np.ndarray]:
    """Per-channel float64 reductions of one BN layer's input y, output-gradient g, input-gradient dy.

    y, g, dy: (N, C), (N, C, L) or (N, C, H, W), tensors or arrays of one shape; gamma: (C,); eps:
    BN's eps. Statistics are over every axis but the channel axis, with biased variance and eps
    inside the square root, as BatchNorm1d/2d compute them in train() mode. Returns 1-D arrays of
    length C keyed by REDUCTION_KEYS (m as int64, the rest float64).
    """
    y_rows = _channels_by_rows(y, "y")  # (C, m)
    g_rows = _channels_by_rows(g, "g")
    dy_rows = _channels_by_rows(dy, "dy")
    if not (y_rows.shape == g_rows.shape == dy_rows.shape):
        raise ValueError(f"y, g, dy must share one shape; got {np.shape(y)}, {np.shape(g)}, {np.shape(dy)}")
    channels, m = y_rows.shape
    gamma_arr = _float64(gamma).reshape(-1)
    if gamma_arr.shape != (channels,):
        raise ValueError(f"gamma has {gamma_arr.shape[0]} entries for {channels} channels; give one per channel")

    mean = y_rows.mean(axis=1)
    centred = y_rows - mean[:, None]
    var = (centred**2).mean(axis=1)  # biased (/m), as BN normalises
    sigma = np.sqrt(var + eps)
    yhat = centred / sigma[:, None]
    return {
        "m": np.full(channels, m, dtype=np.int64),
        "eps": np.full(channels, eps, dtype=np.float64),
        "gamma": gamma_arr,
        "mean": mean,
        "var": var,
        "sigma": sigma,
        "g_sum": g_rows.sum(axis=1),
        "g_sq": (g_rows**2).sum(axis=1),
        "g_yhat": (g_rows * yhat).sum(axis=1),
        "lhs": (dy_rows**2).sum(axis=1),
    }


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
    """One forward pass of one BN layer: its input, and the gradients once backward has run."""

    y: torch.Tensor  # BN input, detached
    gamma: torch.Tensor
    eps: float
    dy: torch.Tensor | None = None  # dL/d(BN input)
    g: torch.Tensor | None = None  # dL/d(BN output)


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

    def _forward_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            (y,) = inputs
            if not (torch.is_grad_enabled() and y.requires_grad and output.requires_grad):
                return  # no backward can follow (e.g. evaluation under no_grad)
            gamma = module.weight.detach() if module.weight is not None else torch.ones(module.num_features)
            record = _LayerRecord(y=y.detach(), gamma=gamma, eps=float(module.eps))
            self._records.setdefault(index, []).append(record)

            def on_input_grad(grad: torch.Tensor) -> None:
                record.dy = grad.detach()

            def on_output_grad(grad: torch.Tensor) -> None:
                record.g = grad.detach()

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
        chunks = []
        for index in range(len(self.layers)):
            records = self._records.get(index, [])
            if len(records) != 1:
                raise RuntimeError(
                    f"BN layer {index} ran {len(records)} grad-enabled forwards inside active(); "
                    "run exactly one forward and one backward per active() block"
                )
            (record,) = records
            if record.dy is None or record.g is None:
                raise RuntimeError(
                    f"BN layer {index} received no gradient; call loss.backward() inside active()"
                )
            reductions = channel_reductions(record.y, record.g, record.dy, record.gamma, record.eps)
            channels = len(reductions["m"])
            chunk = {
                "step": np.full(channels, step, dtype=np.int64),
                "layer": np.full(channels, index, dtype=np.int64),
                "channel": np.arange(channels, dtype=np.int64),
                **reductions,
            }
            chunks.append(chunk)
        self._records = {}
        return concat_rows(chunks)
