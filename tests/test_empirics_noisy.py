"""Noisy BatchNorm (Algorithm 1) against an element-by-element reference of the same draws."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from empirics.models import norm_layers
from empirics.noisy import NoisyBatchNorm1d, NoisyIdentity, frozen_noise


def _reference_noise(a: torch.Tensor, seed: int, n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1) -> torch.Tensor:
    """The documented draw order (mu, sigma per unit; then m, s per element), applied in loops."""
    generator = torch.Generator().manual_seed(seed)
    n, channels, length = a.shape
    u_mu = torch.rand((1, channels, 1), generator=generator, dtype=a.dtype)
    u_sigma = torch.rand((1, channels, 1), generator=generator, dtype=a.dtype)
    u_m = torch.rand(a.shape, generator=generator, dtype=a.dtype)
    z_s = torch.randn(a.shape, generator=generator, dtype=a.dtype)
    out = torch.empty_like(a)
    for j in range(channels):
        mu_j = -n_mu + 2 * n_mu * u_mu[0, j, 0]  # U(-n_mu, n_mu)
        sigma_j = 1 + (n_sigma - 1) * u_sigma[0, j, 0]  # U(1, n_sigma)
        for i in range(n):
            for t in range(length):
                m_ij = (mu_j - r_mu) + 2 * r_mu * u_m[i, j, t]  # U(mu_j - r_mu, mu_j + r_mu)
                s_ij = sigma_j + r_sigma * z_s[i, j, t]  # N(sigma_j, r_sigma)
                out[i, j, t] = s_ij * a[i, j, t] + m_ij
    return out


def test_noise_matches_the_elementwise_reference_of_algorithm_1():
    a = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    noise = NoisyIdentity(3, generator=7).to(torch.float64)
    torch.testing.assert_close(noise(a), _reference_noise(a, 7), rtol=1e-14, atol=1e-14)


def test_draws_stay_in_their_documented_ranges_and_units_share_their_centre():
    noise = NoisyIdentity(6, generator=0, r_sigma=0.0)
    a = torch.ones(200, 6, 10)
    noise(torch.zeros_like(a))
    shift = noise.last_shift  # (200, 6, 10): m_ij
    noise(a)
    scale = noise.last_scale
    assert torch.all(shift.abs() <= 0.5 + 0.1)
    spread = shift.amax(dim=(0, 2)) - shift.amin(dim=(0, 2))  # within a unit: at most 2 r_mu
    assert torch.all(spread <= 0.2) and torch.all(spread > 0.15)  # 2000 uniform draws fill the interval
    # r_sigma = 0: every element of a unit has scale sigma_j in [1, 1.25]
    assert torch.all((scale - scale[:1, :, :1]).abs() == 0)
    assert torch.all((scale >= 1.0) & (scale <= 1.25))


def test_every_forward_is_a_fresh_draw_and_per_position_false_shares_along_length():
    noise = NoisyIdentity(2, generator=3, per_position=False)
    a = torch.randn(4, 2, 5)
    first, second = noise(a), noise(a)
    assert not torch.equal(first, second)
    assert torch.all(noise.last_scale == noise.last_scale[:, :, :1])
    assert torch.all(noise.last_shift == noise.last_shift[:, :, :1])


def test_noise_has_no_gradient_of_its_own_only_the_constant_scale():
    noise = NoisyIdentity(3, generator=1).to(torch.float64)
    a = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 3, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((noise(a) * weights).sum(), a)
    torch.testing.assert_close(grad, noise.last_scale * weights, rtol=0, atol=0)


def test_eval_mode_is_the_identity_and_draws_nothing():
    generator = torch.Generator().manual_seed(5)
    noise = NoisyIdentity(3, generator=generator).eval()
    state = generator.get_state()
    a = torch.randn(4, 3)
    assert torch.equal(noise(a), a)
    assert torch.equal(generator.get_state(), state)


def test_noise_never_touches_the_global_rng():
    global_state = torch.random.get_rng_state()
    NoisyBatchNorm1d(3, generator=torch.Generator().manual_seed(0))(torch.randn(4, 3, 5, generator=torch.Generator()))
    assert torch.equal(torch.random.get_rng_state(), global_state)


def test_frozen_noise_replays_the_last_draw_without_advancing_the_generator():
    model = nn.Sequential(NoisyBatchNorm1d(3, generator=2), nn.ReLU())
    a = torch.randn(4, 3, 5)
    trained = model(a)
    state = model[0].noise.generator.get_state()
    with frozen_noise(model):
        replayed = model(a)
    assert torch.equal(replayed, trained)
    assert torch.equal(model[0].noise.generator.get_state(), state)
    assert not model[0].noise.frozen
    with frozen_noise(model), pytest.raises(RuntimeError, match="no draw for input shape"):
        model(torch.randn(2, 3, 5))


def test_noisy_batchnorm_is_bn_then_noise_and_exposes_its_bn_to_captures():
    layer = NoisyBatchNorm1d(3, 1e-5, generator=4)
    clone = copy.deepcopy(layer)
    y = torch.randn(6, 3, 5)
    out = layer(y)
    torch.testing.assert_close(out, clone.noise(clone.bn(y)), rtol=0, atol=0)
    assert norm_layers(nn.Sequential(layer)) == [layer.bn]


def test_a_noise_module_needs_its_own_generator():
    with pytest.raises(TypeError, match="own generator"):
        NoisyIdentity(3, generator=None)
    with pytest.raises(ValueError, match="n_sigma >= 1"):
        NoisyIdentity(3, generator=0, n_sigma=0.5)
