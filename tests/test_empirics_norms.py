"""Every registered normaliser as a trainable module (empirics.norms), from the one registry.

The native torch modules stand for a formula only where they compute its function: each is compared with
the formula lambdified by `theory.numeric.torch_forward`, in float64, on the 1-D and 2-D layouts; the group
layout `group_rows` hands the capture is the formula's; a weight-space normaliser reparametrises the layer and
still works under torch.func.functional_call; the 2-D VGG trains on scikit-learn's digits.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empirics.config import PRESETS, ConfigError, ModelConfig, Norm, norm_names, override
from empirics.digits import load_digits
from empirics.experiments import norms_measured, plan, validate
from empirics.models import build_model
from empirics.norms import (
    CHANNELS_PER_GROUP,
    ReparametrisedConv1d,
    SpatialFlatten,
    group_rows,
    norm_factory,
    norm_slots,
    uses_batch_statistics,
)
from empirics.vgg2d import build_vgg2d, digits_layers
from theory import numeric
from theory.normalisers import REGISTRY
from tests.test_empirics_cifar_vgg2d import FLOAT64_RTOL  # float64 end to end: only summation order differs

REPO = pathlib.Path(__file__).resolve().parent.parent
ACTIVATION_SHAPES = {1: (6, 8, 5), 2: (6, 8, 3, 4)}  # (N, C, L) and (N, C, H, W); C a multiple of the group size
ACTIVATION_NORMALISERS = [name for name in REGISTRY if not REGISTRY[name].axis.startswith("weight space")]


def _formula_reference(name: str, module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """The registered formula over the module's groups (rows of `group_rows`), gamma = 1, beta = 0."""
    rows = group_rows(module, values)  # (groups, m)
    normalised = numeric.torch_forward(name)(rows, (1,), module.norm_eps)
    if module.norm_axis == "batch":
        return normalised.reshape(values.shape[1], values.shape[0], *values.shape[2:]).transpose(0, 1)
    return normalised.reshape(values.shape)


@pytest.mark.parametrize("spatial_dims", [1, 2])
@pytest.mark.parametrize("name", ACTIVATION_NORMALISERS)
def test_every_activation_normaliser_module_equals_its_formula_in_float64(name, spatial_dims):
    """Native (BatchNorm1d/2d, GroupNorm) or formula-built, the module computes the registered formula along its
    axis; the affine map is gamma = 1, beta = 0 at initialisation."""
    width = ACTIVATION_SHAPES[spatial_dims][1]
    module = norm_factory(Norm(name), 1e-3, spatial_dims=spatial_dims)(width).double()
    values = torch.randn(*ACTIVATION_SHAPES[spatial_dims], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3)) * 2.0 + 0.5
    torch.testing.assert_close(module(values), _formula_reference(name, module, values), rtol=FLOAT64_RTOL, atol=1e-12)
    assert module.norm_slot and module.normaliser == name and module.norm_variant == name


def test_native_modules_stand_exactly_where_the_formula_is_batchnorms():
    kinds = {name: type(norm_factory(Norm(name), 1e-5, spatial_dims=2)(8)).__name__ for name in ACTIVATION_NORMALISERS}
    assert kinds["batchnorm"] == kinds["lp2"] == "BatchNorm2d"  # lp2 is BatchNorm's formula (formula_key)
    assert kinds["layernorm"] == kinds["groupnorm"] == "GroupNorm"
    assert kinds["lp1"] == kinds["rmsnorm"] == "SpatialFlatten"
    groupnorm = norm_factory(Norm.GROUPNORM, 1e-5)(16)
    assert groupnorm.num_groups == 16 // CHANNELS_PER_GROUP and groupnorm.norm_groups == groupnorm.num_groups
    assert norm_factory(Norm.LAYERNORM, 1e-5)(16).num_groups == 1


def test_group_rows_give_the_m_values_of_each_group():
    values = torch.arange(2 * 8 * 3, dtype=torch.float64).reshape(2, 8, 3)  # (N, C, L)
    batch, layer, group = (norm_factory(Norm(name), 1e-5)(8) for name in ("batchnorm", "layernorm", "groupnorm"))
    assert group_rows(batch, values).shape == (8, 6) and set(group_rows(batch, values)[1].tolist()) == {3, 4, 5, 27, 28, 29}
    assert group_rows(layer, values).shape == (2, 24)
    assert group_rows(group, values).shape == (4, 12) and group_rows(group, values)[1, 0] == 12  # sample 0, channels 4-7


def test_a_group_axis_the_width_does_not_divide_is_a_config_error_naming_the_normaliser():
    with pytest.raises(ConfigError, match="groupnorm.*10 units"):
        norm_factory(Norm.GROUPNORM, 1e-5)(10)


def test_weightnorm_reparametrises_the_conv_and_starts_at_its_glorot_weights():
    model = build_model(ModelConfig(channels=(4, 4), hidden=8), Norm.WEIGHTNORM, 1e-5, torch.Generator().manual_seed(0))
    convs = [m for m in model if isinstance(m, ReparametrisedConv1d)]
    assert len(convs) == 2 and norm_slots(model) == convs and convs[0].normaliser == "weightnorm"
    for conv in convs:  # W = v at initialisation (torch's weight_norm convention), W_j = s_j v_j / ||v_j||
        torch.testing.assert_close(conv.effective_weight(), conv.weight, rtol=1e-6, atol=1e-7)
        assert group_rows(conv, conv.weight).shape == (conv.out_channels, conv.in_channels * 3)
    x = torch.randn(5, 1, 40, generator=torch.Generator().manual_seed(1))
    params = {name: p.detach() * 1.5 for name, p in model.named_parameters()}
    # torch.func.functional_call substitutes the direction and the scale like any parameter (the probes use it)
    scaled = torch.func.functional_call(model, params, (x,))
    assert torch.isfinite(scaled).all() and not torch.allclose(scaled, model(x))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_normaliser_trains_a_step_of_the_digits_vgg(name):
    data = load_digits()
    model = build_vgg2d(digits_layers((8, 8, 16, 16)), norm_factory(Norm(name), 1e-5, spatial_dims=2),
                        torch.Generator().manual_seed(0), in_channels=1, image_size=8)
    loss = F.cross_entropy(model(data.x_train[:32]), data.y_train[:32])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_digits_are_real_images_split_by_seed_offline():
    data = load_digits(42)
    assert data.x_train.shape == (1497, 1, 8, 8) and data.x_test.shape == (300, 1, 8, 8)
    assert set(data.y_train.tolist()) == set(range(10))
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-3
    assert not torch.equal(load_digits(7).y_test, data.y_test)


def test_the_digits_vgg_learns_at_smoke_size():
    """Conv2d + BatchNorm2d on the real 8 x 8 digits: 60 SGD steps take the training loss well down."""
    data = load_digits()
    model = build_vgg2d(digits_layers((8, 8, 16, 16)), norm_factory(Norm.BATCHNORM, 1e-5, spatial_dims=2),
                        torch.Generator().manual_seed(0), in_channels=1, image_size=8)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(60):
        batch = order[(step * 64) % 1408:][:64]
        optimiser.zero_grad()
        loss = F.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_norm_is_a_validated_name_from_the_registry_and_the_training_variants():
    assert Norm("layernorm") is Norm.LAYERNORM and Norm.BATCHNORM == "batchnorm"
    assert set(norm_names()) == {"none", "noisy_none", "noisy_batchnorm", *REGISTRY}
    with pytest.raises(ConfigError, match="'nope'.*layernorm"):
        Norm("nope")
    with pytest.raises(ConfigError, match="train.norms='nope' is not one of"):
        override(PRESETS["smoke"], "train.norms=none,nope")
    assert override(PRESETS["smoke"], "train.norms=none,rmsnorm").train.norms == (Norm.NONE, Norm.RMSNORM)
    assert [uses_batch_statistics(Norm(n)) for n in ("batchnorm", "noisy_batchnorm", "lp1", "layernorm", "none")] == \
        [True, True, True, False, False]


def test_the_norms_experiment_trains_every_registered_normaliser_with_both_references():
    config = PRESETS["default"]
    specs = plan(config)
    lr = config.train.lrs[0]
    trained = {s.norm.value for s in specs if s.kind == "vgg1d" and s.lr == lr and s.seed == config.train.seeds[0]}
    twins = {"lp2"}  # BatchNorm's formula over BatchNorm's axis: BatchNorm's runs stand for it
    assert (set(REGISTRY) - twins) | {"none", "batchnorm"} <= trained
    assert norms_measured(config) == tuple(Norm(name) for name in REGISTRY if name not in twins)
    only = validate(override(config, "norms_normalisers=rmsnorm"))
    assert norms_measured(only) == (Norm.RMSNORM,)
    norms_runs = [s for s in plan(only) if s.norm is Norm.RMSNORM]
    assert len(norms_runs) == config.norms_seeds == 2  # two seeds of the normaliser alone
    assert [s.seed for s in norms_runs] == list(config.train.seeds[:2]) and all(s.probes.landscape_every
                                                                                for s in norms_runs)


def test_no_module_but_the_theory_registry_lists_normaliser_names():
    """Adding a normaliser is one file in theory/normalisers/: no other source file spells a set of their names."""
    names = set(REGISTRY) - {"batchnorm"}  # batchnorm, the paper's subject, is named as the reference
    offenders = []
    for path in [*REPO.glob("empirics/*.py"), *REPO.glob("verify/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                spelled = {item.value for item in items if isinstance(item, ast.Constant) and item.value in names}
                if len(spelled) >= 2:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {sorted(spelled)}")
    assert not offenders, "normaliser names listed outside theory/normalisers/: " + "; ".join(offenders)


def test_spatial_flatten_views_any_rank_as_channels_by_positions():
    inner = nn.Identity()
    for shape in ((3, 4), (3, 4, 5), (3, 4, 5, 2)):
        x = torch.randn(shape)
        assert torch.equal(SpatialFlatten(inner)(x), x)
