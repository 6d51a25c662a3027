"""Numeric cross-check of the derived Jacobian against PyTorch's own BatchNorm, in float64.

Third route beside the symbolic-m derivation and the concrete-m Jacobian: `torch.func.jacrev` of
`torch.nn.functional.batch_norm` in training mode (batch statistics, biased variance in the
normalisation), compared entry by entry with `theory.numeric.jacobian`.
"""

from __future__ import annotations

import numpy as np
import torch

from theory import numeric


def _torch_batchnorm_jacobian(batch: np.ndarray, gamma: float, eps: float) -> np.ndarray:
    weight = torch.tensor([gamma], dtype=torch.float64)

    def forward(values: torch.Tensor) -> torch.Tensor:
        # (m,) -> (m, 1): one channel whose batch is the m values; training=True uses batch statistics.
        return torch.nn.functional.batch_norm(values[:, None], None, None, weight, None, training=True, eps=eps)[:, 0]

    return torch.func.jacrev(forward)(torch.tensor(batch, dtype=torch.float64)).numpy()


def batchnorm_jacobian_agreement(n_cases: int = 200, seed: int = 0) -> dict:
    """Max entry-wise difference of the derived and torch Jacobians, in units of |gamma|/sigma.

    Batches span sizes 2..64, scales 1e-3..1e3 and eps in {1e-12, 1e-5, 1e-1, 1} (torch refuses eps = 0
    in training mode; eps = 0 is covered symbolically).
    """
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n_cases):
        size = int(rng.integers(2, 65))
        scale = 10.0 ** rng.uniform(-3, 3)
        batch = rng.normal(size=size) * scale + rng.normal() * scale
        eps = float(rng.choice([1e-12, 1e-5, 1e-1, 1.0]))
        gamma = float(rng.normal())
        derived = numeric.jacobian("batchnorm", batch, gamma, eps)
        reference = _torch_batchnorm_jacobian(batch, gamma, eps)
        # Relative to |gamma|/sigma, the scale of J's entries: at m = 2 with eps << var, J itself is ~0
        # (P annihilates both directions) and a ratio to max|J| would only measure cancellation noise.
        scale_of_entries = abs(gamma) / np.sqrt(batch.var() + eps)
        worst = max(worst, float(np.max(np.abs(derived - reference)) / scale_of_entries))
    return {"route": "torch.func.jacrev of F.batch_norm (training mode), float64", "n": n_cases,
            "max_err_relative_to_gamma_over_sigma": worst}
