"""mnist1d loading and the VGG-1d model: shapes, initialisation, and no global RNG side effects."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from empirics.config import ConfigError, ModelConfig, Norm
from empirics.data import load_mnist1d
from empirics.models import build_model, norm_layers
from empirics.pooling import PairMaxPool1d


def test_mnist1d_has_the_documented_shapes_and_dtypes():
    data = load_mnist1d()
    assert data.x_train.shape == (4000, 1, 40) and data.x_train.dtype == torch.float32
    assert data.y_train.shape == (4000,) and data.y_train.dtype == torch.int64
    assert data.x_test.shape == (1000, 1, 40) and data.x_test.dtype == torch.float32
    assert data.y_test.shape == (1000,) and data.y_test.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(10))
    assert load_mnist1d() is data  # cached per process


def test_mnist1d_generation_restores_global_rng_states():
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    load_mnist1d.__wrapped__(42)  # uncached: really runs mnist1d's generator, which reseeds globally
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected


def test_model_maps_signals_to_logits_with_three_pools():
    model = build_model(ModelConfig(), Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(0))
    assert model(torch.zeros(3, 1, 40)).shape == (3, 10)
    assert sum(isinstance(m, PairMaxPool1d) for m in model) == 3  # MaxPool1d(2)'s function, faster
    assert [layer.num_features for layer in norm_layers(model)] == list(ModelConfig().channels)
    assert model[-3].in_features == ModelConfig().channels[-1] * 5  # 40 -> 20 -> 10 -> 5


def test_model_without_norm_has_no_norm_layers():
    model = build_model(ModelConfig(), Norm.NONE, 1e-5, torch.Generator().manual_seed(0))
    assert norm_layers(model) == []
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_initialisation_is_glorot_uniform_with_zero_biases_and_unit_gamma():
    model = build_model(ModelConfig(), Norm.BATCHNORM, 1e-3, torch.Generator().manual_seed(0))
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound
            assert module.weight.abs().max() > 0.9 * bound  # uniform fills the range
            assert torch.all(module.bias == 0)
    for layer in norm_layers(model):
        assert layer.eps == 1e-3
        assert torch.all(layer.weight == 1) and torch.all(layer.bias == 0)
        assert torch.all(layer.running_mean == 0) and torch.all(layer.running_var == 1)


def test_initialisation_depends_only_on_the_generator():
    state = torch.random.get_rng_state()
    a = build_model(ModelConfig(), Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(5))
    b = build_model(ModelConfig(), Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(5))
    c = build_model(ModelConfig(), Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_too_many_pools_are_rejected_with_the_fix():
    with pytest.raises(ConfigError, match="at most 10 convs"):
        build_model(ModelConfig(channels=(4,) * 12), Norm.NONE, 1e-5)
