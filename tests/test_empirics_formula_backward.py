"""FormulaNorm's derived backward (theory.numeric.torch_program) against autograd through its forward, float64.

The slow, obviously correct route is the same module built with derived_backward=False: autograd
differentiates the lambdified forward op by op. A third route, for the normalisers with a symbolic-m
Jacobian, is J^T g from `numeric.jacobian`. Everything is float64, so only summation order separates the
routes: RTOL covers it (m <= 60 values per group, kappa ~ 10 here; tests.tolerances' m u kappa ~ 1e-13).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, jvp, vmap

from empirics.norm_layers import FormulaNorm
from theory import numeric

RTOL = 1e-10
# (name, module arguments, input shape): every placement FormulaNorm supports, batch-style (affine fused into
# the program) and the others (affine applied outside it)
CASES = [
    ("batchnorm", {"dims": "batch"}, (6, 3, 5)),
    ("lp1", {"dims": "batch"}, (6, 3, 5)),
    ("lp1", {"dims": "batch"}, (7, 4)),
    ("lp2", {"dims": "batch"}, (4, 2, 3, 2)),
    ("layernorm", {"dims": (1, 2)}, (5, 3, 4)),
    ("rmsnorm", {"dims": (1,)}, (5, 6)),
    ("groupnorm", {"dims": (2, 3), "groups": 2}, (3, 4, 5)),
    ("batchnorm", {"dims": (2,)}, (3, 4, 5)),  # instance-style groups: one parameter entry over several groups
    ("weightnorm", {"dims": (1,), "channel_dim": 0, "eps": 0.0}, (4, 6)),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, _, shape in CASES]


def _modules(name: str, kwargs: dict, shape: tuple) -> tuple[FormulaNorm, FormulaNorm]:
    """(derived, autograd) twins with non-trivial affine parameters."""
    channel_dim = kwargs.get("channel_dim", 1)
    derived = FormulaNorm(name, shape[channel_dim], **kwargs).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        derived.weight.uniform_(0.5, 2.0, generator=generator)
        derived.bias.uniform_(-1.0, 1.0, generator=generator)
    reference = copy.deepcopy(derived)
    reference._program, reference.backward_route = None, "autograd"
    assert derived.backward_route == "derived"
    return derived, reference


def _inputs(shape: tuple, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=generator) * 2 + 0.5
    return x, torch.randn(shape, dtype=torch.float64, generator=generator)


def _assert_close(actual, expected, what: str) -> None:
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), 1e-300)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale, msg=lambda text: f"{what}: {text}")


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES, ids=IDS)
def test_derived_backward_equals_autograd_of_the_forward(name, kwargs, shape):
    derived, reference = _modules(name, kwargs, shape)
    x, upstream = _inputs(shape)
    results = []
    for module in (derived, reference):
        leaf = x.clone().requires_grad_(True)
        out = module(leaf)
        results.append((out, *torch.autograd.grad(out, [leaf, module.weight, module.bias], upstream)))
    for what, actual, expected in zip(("z", "dL/dy", "dL/dgamma", "dL/dbeta"), *results):
        _assert_close(actual, expected, f"{name} {what}")


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES, ids=IDS)
def test_derived_backward_differentiates_again(name, kwargs, shape):
    """Hessian-vector products (double backward): the backward is torch ops on the saved input and statistics."""
    derived, reference = _modules(name, kwargs, shape)
    x, upstream = _inputs(shape)
    direction, _ = _inputs(shape, seed=2)
    products = []
    for module in (derived, reference):
        leaf = x.clone().requires_grad_(True)
        loss = torch.sum(torch.tanh(module(leaf)) * upstream)  # a curved loss: the HVP is not J^T J alone
        (gradient,) = torch.autograd.grad(loss, leaf, create_graph=True)
        products.append(torch.autograd.grad(gradient, [leaf, module.weight], direction))
    for what, actual, expected in zip(("H v", "d(grad . v)/dgamma"), *products):
        _assert_close(actual, expected, f"{name} {what}")


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES[:3], ids=IDS[:3])
def test_derived_backward_under_torch_func_grad_vmap_and_grad_of_grad(name, kwargs, shape):
    derived, reference = _modules(name, kwargs, shape)
    x, upstream = _inputs(shape)
    stacked = torch.stack([x, x * 0.5 - 1.0, x.flip(0)])
    results = []
    for module in (derived, reference):
        params = dict(module.named_parameters())

        def loss(point, params=params, module=module):
            return torch.sum(torch.tanh(functional_call(module, params, (point,))) * upstream)

        hvp = grad(lambda point, loss=loss: torch.sum(grad(loss)(point) * upstream))(x)
        results.append((vmap(grad(loss))(stacked), hvp))
    for what, actual, expected in zip(("vmap(grad)", "grad of grad"), *results):
        _assert_close(actual, expected, f"{name} {what}")


# torch.func.jvp loads torch's jvp decompositions, built with the deprecated torch.jit.script: torch's own warning
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_derived_backward_refuses_forward_mode_with_the_way_out():
    derived, _ = _modules("lp1", {"dims": "batch"}, (6, 3, 5))
    x, direction = _inputs((6, 3, 5))
    with pytest.raises(NotImplementedError, match="derived_backward=False"):
        jvp(derived, (x,), (direction,))


def test_a_batch_maximum_keeps_autograd_and_says_why():
    module = FormulaNorm("lpinf", 3, "batch")
    assert module.backward_route.startswith("autograd") and "maximum" in module.backward_route


@pytest.mark.parametrize("name", ["batchnorm", "lp2", "layernorm"])
def test_derived_backward_equals_the_symbolic_jacobians_transpose(name):
    """The third route: J^T g with J from the theory's symbolic-m Jacobian entry (one group of m values)."""
    rng = np.random.default_rng(3)
    batch, upstream = rng.normal(size=8) * 3 + 1, rng.normal(size=8)
    gamma_value, eps_value = 1.7, 1e-3
    expected = numeric.jacobian(name, batch, gamma_value, eps_value).T @ upstream
    program = numeric.torch_program(name)
    values = torch.tensor(batch)
    gamma_t, beta_t = torch.tensor(gamma_value, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    _, stats = program.forward(values, (0,), eps_value, gamma_t, beta_t)
    actual = program.backward(values, stats, torch.tensor(upstream), [None] * len(stats), (0,), eps_value, gamma_t)[0]
    np.testing.assert_allclose(actual.numpy(), expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())
