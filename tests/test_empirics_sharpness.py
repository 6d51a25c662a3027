"""The sharpness probe against a dense float64 Hessian (torch.autograd.functional.hessian) on tiny tagged networks,
BN in training mode included: top eigenvalues, residuals, the Hutchinson trace, per-layer blocks, the effective
sharpness's scale invariance, the tags-derived scale-invariant groups, the schedule, and trajectory neutrality."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from empirics import sharpness
from empirics.config import EXTENSION_PROBE_FIELDS, PRESETS, ConfigError, Norm, ProbeConfig, RunSpec, override, to_dict
from empirics.config import _probes_payload as probes_payload
from empirics.dln import build_dln
from empirics.norms import norm_factory, place_norm
from empirics.train import train_model
from tests.test_empirics_measurements import _assert_same_state, _state

LENGTH, CLASSES = 6, 4
# float64 on both routes, which differ only in the order of their sums; Lanczos run to the full dimension with
# full reorthogonalisation is exact up to rounding of order n u ||H|| (n ~ 100, u = 2^-53): 1e-9 leaves room
EIGEN_RTOL = 1e-9
TAGGED = ("none", "batchnorm", "noisy_batchnorm", "layernorm", "weightnorm")


def tagged_net(norm: str = "batchnorm", seed: int = 0, eps: float = 1e-5, widths=(3, 2)) -> nn.Sequential:
    """conv3 -> [normaliser, tagged as the models tag it] -> ReLU, twice, -> maxpool2 -> flatten -> linear(4), float64,
    with non-trivial random parameters from a private generator (BN gamma in [0.5, 2], beta in [-0.5, 0.5])."""
    make = norm_factory(Norm(norm), eps, torch.Generator().manual_seed(seed + 100))
    layers: list[nn.Module] = []
    previous = 1
    with torch.random.fork_rng(devices=[]):  # torch's default init draws from the global RNG
        for width in widths:
            layers += [*place_norm(nn.Conv1d(previous, width, 3, padding=1), width, make), nn.ReLU()]
            previous = width
        layers += [nn.MaxPool1d(2), nn.Flatten(), nn.Linear(previous * (LENGTH // 2), CLASSES)]
        model = nn.Sequential(*layers).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.7)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
            else:  # gamma, weight-space scales
                p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 1.5 + 0.5)
    return model.train()


def tagged_batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, LENGTH, generator=generator, dtype=torch.float64), torch.arange(n) % CLASSES


def step_forward(model, x, labels):
    """A training step's forward + backward: running statistics move once, the noise is drawn, .grad is set."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), labels).backward()


def dense_hessian(model, x, labels):
    """(names, flat parameters, H) by torch.autograd.functional.hessian of the training-mode loss of a deep copy
    whose BN layers use batch statistics without tracking, its noise replayed: an independent route."""
    reference = copy.deepcopy(model).train()
    for module in reference.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
        if hasattr(module, "frozen"):
            module.frozen = True
    named = [(n, p.detach()) for n, p in reference.named_parameters()]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def loss(vector):
        pieces, start = {}, 0
        for name, p in named:
            pieces[name] = vector[start:start + p.numel()].view(p.shape)
            start += p.numel()
        return F.cross_entropy(functional_call(reference, pieces, (x,)), labels)

    return [n for n, _ in named], flat, torch.autograd.functional.hessian(loss, flat)


def _slices(model):
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = slice(start, start + p.numel())
        start += p.numel()
    return out


def dense_scales(model, groups) -> torch.Tensor:
    """D: ||theta_G|| on every entry of each group, 1 elsewhere (the definition, written out)."""
    slices, params = _slices(model), dict(model.named_parameters())
    scale = torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for group in groups:
        norm = torch.sqrt(sum((params[n].detach() ** 2).sum() for n in group))
        for name in group:
            scale[slices[name]] = norm
    return scale


def probe(model, x, labels, **options):
    n = sum(p.numel() for p in model.parameters())
    settings = {"top_k": 3, "iterations": n, "hutchinson_probes": n, "blocks": True, **options}
    return sharpness.sharpness_probe(model, F.cross_entropy, x, labels, generator=torch.Generator().manual_seed(7),
                                     **settings)


def top(matrix: torch.Tensor, k: int) -> np.ndarray:
    return torch.linalg.eigvalsh(matrix).flip(0)[:k].numpy()


# ---------------------------------------------------------------- against the dense Hessian


@pytest.mark.parametrize("norm", TAGGED)
def test_top_eigenvalues_and_trace_equal_the_dense_hessians_in_training_mode(norm):
    model = tagged_net(norm)
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    _, _, hessian = dense_hessian(model, x, labels)
    result = probe(model, x, labels)
    scale = float(torch.linalg.matrix_norm(hessian, ord=2))
    np.testing.assert_allclose(result["eigenvalues"], top(hessian, 3), rtol=0, atol=EIGEN_RTOL * scale)
    assert result["lambda_max"] == result["eigenvalues"][0]
    assert np.all(result["residuals"] <= EIGEN_RTOL * scale) and np.all(result["converged"])
    assert result["trace_exact"] and result["trace_se"] == 0.0
    assert result["trace"] == pytest.approx(float(torch.trace(hessian)), abs=EIGEN_RTOL * scale * hessian.shape[0])


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "weightnorm", "noisy_batchnorm"])
def test_effective_sharpness_is_the_top_eigenvalue_of_d_h_d(norm):
    model = tagged_net(norm)
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    _, _, hessian = dense_hessian(model, x, labels)
    groups = [g.names for g in sharpness.invariant_candidates(model)]
    d = dense_scales(model, groups)
    result = probe(model, x, labels)
    effective = d[:, None] * hessian * d[None, :]
    scale = float(torch.linalg.matrix_norm(effective, ord=2))
    assert result["invariant_groups"] == len(groups) == 2
    np.testing.assert_allclose(result["eff_eigenvalues"], top(effective, 3), rtol=0, atol=EIGEN_RTOL * scale)
    assert result["invariant_norm_sq"] == pytest.approx(float(sum(d[_slices(model)[g[0]]][0] ** 2 for g in groups)))


def test_per_layer_blocks_equal_the_dense_diagonal_blocks():
    model = tagged_net("batchnorm")
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    _, _, hessian = dense_hessian(model, x, labels)
    result = probe(model, x, labels)
    slices = _slices(model)
    blocks = sharpness.parameter_blocks(model, list(slices))
    groups = {g.layer: g.names for g in sharpness.invariant_candidates(model)}
    d = dense_scales(model, list(groups.values()))
    assert list(result["block_names"]) == list(blocks)
    for index, (name, members) in enumerate(blocks.items()):
        where = torch.cat([torch.arange(slices[m].start, slices[m].stop) for m in members])
        block = hessian[where][:, where]
        scale = float(torch.linalg.matrix_norm(hessian, ord=2))
        assert result["block_lambda"][index] == pytest.approx(top(block, 1)[0], abs=EIGEN_RTOL * scale), name
        assert result["block_trace"][index] == pytest.approx(float(torch.trace(block)), abs=EIGEN_RTOL * scale * 10)
        if name in groups:
            effective = d[where][:, None] * block * d[where][None, :]
            assert result["block_lambda_eff"][index] == pytest.approx(top(effective, 1)[0], rel=1e-9), name
        else:
            assert np.isnan(result["block_lambda_eff"][index]), name


def test_every_ritz_value_lies_within_its_residual_of_an_eigenvalue_after_few_iterations():
    """|lambda - theta| <= ||A v - theta v|| for a symmetric A: the residual is a rigorous error bar even far from
    convergence, and the flag says converged only where it is below 1% of ||A||."""
    model = tagged_net("batchnorm", widths=(4, 3))
    x, labels = tagged_batch(8)
    step_forward(model, x, labels)
    _, _, hessian = dense_hessian(model, x, labels)
    eigenvalues = torch.linalg.eigvalsh(hessian).numpy()
    norm = float(np.max(np.abs(eigenvalues)))
    for iterations in (2, 3, 5):
        (ritz,) = sharpness.lanczos(lambda u: u @ hessian, torch.ones(1, hessian.shape[0], dtype=torch.float64),
                                    iterations, 3, torch.Generator().manual_seed(iterations))
        assert np.isnan(ritz.values[iterations:]).all()  # fewer Ritz values than asked for: NaN, not converged
        assert not ritz.converged[iterations:].any()
        for value, residual, converged in zip(ritz.values[:iterations], ritz.residuals, ritz.converged):
            assert np.min(np.abs(eigenvalues - value)) <= residual * (1 + 1e-9) + 1e-12 * norm
            # the flag's scale is the largest |Ritz value|, at most ||A||: converged implies residual <= 1% of ||A||
            assert not converged or residual <= sharpness.SHARPNESS_RTOL * norm


def test_hutchinson_trace_lies_within_a_few_standard_errors_and_is_exact_with_every_unit_vector():
    model = tagged_net("batchnorm")
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    _, _, hessian = dense_hessian(model, x, labels)
    exact = float(torch.trace(hessian))
    n = hessian.shape[0]
    for seed in range(3):
        estimate = sharpness.hutchinson(lambda u: u @ hessian, n, 64, torch.Generator().manual_seed(seed))
        assert not estimate["exact"] and estimate["probes"] == 64 and estimate["trace_se"] > 0
        assert abs(estimate["trace"] - exact) <= 4 * estimate["trace_se"]  # 4 s.e.: fails ~1 in 16,000 per draw
    full = sharpness.hutchinson(lambda u: u @ hessian, n, n, torch.Generator().manual_seed(0))
    assert full["exact"] and full["trace"] == pytest.approx(exact, rel=1e-12)


# ---------------------------------------------------------------- scale invariance


def test_rescaling_the_weights_feeding_bn_leaves_the_effective_sharpness_and_scales_the_raw_block_by_one_over_c_sq():
    """eps = 1e-12, so BN's scale invariance is exact to rounding (with eps it holds to ~eps/var)."""
    c = 3.0
    model = tagged_net("batchnorm", eps=1e-12)
    x, labels = tagged_batch()
    before = probe(model, x, labels)
    first = sharpness.invariant_candidates(model)[0]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in first.names:
                p.mul_(c)
    after = probe(model, x, labels)
    index = list(before["block_names"]).index(first.layer)
    assert after["lambda_eff"] == pytest.approx(before["lambda_eff"], rel=1e-8)
    assert after["block_lambda_eff"][index] == pytest.approx(before["block_lambda_eff"][index], rel=1e-8)
    assert after["block_lambda"][index] == pytest.approx(before["block_lambda"][index] / c**2, rel=1e-8)
    assert after["lambda_max"] != pytest.approx(before["lambda_max"], rel=1e-3)  # the raw sharpness moved
    assert before["invariance_gap"] < 1e-10


def test_scale_invariant_groups_come_from_the_tags():
    bn = [g.names for g in sharpness.invariant_candidates(tagged_net("batchnorm"))]
    assert bn == [("0.weight", "0.bias"), ("3.weight", "3.bias")]  # each conv feeding a BN, its bias included
    assert sharpness.invariant_candidates(tagged_net("none")) == []
    assert [g.names for g in sharpness.invariant_candidates(tagged_net("weightnorm"))] == [("0.weight",), ("2.weight",)]
    dln = build_dln(4, 3, "batchnorm", generator=torch.Generator().manual_seed(0))
    assert [g.names for g in sharpness.invariant_candidates(dln)] == [("0.weight",), ("2.weight",), ("4.weight",)]


def test_a_tagged_slot_that_is_not_scale_invariant_is_rejected_by_the_numeric_check():
    model = tagged_net("none")
    fake = nn.Identity()  # tagged as a batch normaliser, normalises nothing: doubling the conv changes the loss
    fake.norm_slot, fake.normaliser, fake.norm_axis = True, "batchnorm", "batch"
    model.insert(1, fake)
    x, labels = tagged_batch()
    assert len(sharpness.invariant_candidates(model)) == 1
    result = probe(model, x, labels, blocks=False, hutchinson_probes=0)
    assert result["invariant_groups"] == 0 and result["lambda_eff"] == result["lambda_max"]


# ---------------------------------------------------------------- side effects, schedule, config


@pytest.mark.parametrize("norm", ["batchnorm", "noisy_batchnorm"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_probe_leaves_parameters_grads_buffers_modes_and_rngs_untouched(norm, mode):
    model = tagged_net(norm)
    x, labels = tagged_batch()
    step_forward(model, x, labels)
    model.train(mode == "train")
    before = _state(model)
    noise = [m.generator.get_state() for m in model.modules() if hasattr(m, "generator")]
    probe(model, x, labels, iterations=4, hutchinson_probes=3)
    _assert_same_state(before, _state(model))
    assert all(torch.equal(a, m.generator.get_state()) for a, m in
               zip(noise, [m for m in model.modules() if hasattr(m, "generator")]))


@pytest.mark.parametrize("norm", [Norm.BATCHNORM, Norm.NONE])
def test_a_run_with_the_sharpness_and_filter_landscape_probes_is_bit_identical_to_one_without(norm):
    config = override(PRESETS["smoke"], "train.steps=12")
    probes = ProbeConfig(sharpness_every=4, sharpness_iterations=3, hutchinson_probes=2, sharpness_blocks=True,
                         filter_landscape_steps=(5,), filter_landscape_points=3, filter_landscape_grid=2)
    plain = train_model(RunSpec(config, norm, 0.1, 0), progress=False)
    probed = train_model(RunSpec(config, norm, 0.1, 0, probes=probes), progress=False)
    assert probed.history["train"] == plain.history["train"] and probed.history["test"] == plain.history["test"]
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), probed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert probed.probes["sharpness/step"].tolist() == [0, 4, 8]
    assert probed.probes["sharpness/eigenvalues"].shape == (3, 1)
    assert probed.probes["filter_landscape/loss_2d"].shape == (1, 2, 2)
    assert (probed.probes["sharpness/invariant_groups"] > 0).all() == (norm is Norm.BATCHNORM)


def test_sharpness_runs_at_its_levels_once_each_and_periodically():
    trigger = (0.85, 0.7, 0.55, 0.45)
    levels = (0.45, 0.7)
    rows: list[dict] = []

    def at(step, level, every=0):
        due, index = sharpness.sharpness_due(every, levels, trigger, step, level, rows)
        if due:
            rows.append({"trigger_level": level})
        return due, index

    assert at(3, 0) == (False, -1)  # 0.85: not a sharpness level
    assert at(5, 1) == (True, 0)  # 0.7 reached: the first sharpness level (descending)
    assert at(6, -1) == (False, -1)
    assert at(9, 3) == (True, 1)  # 0.55 and 0.45 at once: 0.45 is the second
    assert at(12, -1, every=4) == (True, -1)  # periodic
    with pytest.raises(ValueError, match="not among the run's progress_levels"):
        sharpness.check_levels((0.6,), trigger)


def test_extension_fields_at_their_defaults_leave_run_ids_and_the_union_unchanged():
    comparing = ProbeConfig(landscape_every=100, early_every=25, early_until=100, progress_levels=(0.7, 0.45))
    assert comparing.union(ProbeConfig()) == comparing
    payload = probes_payload(comparing)
    assert payload == {k: v for k, v in to_dict(comparing).items() if k not in EXTENSION_PROBE_FIELDS}
    sharp = ProbeConfig(sharpness_levels=(0.7,), progress_levels=(0.7, 0.45), sharpness_iterations=12)
    merged = comparing.union(sharp)
    assert merged.sharpness_levels == (0.7,) and merged.sharpness_iterations == 12 and merged.landscape_every == 100
    assert ProbeConfig(hutchinson_probes=3).union(sharp).hutchinson_probes == ProbeConfig().hutchinson_probes
    spec = RunSpec(PRESETS["smoke"], Norm.BATCHNORM, 0.1, 0, probes=comparing)
    assert RunSpec(PRESETS["smoke"], Norm.BATCHNORM, 0.1, 0, probes=merged).run_id != spec.run_id
    with pytest.raises(ConfigError, match="sharpness_batch"):
        ProbeConfig(sharpness_every=5, sharpness_batch=8).union(ProbeConfig(sharpness_every=5, sharpness_batch=16))
