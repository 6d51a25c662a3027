"""The filter-normalised landscape (Li et al. 2018): every filter of a direction has its weights' filter norm, biases
and BN parameters are not moved, the losses are the training-mode losses at the displaced points, and nothing the
run depends on changes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empirics.filter_landscape import filter_landscape, filter_normalised_direction
from empirics.landscape import parameter_dict
from empirics.sharpness import probe_generator
from tests.test_empirics_measurements import _assert_same_state, _state
from tests.test_empirics_sharpness import step_forward, tagged_batch, tagged_net


@pytest.mark.parametrize("norm", ["none", "batchnorm", "weightnorm"])
def test_each_filter_of_a_direction_has_the_norm_of_the_weights_filter_and_one_dimensional_parameters_are_still(norm):
    model = tagged_net(norm)
    params = parameter_dict(model)
    direction = filter_normalised_direction(params, probe_generator(0, 0, "filter_landscape"))
    assert direction.keys() == params.keys()
    for name, p in params.items():
        d = direction[name]
        assert d.shape == p.shape and d.dtype == p.dtype
        if p.dim() <= 1:  # biases, BN gamma / beta, weight-space scales: Li et al.'s ignore="biasbn"
            assert torch.count_nonzero(d) == 0, name
        else:  # one filter per output unit: W[j] of (out, in, kernel) or (out, in)
            np.testing.assert_allclose(d.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1), rtol=1e-13, err_msg=name)
            assert not torch.allclose(d / d.norm(), p / p.norm()), name  # a random direction, not the weights


def _reference_loss(model, d1, d2, a, b, x, labels):
    """A deep copy moved by hand, BN on batch statistics (no tracking), called as a module."""
    moved = copy.deepcopy(model).train()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p += a * d1[name] + b * d2[name]
    for module in moved.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
        if hasattr(module, "frozen"):
            module.frozen = True
    with torch.no_grad():
        return float(F.cross_entropy(moved(x), labels))


@pytest.mark.parametrize("norm", ["none", "batchnorm", "noisy_batchnorm"])
def test_landscape_losses_are_the_training_mode_losses_at_the_displaced_points(norm):
    model = tagged_net(norm)
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    result = filter_landscape(model, F.cross_entropy, x, labels, points=5, grid=3,
                              generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)  # the same draws, in the same order: d1 then d2
    params = parameter_dict(model)
    d1, d2 = filter_normalised_direction(params, generator), filter_normalised_direction(params, generator)
    np.testing.assert_allclose(result["alpha"], np.linspace(-1, 1, 5), rtol=0)
    for a, loss in zip(result["alpha"], result["loss_1d"]):
        assert loss == pytest.approx(_reference_loss(model, d1, d2, a, 0.0, x, labels), rel=1e-12)
    for i, a in enumerate(result["grid_alpha"]):
        for j, b in enumerate(result["grid_alpha"]):
            assert result["loss_2d"][i, j] == pytest.approx(_reference_loss(model, d1, d2, a, b, x, labels), rel=1e-12)
    assert result["loss_2d"][1, 1] == pytest.approx(result["loss0"], rel=1e-12) == result["loss_1d"][2]
    assert abs(result["direction_cos"]) < 0.5  # two independent draws: nearly orthogonal in n ~ 60 dimensions


@pytest.mark.parametrize("norm", ["batchnorm", "noisy_batchnorm"])
def test_the_landscape_changes_nothing_and_draws_only_from_its_own_generator(norm):
    model = tagged_net(norm)
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    before = _state(model)
    first = filter_landscape(model, F.cross_entropy, x, labels, points=3, grid=2,
                             generator=probe_generator(0, 5, "filter_landscape"))
    _assert_same_state(before, _state(model))
    again = filter_landscape(model, F.cross_entropy, x, labels, points=3, grid=2,
                             generator=probe_generator(0, 5, "filter_landscape"))
    np.testing.assert_array_equal(first["loss_2d"], again["loss_2d"])
    other = filter_landscape(model, F.cross_entropy, x, labels, points=3, grid=2,
                             generator=probe_generator(1, 5, "filter_landscape"))
    assert not np.array_equal(first["loss_1d"], other["loss_1d"])  # another run seed: other directions


def test_bad_grid_sizes_are_rejected_with_the_rule():
    with pytest.raises(ValueError, match="radius"):
        filter_landscape(tagged_net(), F.cross_entropy, *tagged_batch(), points=3, grid=3, radius=0.0,
                         generator=torch.Generator())
