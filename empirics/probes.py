"""Probes during training: which measurement runs at which step, and the tables they fill.

A `ProbeRecorder` is told by the training loop where it stands (after the step's backward, before
the optimiser update; and after the update, for ICS) and calls the pure measurement functions of
`landscape`, `ics`, `curvature`, `weight_bounds` and `activations` when their frequency in
`ProbeConfig` is due. None of them changes parameters, gradients, buffers or RNG streams, so a run
with probes follows the same trajectory as one without (tested).

Tables (saved as `probes.npz`, keys `<probe>/<column>`):
    landscape/  step, grad_norm, loss0, loss_range, grad_change_min/max, beta_eff, and (P, E) eta,
                loss, grad_change over the step-size grid
    ics/        step, and (P, layers) ics_l2, ics_cos, grad_norm, shifted_grad_norm
    curvature/  one row per (step, layer, channel): thm4.2 quadratic forms and capture reductions
    weights/    one row per (step, layer, channel): thm4.4 terms (||dL/dW_j||^2, ||X||_2^2, ||dL/dy_j||^2)
    hist/       step, and (P, layers, bins) counts, (P, layers, C) mean, var; edges (layers, bins + 1)
    sharpness/  (beyond the paper) step, progress_loss, level (index into sharpness_levels), trigger_level, lr, and
                every column of `sharpness.sharpness_probe` (eigenvalues (P, k), lambda_max, lambda_eff, trace, ...)
    filter_landscape/  (beyond the paper) step, progress_loss, and (P, points) alpha, loss_1d, (P, grid, grid) loss_2d
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import activations, curvature, filter_landscape, ics, landscape, sharpness, weight_bounds
from .config import ProbeConfig
from .group_reductions import capture_points, normalised_layers
from .norms import norm_slots

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


SMOOTHING_STEPS = 5  # the progress loss: mean of the last 5 training-batch losses (5 logged points, verify.training)


class ProgressTrigger:
    """When a run's smoothed training loss first reaches each of `levels` x (its zero-output loss).

    The smoothed loss at step s is the mean of the batch losses of steps s-4..s (fewer at the start);
    the zero-output loss, loss_fn(0, target) on the first step's batch, is the loss of a network that
    outputs zeros: ln(10) for ten-class cross-entropy, mean ||A x||^2 for the deep linear network. It
    makes the levels one list for every task. Its whole state is plain data (checkpointed with the run).
    """

    def __init__(self, levels: tuple[float, ...]):
        self.levels = tuple(sorted(levels, reverse=True))
        self.recent: list[float] = []
        self.reference: float | None = None
        self.next_level = 0

    def smoothed(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def update(self, loss: float | None, zero_output_loss) -> int:
        """Record this step's loss; the index of the deepest level newly reached, or -1."""
        if loss is None or not self.levels:
            return -1
        if self.reference is None:
            self.reference = float(zero_output_loss())
        self.recent = [*self.recent[-(SMOOTHING_STEPS - 1):], float(loss)]
        reached = -1
        while self.next_level < len(self.levels) and self.smoothed() <= self.levels[self.next_level] * self.reference:
            reached = self.next_level
            self.next_level += 1
        return reached

    def state(self) -> dict:
        return {"recent": list(self.recent), "reference": self.reference, "next_level": self.next_level}

    def load(self, state: dict) -> None:
        self.recent, self.reference, self.next_level = list(state["recent"]), state["reference"], state["next_level"]


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv/Linear layer each capture point normalises (thm4.4: y = X W feeds the normaliser), in the capture
    points' order: the layer before the slot, or in weight space the reparametrised layer itself."""
    return normalised_layers(model)


class ProbeRecorder:
    def __init__(self, probes: ProbeConfig, model: nn.Module, loss_fn: LossFn, lr: float, seed: int = 0):
        self.probes, self.model, self.loss_fn, self.lr = probes, model, loss_fn, lr
        self.seed = seed  # seeds the extension probes' own generators (sharpness.probe_generator), never the run's
        self.groups = ics.layer_groups(model)
        self.tables: dict[str, list[dict]] = {"landscape": [], "ics": [], "curvature": [], "weights": [], "hist": []}
        self._edges: list[np.ndarray] | None = None
        self.trigger = ProgressTrigger(probes.progress_levels)
        sharpness.check_levels(probes.sharpness_levels, self.trigger.levels)
        self._comparison: dict | None = None  # this step's {"step", "progress_loss", "level"} when it probes

    def _comparison_due(self, every: int, step: int) -> bool:
        """A landscape or ICS probe (`every` its own period) runs at this step: scheduled, early, or triggered."""
        p = self.probes
        if not every:
            return False
        early = p.early_every > 0 and step < p.early_until and step % p.early_every == 0
        return _due(every, step) or early or (self._comparison is not None and self._comparison["level"] >= 0)

    def _zero_output_loss(self, x: torch.Tensor, target: torch.Tensor) -> float:
        with landscape.training_function(self.model), torch.no_grad():
            return float(self.loss_fn(torch.zeros_like(self.model(x)), target))

    def wants_snapshot(self, step: int) -> bool:
        return self._comparison_due(self.probes.ics_every, step)

    def before_update(self, step: int, x: torch.Tensor, target: torch.Tensor, loss: float | None = None) -> None:
        """Measurements at W^t on this step's batch; .grad holds this step's gradient, `loss` its loss."""
        p, model = self.probes, self.model
        level = self.trigger.update(loss, lambda: self._zero_output_loss(x, target))
        # every comparison row says where the run stood: the smoothed loss and the level it triggered (-1: none)
        self._comparison = {"step": step, "progress_loss": self.trigger.smoothed() if self.trigger.recent
                            else float("nan") if loss is None else float(loss), "level": level}
        if self._comparison_due(p.landscape_every, step):
            grads = {name: param.grad for name, param in model.named_parameters()}
            result = landscape.landscape_probe(model, self.loss_fn, x, target, self.lr, p.landscape_multipliers,
                                               grads=grads, loss0=loss)
            self.tables["landscape"].append({**self._comparison, **result})
        if _due(p.curvature_every, step):
            # the layers with BatchNorm's formula (thm4.2 is its statement), numbered as the capture numbers them
            points = capture_points(model)
            layers = [index for index, point in enumerate(points) if point.bn_formula]
            chosen = sorted({layers[i % len(layers)] for i in p.curvature_layers}) if p.curvature_layers and layers \
                else layers
            for index in chosen:
                rows = curvature.activation_curvature(model, points[index].module, x, target, self.loss_fn)
                self.tables["curvature"].append(_rows(step, index, rows))
        if _due(p.weight_bounds_every, step):
            layers = _weight_layers(model)
            for index, terms in enumerate(weight_bounds.weight_bound_terms_of_layers(model, layers, x, target,
                                                                                     self.loss_fn) if layers else ()):
                self.tables["weights"].append(_rows(step, index, terms))
        if _due(p.histogram_every, step):
            modules = norm_slots(model)  # the normaliser's output (noise included), or the conv at its place
            if self._edges is None:  # fixed once per run, from the first histogram step
                with landscape.training_function(model), torch.no_grad():
                    kept = []
                    handles = [m.register_forward_hook(lambda _m, _a, out: kept.append(out.detach())) for m in modules]
                    try:
                        model(x)
                    finally:
                        for handle in handles:
                            handle.remove()
                self._edges = [activations.bin_edges_from(out) for out in kept]
            summaries = activations.activation_summary(model, x, modules, self._edges)
            self.tables["hist"].append({"step": step, "summaries": summaries})
        self._extension_probes(step, x, target)

    def _extension_probes(self, step: int, x: torch.Tensor, target: torch.Tensor) -> None:
        """Beyond the paper (issue 16): sharpness at its schedule, the filter-normalised landscape at its steps."""
        p, rows = self.probes, self.tables.setdefault("sharpness", [])
        due, level = sharpness.sharpness_due(p.sharpness_every, p.sharpness_levels, self.trigger.levels, step,
                                             self._comparison["level"], rows)
        if due:
            n = p.sharpness_batch or x.shape[0]
            generator = sharpness.probe_generator(self.seed, step, "lanczos")
            result = sharpness.sharpness_probe(
                self.model, self.loss_fn, x[:n], target[:n], generator=generator, top_k=p.sharpness_top_k,
                iterations=p.sharpness_iterations, hutchinson_probes=p.hutchinson_probes, blocks=p.sharpness_blocks)
            rows.append({**self._comparison, "level": level, "trigger_level": self._comparison["level"], "lr": self.lr,
                         **result})
        if step in p.filter_landscape_steps:
            n = p.filter_landscape_batch or x.shape[0]
            result = filter_landscape.filter_landscape(
                self.model, self.loss_fn, x[:n], target[:n], points=p.filter_landscape_points,
                grid=p.filter_landscape_grid, generator=sharpness.probe_generator(self.seed, step, "filter_landscape"))
            self.tables.setdefault("filter_landscape", []).append({**self._comparison, **result})

    def after_update(self, step: int, x: torch.Tensor, target: torch.Tensor, before: dict, grads: dict) -> None:
        """ICS of Definition 2.1: `before` = W^t, the model now holds W^{t+1}, `grads` = G at W^t."""
        update = ics.observed_update(before, self.model)
        result = ics.ics(self.model, self.loss_fn, x, target, self.groups, update, grads=grads, params=before,
                         measure=self.probes.ics_layers or None)
        self.tables["ics"].append({**self._comparison, **result})

    def state_dict(self) -> dict:
        """Everything the recorder has accumulated (a checkpoint restores it with load_state_dict)."""
        return {"tables": self.tables, "edges": self._edges, "trigger": self.trigger.state()}

    def load_state_dict(self, state: dict) -> None:
        self.tables, self._edges = state["tables"], state["edges"]
        self.trigger.load(state["trigger"])

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything recorded, as flat `<probe>/<column>` arrays for np.savez."""
        out: dict[str, np.ndarray] = {}
        for name in ("landscape", "ics"):
            records = self.tables[name]
            if records:
                for key in records[0]:
                    out[f"{name}/{key}"] = np.asarray([r[key] for r in records])
        for name in ("curvature", "weights"):
            chunks = self.tables[name]
            if chunks:
                for key in chunks[0]:
                    out[f"{name}/{key}"] = np.concatenate([c[key] for c in chunks])
        for name in ("sharpness", "filter_landscape"):  # beyond the paper (issue 16)
            out.update(sharpness.table_arrays(name, self.tables.get(name, [])))
        if self.tables["hist"]:
            records = self.tables["hist"]
            out["hist/step"] = np.asarray([r["step"] for r in records])
            for layer, edges in enumerate(self._edges):
                out[f"hist/edges_{layer}"] = edges
                for key in ("counts", "mean", "var"):
                    out[f"hist/{key}_{layer}"] = np.stack([r["summaries"][layer][key] for r in records])
        return out


def _rows(step: int, layer: int, columns: dict) -> dict[str, np.ndarray]:
    """Per-channel columns of one layer at one step, with step/layer/channel ids (scalars broadcast)."""
    channels = max(np.size(v) for v in columns.values())
    rows = {"step": np.full(channels, step, dtype=np.int64), "layer": np.full(channels, layer, dtype=np.int64),
            "channel": np.arange(channels, dtype=np.int64)}
    for key, value in columns.items():
        value = np.asarray(value)
        rows[key] = value if value.size == channels else np.full(channels, value)
    return rows
