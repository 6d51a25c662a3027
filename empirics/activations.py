"""Activation distributions over training (paper Fig. 1c, Fig. 2): histograms and per-unit moments.

For the output a of a chosen module, (N, C) or (N, C, L), on one batch in train() mode:

    counts[k]  = #{ a_i in [edges[k], edges[k+1]) }  (last bin closed), over every value of the layer
    below / above / nonfinite = values under edges[0], over edges[-1], or NaN/inf (so no value is lost)
    mean[c]    = (1/m) sum a_c                        over the channel's m = N * L (or N) values
    var[c]     = (1/m) sum (a_c - mean[c])^2          biased, like BN's normalising variance
                                                      (inf or nan for a unit holding a non-finite value)
    quantiles  = the values at QUANTILE_LEVELS of all finite values (for percentile-band plots)

Bin edges are fixed once per run, so histograms of different steps are comparable: take them from
the first measured step with `bin_edges_from` (or give your own) and store them with the run.
Statistics are computed in float64 on the activations' device; only the summaries are copied to the host.

Drift over time (`distribution_drift`): from the per-step moment arrays (T, C), the mean over units
of |mean_t - mean_{t-1}| and |var_t - var_{t-1}|, divided by the step gap when steps are given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .landscape import training_function

QUANTILE_LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _channel_rows(activations: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, C[, L] or [, H, W]) -> float64 (C, m) on the activations' own device: each unit's values over
    samples (and positions). Everything below reduces there and only the summaries leave the device (a
    VGG-16 layer holds 8M values: copying them to the host and binning them there cost ~100 plain GPU steps)."""
    tensor = (activations.detach() if isinstance(activations, torch.Tensor)
              else torch.from_numpy(np.asarray(activations, dtype=np.float64)))
    if tensor.dim() not in (2, 3, 4):
        raise ValueError(f"activations have shape {tuple(tensor.shape)}; expected (N, C), (N, C, L) or (N, C, H, W)")
    return tensor.movedim(1, 0).reshape(tensor.shape[1], -1).double()


def _quantiles(values: torch.Tensor, levels) -> np.ndarray:
    """NumPy's default ('linear') quantiles of 1-D finite values: interpolate between the order statistics at
    floor and ceil of (n - 1) q. Only those order statistics are found: on a CPU by one np.partition on the
    ranks needed (introselect: the same values a full sort puts there, without sorting the layer; the histogram
    probe's share of a BN run is `hist` in the bench's run profile), elsewhere by torch.sort on the device (no
    copy of the layer to the host)."""
    position = np.asarray(levels, dtype=np.float64) * (values.numel() - 1)
    low, high = np.floor(position).astype(np.int64), np.ceil(position).astype(np.int64)
    if values.device.type == "cpu":
        ranks = np.unique(np.concatenate([low, high]))
        ordered = np.partition(values.numpy(), ranks)
        low_values, high_values = ordered[low], ordered[high]
    else:
        ordered = torch.sort(values).values
        low_values, high_values = (ordered[torch.from_numpy(index).to(values.device)].cpu().numpy()
                                   for index in (low, high))
    return low_values + (high_values - low_values) * (position - low)


def bin_edges_from(activations, bins: int = 64, coverage: float = 0.998, widen: float = 3.0) -> np.ndarray:
    """bins + 1 edges symmetric about 0: +-widen * (the largest |value| of the central `coverage` mass).

    The widening leaves room for the distribution to drift over the run; values outside still
    count, in `below` / `above`.
    """
    values = _channel_rows(activations).ravel()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        raise ValueError("no finite activation to choose bin edges from; give explicit edges")
    tail = (1.0 - coverage) / 2.0
    low, high = _quantiles(values, (tail, 1.0 - tail))
    reach = max(abs(low), abs(high))
    half_width = widen * reach if reach > 0 else 1.0
    return np.linspace(-half_width, half_width, bins + 1)


def summarize_activations(activations, bin_edges) -> dict:
    """Histogram, per-unit moments and quantiles of one layer's activations (module doc)."""
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"bin_edges must be at least 2 strictly increasing values; got {edges}")
    rows = _channel_rows(activations)  # (C, m)
    values = rows.ravel()
    finite = values[torch.isfinite(values)]
    edge_tensor = torch.from_numpy(edges).to(finite.device)
    # np.histogram's bins: [e_k, e_k+1), the last one closed; values outside go to below / above
    inside = finite[(finite >= edge_tensor[0]) & (finite <= edge_tensor[-1])]
    index = (torch.searchsorted(edge_tensor, inside, right=True) - 1).clamp(max=len(edges) - 2)
    counts = torch.bincount(index, minlength=len(edges) - 1)
    mean, var = rows.mean(dim=1), rows.var(dim=1, unbiased=False)  # a diverged unit: inf/nan, not an error
    return {
        "counts": counts.cpu().numpy().astype(np.int64),
        "below": int((finite < edge_tensor[0]).sum()),
        "above": int((finite > edge_tensor[-1]).sum()),
        "nonfinite": int(values.numel() - finite.numel()),
        "mean": mean.cpu().numpy(),
        "var": var.cpu().numpy(),
        "quantiles": (_quantiles(finite, QUANTILE_LEVELS) if finite.numel()
                      else np.full(len(QUANTILE_LEVELS), np.nan)),
    }


def activation_summary(model: nn.Module, x: torch.Tensor, modules: Sequence[nn.Module],
                       bin_edges) -> list[dict]:
    """`summarize_activations` of each module's output on batch x, one train()-mode forward without grad.

    bin_edges: one edge array for every module, or a sequence with one array per module. Each module
    must run exactly once per forward. To avoid the extra forward, hook the training forward instead
    and call `summarize_activations` on what the hook kept.
    """
    edges = [bin_edges] * len(modules) if np.ndim(bin_edges[0]) == 0 else list(bin_edges)
    if len(edges) != len(modules):
        raise ValueError(f"{len(edges)} bin-edge arrays for {len(modules)} modules; give one, or one per module")
    outputs: dict[int, list[torch.Tensor]] = {index: [] for index in range(len(modules))}
    handles = [module.register_forward_hook(lambda _m, _a, out, index=index: outputs[index].append(out.detach()))
               for index, module in enumerate(modules)]
    try:
        with training_function(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    summaries = []
    for index, module in enumerate(modules):
        if len(outputs[index]) != 1:
            raise RuntimeError(f"{module!r} ran {len(outputs[index])} times in one forward; it must run once")
        summaries.append(summarize_activations(outputs[index][0], edges[index]))
    return summaries


def distribution_drift(means, variances, steps=None) -> dict:
    """Per consecutive pair of measured steps: mean over units of |Delta mean| and |Delta var| (per step).

    means, variances: (T, C) arrays, row t the per-unit moments at the t-th measured step; steps:
    optional (T,) step numbers, whose gaps divide the changes (a per-step rate). Returns (T-1,)
    float64 arrays mean_change and var_change.
    """
    means, variances = np.asarray(means, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    if means.ndim != 2 or means.shape != variances.shape:
        raise ValueError(f"means {means.shape} and variances {variances.shape} must both be (steps, units)")
    gaps = np.ones(means.shape[0] - 1) if steps is None else np.diff(np.asarray(steps, dtype=np.float64))
    if gaps.shape != (means.shape[0] - 1,) or np.any(gaps <= 0):
        raise ValueError(f"steps must be {means.shape[0]} strictly increasing numbers; got {steps}")
    return {
        "mean_change": np.abs(np.diff(means, axis=0)).mean(axis=1) / gaps,
        "var_change": np.abs(np.diff(variances, axis=0)).mean(axis=1) / gaps,
    }
