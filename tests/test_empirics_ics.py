"""Internal covariate shift (Definition 2.1) against explicit deepcopy loops, float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from empirics.config import ModelConfig, Norm
from empirics.ics import ics, layer_groups, observed_update, sgd_update
from empirics.models import build_model
from empirics.noisy import NoisyIdentity
from tests.test_empirics_measurements import (
    NORMS,
    tiny_batch,
    tiny_net,
    training_step_forward,
)

RTOL = 1e-10  # float64 both routes; summation order only
LR = 0.3


def _frozen_copy(model):
    clone = copy.deepcopy(model).train()
    for module in clone.modules():
        if isinstance(module, NoisyIdentity):
            module.frozen = True
    return clone


def _reference_ics(model, x, labels, groups, update):
    """For each layer i: a deep copy with the earlier groups moved by hand, then loss.backward()."""
    def group_grad(clone, group):
        clone.zero_grad(set_to_none=True)
        F.cross_entropy(clone(x), labels).backward()
        named = dict(clone.named_parameters())
        return torch.cat([named[name].grad.reshape(-1) for name in group])

    l2, cos = [], []
    for i, group in enumerate(groups):
        g = group_grad(_frozen_copy(model), group)
        shifted = _frozen_copy(model)
        named = dict(shifted.named_parameters())
        with torch.no_grad():
            for earlier in groups[:i]:
                for name in earlier:
                    named[name] += update[name]
        g_shift = group_grad(shifted, group)
        l2.append(float(torch.linalg.vector_norm(g - g_shift)))
        cos.append(float(g @ g_shift / (torch.linalg.vector_norm(g) * torch.linalg.vector_norm(g_shift))))
    return np.array(l2), np.array(cos)


@pytest.mark.parametrize("norm", NORMS)
def test_ics_matches_deepcopy_loops_for_sgd_updates(norm):
    model = tiny_net(norm)
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    groups = layer_groups(model)
    update = sgd_update(dict(model.named_parameters()), {n: p.grad for n, p in model.named_parameters()}, LR)
    result = ics(model, F.cross_entropy, x, labels, groups, update)
    expected_l2, expected_cos = _reference_ics(model, x, labels, groups, update)
    np.testing.assert_allclose(result["ics_l2"], expected_l2, rtol=RTOL, atol=1e-13)
    np.testing.assert_allclose(result["ics_cos"], expected_cos, rtol=RTOL)
    assert result["ics_l2"][0] == 0.0 and result["ics_cos"][0] == pytest.approx(1.0, abs=1e-15)
    assert np.all(result["ics_l2"][1:] > 0)  # a real step moves later gradients


def test_given_grads_and_recomputed_grads_agree():
    model = tiny_net("batchnorm")
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    grads = {n: p.grad for n, p in model.named_parameters()}
    update = sgd_update(dict(model.named_parameters()), grads, LR)
    given = ics(model, F.cross_entropy, x, labels, layer_groups(model), update, grads=grads)
    recomputed = ics(model, F.cross_entropy, x, labels, layer_groups(model), update)
    for key in given:
        np.testing.assert_allclose(given[key], recomputed[key], rtol=RTOL, atol=1e-13, err_msg=key)


def test_momentum_update_observed_after_the_step_equals_measuring_before_it():
    """With momentum the actual update is not -lr g: snapshot, step, diff, and pass params=before."""
    model = tiny_net("batchnorm")
    x, labels = tiny_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for _ in range(2):  # a non-zero momentum buffer
        training_step_forward(model, x, labels)
        optimizer.step()
    training_step_forward(model, x, labels)
    at_t = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain_sgd_step = -LR * model[0].weight.grad.clone()
    optimizer.step()
    update = observed_update(before, model)
    assert not torch.allclose(update["0.weight"], plain_sgd_step)  # momentum really acted
    after = ics(model, F.cross_entropy, x, labels, layer_groups(model), update, params=before)
    expected = ics(at_t, F.cross_entropy, x, labels, layer_groups(at_t), update)
    for key in after:
        np.testing.assert_allclose(after[key], expected[key], rtol=RTOL, atol=1e-13, err_msg=key)


def test_layer_groups_attach_each_bn_to_its_conv_in_forward_order():
    model = build_model(ModelConfig(channels=(4, 4), hidden=8), Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(0))
    assert layer_groups(model) == [
        ["0.weight", "0.bias", "1.weight", "1.bias"],
        ["3.weight", "3.bias", "4.weight", "4.bias"],
        ["8.weight", "8.bias"],
        ["10.weight", "10.bias"],
    ]


def test_unknown_or_duplicated_group_names_are_rejected():
    model = tiny_net("none")
    x, labels = tiny_batch()
    update = sgd_update(dict(model.named_parameters()), {}, LR)
    with pytest.raises(KeyError, match="not a trainable parameter"):
        ics(model, F.cross_entropy, x, labels, [["nope"]], update)
    with pytest.raises(ValueError, match="two layer groups"):
        ics(model, F.cross_entropy, x, labels, [["0.weight"], ["0.weight"]], update)
