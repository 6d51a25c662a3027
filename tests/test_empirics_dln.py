"""The deep linear network: structure, init, data, loss, full-batch GD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from empirics.dln import build_dln, dln_loss, synthetic_regression, train_dln


def test_plain_dln_is_the_product_of_its_matrices():
    model = build_dln(depth=5, width=4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert [type(m) for m in model] == [nn.Linear] * 5 and all(m.bias is None for m in model)
    product = torch.eye(4, dtype=torch.float64)
    for layer in model:
        product = layer.weight @ product
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), x @ product.T, rtol=1e-12, atol=1e-12)


def test_batchnorm_follows_every_hidden_layer_only_and_other_normalisers_plug_in():
    bn = build_dln(depth=4, width=3, norm="batchnorm", generator=torch.Generator().manual_seed(0), bn_eps=1e-3)
    assert [type(m).__name__ for m in bn] == ["Linear", "BatchNorm1d"] * 3 + ["Linear"]
    assert all(m.eps == 1e-3 for m in bn if isinstance(m, nn.BatchNorm1d))
    custom = build_dln(depth=3, width=3, norm=lambda width: nn.LayerNorm(width), generator=torch.Generator())
    assert [type(m).__name__ for m in custom] == ["Linear", "LayerNorm", "Linear", "LayerNorm", "Linear"]
    # any registered normaliser by name (theory.normalisers.REGISTRY), through empirics.norms
    layer = build_dln(depth=3, width=4, norm="layernorm", generator=torch.Generator())
    assert [type(m).__name__ for m in layer] == ["Linear", "GroupNorm", "Linear", "GroupNorm", "Linear"]
    weight = build_dln(depth=3, width=4, norm="weightnorm", generator=torch.Generator())
    assert [type(m).__name__ for m in weight] == ["ReparametrisedLinear", "ReparametrisedLinear", "Linear"]
    with pytest.raises(ValueError, match="not_a_normaliser.*batchnorm"):
        build_dln(norm="not_a_normaliser")


def test_glorot_init_is_seeded_bounded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first = build_dln(generator=torch.Generator().manual_seed(3))
    again = build_dln(generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), state)
    bound = math.sqrt(6.0 / 20.0)  # Glorot-uniform for 10 x 10
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b) and a.abs().max() <= bound


def test_regression_data_are_seeded_and_exactly_linear():
    x, target, a = synthetic_regression(50, 10, seed=4, dtype=torch.float64)
    assert x.shape == target.shape == (50, 10) and a.shape == (10, 10)
    torch.testing.assert_close(target, x @ a.T, rtol=1e-14, atol=1e-14)
    x32, _, _ = synthetic_regression(50, 10, seed=4)
    torch.testing.assert_close(x32, x.float())  # the same draws whatever the dtype
    assert not torch.equal(synthetic_regression(50, 10, seed=5)[0], x32)


def test_loss_sums_over_outputs_and_averages_over_samples():
    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.zeros(2, 2)
    assert dln_loss(prediction, target).item() == pytest.approx(2.5)
    assert dln_loss(prediction, target, "sum").item() == pytest.approx(5.0)


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_full_batch_gd_reduces_the_loss_and_calls_back_before_each_update(norm):
    model = build_dln(depth=6, width=10, norm=norm, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, target, _ = synthetic_regression(200, 10, seed=0, dtype=torch.float64)
    seen = []

    def on_step(step, net, loss):
        seen.append((step, loss.item(), net[0].weight.grad.clone(), net[0].weight.detach().clone()))

    losses = train_dln(model, x, target, lr=1e-3, steps=30, on_step=on_step)
    assert len(losses) == 30 and losses[-1] < losses[0]
    _, loss, _, weight = seen[1]
    np.testing.assert_allclose(loss, losses[1])
    torch.testing.assert_close(weight, seen[0][3] - 1e-3 * seen[0][2])  # W1 = W0 - lr grad(W0)
