"""The one bridge from symbols to numbers: derived SymPy expressions as NumPy callables.

`verify` and the tests call these and never import SymPy themselves. Every callable broadcasts
over NumPy arrays, so a whole table of captured (layer, channel, step) rows is evaluated at once.
Argument names follow the capture records of `empirics.capture`:

    g_sq = ||g||^2,  g_sum = <1, g>,  g_yhat = <g, yhat>,  m,  gamma,  sigma = sqrt(var + eps),  eps
"""

from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from theory.activation_bound import bound_expressions
from theory.batch_algebra import k, l, m, mixed_sum, y
from theory.derive import derive
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.normalisers import REGISTRY

_G1, _G2 = mixed_sum(0, 1), mixed_sum(0, 2)
_INVARIANT_ARGS = (_G2, _G1, g_hat, m, gamma, sigma, eps)


def _normaliser(name: str):
    if name not in REGISTRY:
        raise KeyError(f"unknown normaliser {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


@functools.cache
def grad_sq_norm(normaliser: str):
    """f(g_sq, g_sum, g_yhat, m, gamma, sigma, eps) = ||J^T g||^2, the derived closed form."""
    derivation = derive(_normaliser(normaliser))
    return sp.lambdify(_INVARIANT_ARGS, derivation.in_sigma(derivation.grad_sq_norm), "numpy")


@functools.cache
def activation_bound(claim_id: str, normaliser: str = "batchnorm"):
    """f(g_sq, g_sum, g_yhat, m, gamma, sigma) = the right side of thm4.1 (or a variant) for `normaliser`."""
    bounds = bound_expressions(derive(_normaliser(normaliser)))
    if claim_id not in bounds:
        raise KeyError(f"no activation bound {claim_id!r} for {normaliser}; known: {', '.join(bounds)}")
    return sp.lambdify(_INVARIANT_ARGS[:-1], bounds[claim_id], "numpy")


@functools.cache
def _jacobian_entry(normaliser: str):
    derivation = derive(_normaliser(normaliser))
    y_l, y_k, delta = sp.symbols("y_l y_k delta", real=True)
    entry = derivation.jacobian.subs(sp.KroneckerDelta(k, l), delta).subs({y[l]: y_l, y[k]: y_k})
    stats = list(derivation.statistics_in_moments)
    moments = sorted(set().union(*(e.free_symbols for e in derivation.statistics_in_moments.values())),
                     key=lambda s: s.name)
    entry_fn = sp.lambdify((y_l, y_k, delta, *stats, gamma, eps, m), entry, "numpy")
    stat_fns = [sp.lambdify(moments, e, "numpy") for e in derivation.statistics_in_moments.values()]
    orders = [int(s.name.split("_")[1]) for s in moments]
    return entry_fn, stat_fns, orders


def jacobian(normaliser: str, batch: np.ndarray, gamma_value: float, eps_value: float) -> np.ndarray:
    """dz/dy (m x m) of one group `batch` (shape (m,)), from the symbolic-m Jacobian entry."""
    entry_fn, stat_fns, orders = _jacobian_entry(normaliser)
    batch = np.asarray(batch, dtype=np.float64)
    moments = [np.mean(batch**order) for order in orders]
    stats = [fn(*moments) for fn in stat_fns]
    size = batch.shape[0]
    return entry_fn(batch[:, None], batch[None, :], np.eye(size), *stats, gamma_value, eps_value, size)


# --- weight space (thm4.4): the weight-space statements' block, kept separate from the above -------

from theory.weight_space import normalises_over_batch, per_unit_bound_expression, x_op_sq  # noqa: E402


@functools.cache
def weight_grad_bound(normaliser: str = "batchnorm"):
    """f(x_op_sq, g_sq, g_sum, g_yhat, m, gamma, sigma) = ||X||_2^2 * RHS_thm4.1 (thm4.4-per-unit).

    Bounds ||dL-hat/dW_{.j}||^2 = ||X^T dL-hat/dy_j||^2 for one unit j of a dense layer y = X W, with
    x_op_sq = ||X||_2^2 the squared spectral norm of the layer's input batch X (m x d) and the other
    arguments as for `activation_bound` (g = dL-hat/dz_j over the same batch). Only for normalisers
    whose groups are one unit over the batch (`weight_space.normalises_over_batch`).
    """
    target = _normaliser(normaliser)
    if not normalises_over_batch(target):
        raise KeyError(f"no per-unit weight bound for {normaliser}: its groups run over {target.axis!r}, not one "
                       "unit over the batch, so y_j = X W_(.j) is not one group; use a batch-axis normaliser")
    return sp.lambdify((x_op_sq, *_INVARIANT_ARGS[:-1]), per_unit_bound_expression(derive(target)), "numpy")
