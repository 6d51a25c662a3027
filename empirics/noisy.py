"""Noisy BatchNorm (paper Algorithm 1, Fig. 2): BN followed by a fresh random shift and scale per step.

In train() mode, at every forward (one forward = one training step) and for every unit j:

    mu_j    ~ U(-n_mu, n_mu)                sigma_j ~ U(1, n_sigma)                   (per unit)
    m_ij    ~ U(mu_j - r_mu, mu_j + r_mu)   s_ij    ~ N(sigma_j, r_sigma)             (per element i)
    a_ij   <-  s_ij * a_ij + m_ij

with the paper's constants n_mu = 0.5, n_sigma = 1.25, r_mu = r_sigma = 0.1. The noise is a
constant of the step: gradients flow through `s_ij * a_ij` with s_ij fixed, never into the draws.
In eval() mode the noise is off (identity).

Choice for conv activations (N, C, L) or (N, C, H, W): the "unit" j is a channel (what BN
normalises) and the per-sample index i runs over every (sample, position) pair, i.e. over every
element of the channel's BN batch (m = N * L or N * H * W, as `capture.py` counts it). This reading
makes the noise act on exactly the distribution BN normalises. `per_position=False` instead draws one
(m_ij, s_ij) per (sample, channel) and shares it along the spatial axes.

Randomness: every draw comes from the module's own `torch.Generator` (share one generator, seeded
from the run seed, between all noisy modules of a model), never from the global RNG, so adding noise
leaves the run's batch order and init streams untouched. Draws happen on the generator's device and
are moved to the activations' device, so a given seed gives the same noise on CPU and GPU.

Measurements must see the training step's function, not a fresh draw: inside `frozen_noise(model)`
every noisy module replays the noise of its last train() forward and draws nothing.

Cost: the draws are torch's in-place `uniform_(low, high)` / `normal_(0, r_sigma)` on fresh buffers, the
same generator draws as torch.rand / torch.randn (same order, values equal to rounding), then one broadcast
add_ of mu_j or sigma_j; the forward is one addcmul. The generator type and its get_state / set_state
(checkpoints) are unchanged. Measured on the 2-core CPU, one torch thread, the VGG-1d default (6 noisy
layers, 246k elements a step), alternating in one process: the noisy-BN step is 0.89-0.97 of the former
one's (rand / randn, the affine maps and `scale * a + shift` out of place), the draw alone 0.69-0.90,
addcmul 0.40-0.56 of mul + add. What is left is the generator's ~4-9 ns per value: the noisy step is
1.37-1.49 BN steps (`python -m verify bench`, noisy_step). Not adopted: one draw for all layers (0.99 of
six); NumPy's PCG64 float32 `random` (185 us per 41k values against uniform_'s 180 us) and ziggurat
`standard_normal` (490 us against normal_'s 200 us), a layer's draw 1.04 of the old one; raw PCG64 bits
with a Box-Muller in torch, 1.4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# Paper Algorithm 1 / Fig. 2 constants [likely]; see paper-notes §4.
N_MU, N_SIGMA, R_MU, R_SIGMA = 0.5, 1.25, 0.1, 0.1


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(
        f"generator={generator!r}: noisy layers draw only from their own generator, never the global RNG; "
        "pass a torch.Generator seeded from the run seed (shared by all noisy layers) or an int seed"
    )


class NoisyIdentity(nn.Module):
    """a <- s * a + m, Algorithm 1's noise on its own (no BN): "noise added to a standard network".

    Input (N, C), (N, C, L) or (N, C, H, W); `num_features` = C. See the module docstring for the
    distribution, the per-position choice and the generator. The last train() draw is kept as `last_scale`,
    `last_shift` (shape of the input, detached) so measurements can replay it (`frozen_noise`).
    """

    def __init__(self, num_features: int, *, generator: torch.Generator | int, n_mu: float = N_MU,
                 n_sigma: float = N_SIGMA, r_mu: float = R_MU, r_sigma: float = R_SIGMA,
                 per_position: bool = True):
        super().__init__()
        if not (n_mu >= 0 and n_sigma >= 1 and r_mu >= 0 and r_sigma >= 0):
            raise ValueError(
                f"noise constants n_mu={n_mu}, n_sigma={n_sigma}, r_mu={r_mu}, r_sigma={r_sigma} must satisfy "
                "n_mu >= 0, n_sigma >= 1 (sigma_j ~ U(1, n_sigma)), r_mu >= 0, r_sigma >= 0"
            )
        self.num_features = num_features
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma
        self.per_position = per_position
        self.generator = _as_generator(generator)
        self.frozen = False  # set by frozen_noise(): replay the last draw instead of drawing
        self.last_scale: torch.Tensor | None = None
        self.last_shift: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, n_mu={self.n_mu}, n_sigma={self.n_sigma}, r_mu={self.r_mu}, "
                f"r_sigma={self.r_sigma}, per_position={self.per_position}")

    def _draw(self, shape: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale s, shift m), each of `shape`; draw order: mu, sigma (per unit), then m, s (per element)."""
        if len(shape) not in (2, 3, 4) or shape[1] != self.num_features:
            raise ValueError(f"input has shape {tuple(shape)}; expected (N, {self.num_features}), "
                             f"(N, {self.num_features}, L) or (N, {self.num_features}, H, W)")
        gen, device = self.generator, self.generator.device
        spatial = (1,) * (len(shape) - 2)
        unit_shape = (1, shape[1]) + spatial  # broadcast over samples and positions
        element_shape = shape if self.per_position else (shape[0], shape[1]) + spatial

        def empty(size):
            return torch.empty(size, device=device, dtype=dtype)

        # in place on fresh buffers: uniform_(low, high) and normal_(0, std) take the generator's draws of
        # torch.rand / torch.randn and scale them in the same pass, so each element tensor costs its draw and
        # one broadcast add_ instead of the draw and two arithmetic passes (module docstring: measured)
        mu = empty(unit_shape).uniform_(-self.n_mu, self.n_mu, generator=gen)
        sigma = empty(unit_shape).uniform_(1.0, self.n_sigma, generator=gen)
        shift = empty(element_shape).uniform_(-self.r_mu, self.r_mu, generator=gen).add_(mu)  # U(mu_j -+ r_mu)
        scale = empty(element_shape).normal_(0.0, self.r_sigma, generator=gen).add_(sigma)  # N(sigma_j, r_sigma)
        return scale.expand(shape), shift.expand(shape)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return a
        if self.frozen:
            if self.last_scale is None or self.last_scale.shape != a.shape:
                raise RuntimeError(
                    f"frozen noise has no draw for input shape {tuple(a.shape)} (last draw: "
                    f"{None if self.last_scale is None else tuple(self.last_scale.shape)}); run the training "
                    "forward on this batch before measuring"
                )
            scale, shift = self.last_scale, self.last_shift
        else:
            scale, shift = self._draw(a.shape, a.dtype)
            scale, shift = scale.to(a.device), shift.to(a.device)
            self.last_scale, self.last_shift = scale, shift
        # shift + scale * a in one pass (not two and a temporary); scale, shift are constants: no gradient
        # into the draws, and dz/da = scale as before
        return torch.addcmul(shift, scale, a)


class NoisyBatchNorm1d(nn.Module):
    """z = BatchNorm1d(y) (batch statistics in train(), running ones in eval()), then Algorithm 1 noise.

    A container of `bn` (a plain nn.BatchNorm1d, so `models.norm_layers` and `BoundCapture` find
    it and see the clean BN output z and dL/dz) and `noise` (a `NoisyIdentity`). Noise only in
    train() mode; running statistics are those of the clean BN input.
    """

    batchnorm_type: type[nn.Module] = nn.BatchNorm1d

    def __init__(self, num_features: int, eps: float = 1e-5, *, generator: torch.Generator | int,
                 n_mu: float = N_MU, n_sigma: float = N_SIGMA, r_mu: float = R_MU, r_sigma: float = R_SIGMA,
                 per_position: bool = True):
        super().__init__()
        self.bn = self.batchnorm_type(num_features, eps=eps)
        self.noise = NoisyIdentity(num_features, generator=generator, n_mu=n_mu, n_sigma=n_sigma,
                                   r_mu=r_mu, r_sigma=r_sigma, per_position=per_position)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.noise(self.bn(y))


class NoisyBatchNorm2d(NoisyBatchNorm1d):
    """z = BatchNorm2d(y), then Algorithm 1 noise: NoisyBatchNorm1d for (N, C, H, W) conv activations.

    Identical except that `bn` is an nn.BatchNorm2d (statistics over every (sample, h, w) of a
    channel, m = N * H * W), so BatchNorm2d-aware code (`capture.BoundCapture`) finds it. A subclass,
    so code that recognises noisy BN by `isinstance(module, NoisyBatchNorm1d)` treats both alike.
    """

    batchnorm_type = nn.BatchNorm2d


@contextlib.contextmanager
def frozen_noise(model: nn.Module) -> Iterator[None]:
    """Within: every NoisyIdentity of `model` replays its last train() draw and advances no generator."""
    modules = [module for module in model.modules() if isinstance(module, NoisyIdentity)]
    previous = [module.frozen for module in modules]
    try:
        for module in modules:
            module.frozen = True
        yield
    finally:
        for module, was in zip(modules, previous):
            module.frozen = was
