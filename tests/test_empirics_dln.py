"""The deep linear network: structure, init, data, loss, full-batch GD."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, vmap

from empirics.config import Norm
from empirics.dln import build_dln, dln_loss, synthetic_regression, train_dln
from empirics.landscape import training_function
from empirics.noisy import frozen_noise
from empirics.norms import (ColumnMajorLinear, ReparametrisedColumnMajorLinear, ReparametrisedLinear,
                            column_major_linear, norm_factory)

# float64 against float64, the same products summed in another order (MKL's two orientations): a few
# units of 2^-53 per multiply-add, amplified through the 25 layers and a normaliser's 1/sigma; 1e-10 is
# far above that and far below any difference the probes measure
FLOAT64_ROUTES = {"rtol": 1e-10, "atol": 1e-12}
# every axis and kind a DLN hosts: plain, BN (native), l1 / l-inf (FormulaNorm, derived and autograd backward),
# features (GroupNorm), weight space (reparametrised layers), Algorithm 1 noise
DLN_NORMS = ("none", "batchnorm", "lp1", "lpinf", "layernorm", "weightnorm", "noisy_batchnorm")


def test_plain_dln_is_the_product_of_its_matrices():
    model = build_dln(depth=5, width=4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert [type(m) for m in model] == [ColumnMajorLinear] * 5 and all(m.bias is None for m in model)
    assert all(isinstance(m, nn.Linear) for m in model)  # the probes find their layers by this
    product = torch.eye(4, dtype=torch.float64)
    for layer in model:
        product = layer.weight @ product
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), x @ product.T, rtol=1e-12, atol=1e-12)


def test_batchnorm_follows_every_hidden_layer_only_and_other_normalisers_plug_in():
    bn = build_dln(depth=4, width=3, norm="batchnorm", generator=torch.Generator().manual_seed(0), bn_eps=1e-3)
    assert [type(m).__name__ for m in bn] == ["ColumnMajorLinear", "BatchNorm1d"] * 3 + ["ColumnMajorLinear"]
    assert all(m.eps == 1e-3 for m in bn if isinstance(m, nn.BatchNorm1d))
    custom = build_dln(depth=3, width=3, norm=lambda width: nn.LayerNorm(width), generator=torch.Generator())
    assert [type(m).__name__ for m in custom] == ["ColumnMajorLinear", "LayerNorm"] * 2 + ["ColumnMajorLinear"]
    # any registered normaliser by name (theory.normalisers.REGISTRY), through empirics.norms
    layer = build_dln(depth=3, width=4, norm="layernorm", generator=torch.Generator())
    assert [type(m).__name__ for m in layer] == ["ColumnMajorLinear", "GroupNorm"] * 2 + ["ColumnMajorLinear"]
    weight = build_dln(depth=3, width=4, norm="weightnorm", generator=torch.Generator())
    assert [type(m).__name__ for m in weight] == ["ReparametrisedColumnMajorLinear"] * 2 + ["ColumnMajorLinear"]
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


# ---------------------------------------------------------------- the column-major product against F.linear


def _f_linear_twin(model: nn.Sequential) -> nn.Sequential:
    """The obvious route: a deep copy (its own BN statistics, noise generator in the same state) whose layers are
    nn.Linear / ReparametrisedLinear again, computing F.linear (the subclasses only override forward)."""
    twin = copy.deepcopy(model)
    for module in twin:
        if isinstance(module, ReparametrisedColumnMajorLinear):
            module.__class__ = ReparametrisedLinear
        elif isinstance(module, ColumnMajorLinear):
            module.__class__ = nn.Linear
    return twin


@given(batch=st.integers(1, 40), fan_in=st.integers(1, 12), fan_out=st.integers(1, 12),
       leading=st.sampled_from([(), (3,), (2, 2)]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_column_major_linear_is_f_linear_with_its_gradients_in_float64(batch, fan_in, fan_out, leading, bias, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*leading, batch, fan_in, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(fan_out, generator=generator, dtype=torch.float64, requires_grad=True) if bias else None
    upstream = torch.randn(*leading, batch, fan_out, generator=generator, dtype=torch.float64)
    inputs = [x, w] + ([b] if bias else [])
    fast, slow = column_major_linear(x, w, b), F.linear(x, w, b)
    torch.testing.assert_close(fast, slow, **FLOAT64_ROUTES)
    for got, want in zip(torch.autograd.grad(fast, inputs, upstream), torch.autograd.grad(slow, inputs, upstream)):
        torch.testing.assert_close(got, want, **FLOAT64_ROUTES)


def test_column_major_linear_takes_a_single_vector_as_f_linear():
    w, x = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(column_major_linear(x, w), F.linear(x, w), **FLOAT64_ROUTES)


def _model_and_data(norm: str):
    normaliser = norm_factory(Norm(norm), 1e-5, torch.Generator().manual_seed(2)) or "none"
    model = build_dln(depth=6, width=8, norm=normaliser, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    x, target, _ = synthetic_regression(64, 8, seed=1, dtype=torch.float64)
    return model, x, target


@pytest.mark.parametrize("norm", DLN_NORMS)
def test_dln_loss_and_gradients_equal_the_f_linear_network_in_float64(norm):
    model, x, target = _model_and_data(norm)
    reference = _f_linear_twin(model)
    assert {type(m) for m in reference} & {ColumnMajorLinear, ReparametrisedColumnMajorLinear} == set()
    fast = dln_loss(model(x), target)
    slow = dln_loss(reference(x), target)
    torch.testing.assert_close(fast, slow, **FLOAT64_ROUTES)
    fast_grads = torch.autograd.grad(fast, list(model.parameters()), create_graph=True)
    slow_grads = torch.autograd.grad(slow, list(reference.parameters()), create_graph=True)
    for got, want in zip(fast_grads, slow_grads):
        torch.testing.assert_close(got, want, **FLOAT64_ROUTES)
    # double backward (curvature's HVPs, landscape's beta): the gradient of ||grad||^2
    fast_second = torch.autograd.grad(sum((g**2).sum() for g in fast_grads), list(model.parameters()))
    slow_second = torch.autograd.grad(sum((g**2).sum() for g in slow_grads), list(reference.parameters()))
    # a hidden bias ahead of a centring normaliser has an exactly zero second gradient; what either route
    # computes there is the cancellation of terms as large as the rest of the vector (~1e4), so its absolute
    # rounding scales with that magnitude: a few hundred units of 2^-53 of the vector's largest entry
    scale = max(want.abs().max().item() for want in slow_second)
    second_routes = {**FLOAT64_ROUTES, "atol": max(FLOAT64_ROUTES["atol"], 1e-14 * scale)}
    for got, want in zip(fast_second, slow_second):
        torch.testing.assert_close(got, want, **second_routes)


@pytest.mark.parametrize("norm", ["none", "batchnorm", "lp1", "weightnorm"])
def test_dln_under_functional_call_grad_and_vmap_equals_the_f_linear_network(norm):
    """The probes' route (landscape.training_loss, ics): torch.func.grad of functional_call, vmapped over
    stacked displaced parameters as landscape's batched probe does."""
    model, x, target = _model_and_data(norm)
    params = {name: p.detach() for name, p in model.named_parameters()}
    shifts = torch.tensor([0.0, 0.01, -0.1], dtype=torch.float64)  # three displaced points
    stacked = {name: p + shifts.view(-1, *[1] * p.dim()) for name, p in params.items()}

    reference = _f_linear_twin(model)

    def loss_fast(p):
        return dln_loss(functional_call(model, p, (x,), strict=False), target)

    def loss_slow(p):
        return dln_loss(functional_call(reference, p, (x,), strict=False), target)

    # batch statistics and no running-statistics write, which vmap cannot batch
    with training_function(model), training_function(reference):
        batched = vmap(grad(loss_fast))(stacked)
        for point in range(len(shifts)):
            want = grad(loss_slow)({name: value[point] for name, value in stacked.items()})
            for name, got in batched.items():
                torch.testing.assert_close(got[point], want[name], **FLOAT64_ROUTES)


def test_noisy_dln_replays_its_noise_through_the_column_major_layers():
    model, x, target = _model_and_data("noisy_batchnorm")
    trained = model(x)
    with frozen_noise(model):
        torch.testing.assert_close(model(x), trained, rtol=0, atol=0)
