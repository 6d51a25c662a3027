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
import sympy as sp
import torch
from torch.func import functional_call, grad, jvp, vmap

from empirics.norm_layers import BATCH_DIMS, FormulaNorm
from theory import numeric
from theory.batch_algebra import y
from theory.concrete import concrete_jacobian_at
from theory.normaliser import eps, gamma
from theory.normalisers import REGISTRY

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
    # l-inf: a batch maximum, its backward the derivative on the smooth piece (ties shared as torch's amax does)
    ("lpinf", {"dims": "batch"}, (6, 3, 5)),
    ("lpinf", {"dims": "batch"}, (7, 4)),
    ("lpinf", {"dims": "batch"}, (2, 3)),  # m = 2: the two deviations tie in exact arithmetic
    ("lpinf", {"dims": "batch"}, (4, 2, 3, 2)),
    ("lpinf", {"dims": (2,)}, (3, 4, 5)),  # instance-style: the affine applied outside the program
    ("lpinf", {"dims": (2, 3), "groups": 2}, (3, 4, 5)),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}-{kwargs['dims']}" if name == "lpinf" else
       f"{name}-{'x'.join(map(str, shape))}" for name, kwargs, shape in CASES]
MAXIMUM = [index for index, (name, _, _) in enumerate(CASES) if name == "lpinf"]
# torch.func transforms: the first placements (batchnorm, l1) and every batch-style l-inf one
FUNC_CASES = [*CASES[:3], *(CASES[i] for i in MAXIMUM if CASES[i][1]["dims"] == "batch")]
FUNC_IDS = [*IDS[:3], *(IDS[i] for i in MAXIMUM if CASES[i][1]["dims"] == "batch")]


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


def _tied_inputs(module: FormulaNorm, shape: tuple, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, upstream) with x = 1/2 + an integer batch antisymmetric within every group (the value at i and at i's
    reflection through the group sum to 1): mu = 1/2 exactly, so max_i |y_i - mu| is attained by samples of both
    signs at least twice -- ties the float forward sees as ties."""
    generator = torch.Generator().manual_seed(seed)
    view = shape if module.groups is None else (shape[0], module.groups, shape[1] // module.groups, *shape[2:])
    dims = BATCH_DIMS[len(view)] if module.dims == "batch" else module.dims
    base = torch.randint(-2, 3, view, generator=generator).to(torch.float64)
    x = (base - base.flip(dims) + 0.5).reshape(shape)
    deviation = (x.reshape(view) - 0.5).abs()
    attained = (deviation == deviation.amax(dim=dims, keepdim=True)).sum(dim=dims)
    assert bool((attained >= 2).all()), "every group must tie at its maximum"
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


@pytest.mark.parametrize(("name", "kwargs", "shape"), [CASES[i] for i in MAXIMUM], ids=[IDS[i] for i in MAXIMUM])
def test_derived_backward_of_a_maximum_at_ties_equals_autograd_of_the_forward(name, kwargs, shape):
    """Where several samples attain max_i |y_i - mu| (of both signs), the derived backward takes torch's amax
    subgradient (the gradient shared evenly among them), as autograd does: gradients and HVPs agree."""
    derived, reference = _modules(name, kwargs, shape)
    x, upstream = _tied_inputs(derived, shape)
    direction, _ = _inputs(shape, seed=2)
    results = []
    for module in (derived, reference):
        leaf = x.clone().requires_grad_(True)
        out = module(leaf)
        first = torch.autograd.grad(out, [leaf, module.weight, module.bias], upstream)
        loss = torch.sum(torch.tanh(module(leaf)) * upstream)
        (gradient,) = torch.autograd.grad(loss, leaf, create_graph=True)
        results.append((*first, *torch.autograd.grad(gradient, [leaf, module.weight], direction)))
    for what, actual, expected in zip(("dL/dy", "dL/dgamma", "dL/dbeta", "H v", "d(grad . v)/dgamma"), *results):
        _assert_close(actual, expected, f"{name} at ties {what}")


@pytest.mark.parametrize(("name", "kwargs", "shape"), FUNC_CASES, ids=FUNC_IDS)
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
@pytest.mark.parametrize("name", ["lp1", "lpinf"])
def test_derived_backward_refuses_forward_mode_with_the_way_out(name):
    derived, _ = _modules(name, {"dims": "batch"}, (6, 3, 5))
    x, direction = _inputs((6, 3, 5))
    with pytest.raises(NotImplementedError, match="derived_backward=False"):
        jvp(derived, (x,), (direction,))


def test_a_batch_maximum_takes_the_derived_backward():
    assert FormulaNorm("lpinf", 3, "batch").backward_route == "derived"
    assert FormulaNorm("lpinf", 3, "batch", derived_backward=False).backward_route.startswith("autograd")


@pytest.mark.parametrize("name", ["lp1", "lpinf"])
def test_derived_backward_equals_the_exact_concrete_jacobians_transpose(name):
    """The third route for l1 / l-inf (no symbolic-m Jacobian): the exact Jacobian of the written-out forward at
    m = 5 (theory.concrete), at a rational point on a smooth piece (no y_i at mu, one sample attains the max)."""
    batch, upstream = [3, -1, 4, 1, -5], np.array([0.3, -1.2, 0.7, 2.0, -0.4])
    gamma_value, eps_value = 1.7, 1e-3
    point = {**{y[i + 1]: sp.Integer(v) for i, v in enumerate(batch)}, eps: sp.Rational(1, 1000),
             gamma: sp.Rational(17, 10)}
    expected = np.array(concrete_jacobian_at(REGISTRY[name], len(batch), point).tolist(), dtype=np.float64).T @ upstream
    program = numeric.torch_program(name)
    values = torch.tensor(batch, dtype=torch.float64)
    gamma_t, beta_t = torch.tensor(gamma_value, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    _, stats = program.forward(values, (0,), eps_value, gamma_t, beta_t)
    actual = program.backward(values, stats, torch.tensor(upstream), [None] * len(stats), (0,), eps_value, gamma_t)[0]
    np.testing.assert_allclose(actual.numpy(), expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


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
