"""Every registered normaliser: statuses from the shared derivation, three float64 routes, exact checks.

Routes to dz/dy of one group y (shape (m,)), float64:

- the bridge: `numeric.jacobian(name, ...)`, lambdified from the symbolic-m derivation (general-m
  normalisers only);
- torch: `torch.func.jacrev` of `numeric.torch_forward(name)` -- the module's forward, lambdified
  from the same formula but differentiated by autograd;
- a closed form typed in this file from paper-notes §1-2: (gamma/sigma)(I - 11^T/m - yhat yhat^T/m)
  for the BatchNorm formula (BatchNorm, LayerNorm, GroupNorm, l2), (gamma/rms)(I - yhat yhat^T/m) for
  RMSNorm, (gamma/||v||)(I - vhat vhat^T) for WeightNorm.

l1 and l-inf have no closed form in batch moments: their torch Jacobian is compared with the exact
concrete-m Jacobian (`theory.concrete`) at exact rational points instead; their closed forms on a smooth
piece and their own thm4.1 analogue are tested in `test_theory_lp_analogues`. Tolerances: `tests.tolerances`.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import assume, example, given, settings

from tests.strategies import (
    batches_with_eps,
    batches_with_grads,
    batches_with_grads_and_eps,
    gammas,
)
from tests.tolerances import (
    assert_at_most,
    assert_close,
    centring_condition,
    grad_sq_norm_tolerance,
    jacobian_entry_tolerance,
)
from theory import numeric
from theory.activation_bound import bound_expressions
from theory.batch_algebra import NoClosedForm, g, m, mixed_sum, y
from theory.concrete import (
    concrete_jacobian,
    concrete_jacobian_at,
    differentiable_at,
    exact_points_for,
)
from theory.derive import derive
from theory.normaliser import Normaliser, eps, g_hat, gamma, sigma
from theory.normalisers import BATCHNORM, REGISTRY
from theory.statements import Status, establish_all

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)
BATCHNORM_FORMULA = ("batchnorm", "layernorm", "groupnorm", "lp2")
GENERAL_M = (*BATCHNORM_FORMULA, "rmsnorm", "weightnorm")
CONCRETE_ONLY = ("lp1", "lpinf")
SHIPPED = GENERAL_M + CONCRETE_ONLY
JACOBIAN_ROUTES = settings(max_examples=min(settings().max_examples, 500))
M2_BATCH = np.array([0.0, 1.0])
HUGE_OFFSET_BATCH = 1e3 + 1e-3 * np.array([-1.0, 1.0, 0.3])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def claims() -> dict:
    """establish_all for every shipped normaliser (disk-cached; cold, the statement modules take minutes)."""
    return {name: establish_all(REGISTRY[name]) for name in SHIPPED}


# --- float64 references, typed here ---------------------------------------------------------------


def _batchnorm_form(batch, gamma_value, eps_value):
    centred = batch - batch.mean()
    scale = np.sqrt(np.mean(centred**2) + eps_value)
    yhat = centred / scale
    size = batch.shape[0]
    return scale, yhat, gamma_value / scale * (np.eye(size) - 1.0 / size - np.outer(yhat, yhat) / size)


def _rmsnorm_form(batch, gamma_value, eps_value):
    scale = np.sqrt(np.mean(batch**2) + eps_value)
    yhat = batch / scale
    return scale, yhat, gamma_value / scale * (np.eye(batch.shape[0]) - np.outer(yhat, yhat) / batch.shape[0])


def _weightnorm_form(batch, gamma_value, eps_value):
    scale = np.linalg.norm(batch)
    vhat = batch / scale
    return scale, vhat, gamma_value / scale * (np.eye(batch.shape[0]) - np.outer(vhat, vhat))


CLOSED_FORMS = {**{name: _batchnorm_form for name in BATCHNORM_FORMULA},
                "rmsnorm": _rmsnorm_form, "weightnorm": _weightnorm_form}
CENTRING = set(BATCHNORM_FORMULA) | set(CONCRETE_ONLY)


def _condition(name: str, batch, eps_value) -> float:
    """Centring condition number for normalisers that subtract the mean; 1 for those that do not."""
    return centring_condition(batch, eps_value) if name in CENTRING else 1.0


def _torch_jacobian(name: str, batch, gamma_value: float, eps_value: float) -> np.ndarray:
    forward = numeric.torch_forward(name)
    x = torch.from_numpy(np.array(batch, dtype=np.float64))
    return torch.func.jacrev(lambda v: forward(v, (0,), eps_value, gamma_value, 0.0))(x).numpy()


def _defined(name: str, batch, eps_value) -> bool:
    """sigma > 0: WeightNorm has no eps, so v = 0 (a constant batch at offset 0) is outside its domain."""
    with np.errstate(all="ignore"):
        scale, _, _ = CLOSED_FORMS[name](batch, 1.0, eps_value)
    return bool(np.isfinite(scale) and scale > 1e-150)


# --- the registry --------------------------------------------------------------------------------


def test_registry_discovers_every_shipped_normaliser_module():
    assert set(SHIPPED) <= set(REGISTRY)
    assert REGISTRY["batchnorm"] is BATCHNORM
    for name, normaliser in REGISTRY.items():
        assert isinstance(normaliser, Normaliser) and normaliser.name == name


@pytest.mark.parametrize("name", BATCHNORM_FORMULA)
def test_layernorm_groupnorm_and_l2_have_exactly_the_batchnorm_formula(name):
    """Only the axis differs; for real y SymPy rewrites l2's |y - mu|^2 as (y - mu)^2."""
    assert REGISTRY[name].formula_key() == BATCHNORM.formula_key()
    assert REGISTRY[name].paper_form


@pytest.mark.parametrize("name", SHIPPED)
def test_symbolic_m_closed_form_exists_exactly_for_polynomial_statistics(name):
    if name in CONCRETE_ONLY:
        with pytest.raises(NoClosedForm, match="Abs|maximum"):
            derive(REGISTRY[name])
    else:
        assert derive(REGISTRY[name]).grad_sq_norm.has(G2)


# --- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_thm41_status_is_present_and_every_statement_is_for_general_m(claims, name):
    """l1 and l-inf too: on a smooth piece (sign pattern, active sample) their closed forms hold for symbolic m."""
    results = claims[name]
    assert "thm4.1" in results, sorted(results)
    for claim_id, result in results.items():
        assert result.general_m is True, (claim_id, result.evidence)


@pytest.mark.parametrize("name", GENERAL_M)
def test_thm41_analogue_is_proved_for_every_general_m_normaliser(claims, name):
    result = claims[name]["thm4.1"]
    assert result.status is Status.PROVED, result.evidence
    assert result.counterexample is None


def test_rmsnorm_thm41_analogue_removes_only_the_yhat_term():
    """Derived: (gamma^2/sigma^2)(||g||^2 - <g,yhat>^2/m); exact value minus it = -gamma^2 <g,yhat>^2 eps/(m sigma^4)."""
    derivation = derive(REGISTRY["rmsnorm"])
    bound = bound_expressions(derivation)["thm4.1"]
    assert sp.simplify(bound - gamma**2 / sigma**2 * (G2 - g_hat**2 / m)) == 0
    exact = derivation.in_sigma(derivation.grad_sq_norm)
    assert sp.simplify(bound - exact - gamma**2 * g_hat**2 * eps / (m * sigma**4)) == 0


def test_weightnorm_gradient_identity_is_exact(claims):
    """||grad_v||^2 = (gamma^2/||v||^2)(||g||^2 - <g, vhat>^2), vhat = v/||v||: no slack at all."""
    derivation = derive(REGISTRY["weightnorm"])
    residual = derivation.in_sigma(derivation.grad_sq_norm) - gamma**2 / sigma**2 * (G2 - g_hat**2)
    assert sp.simplify(residual) == 0
    assert claims["weightnorm"]["thm4.1"].equality.startswith("identity")


# --- general m: three routes to the Jacobian, ||J^T g||^2, thm4.1 -----------------------------------


@pytest.mark.parametrize("name", GENERAL_M)
@JACOBIAN_ROUTES
@given(case=batches_with_eps(), gamma_value=gammas())
@example(case=(M2_BATCH, 0.0), gamma_value=1.0)
@example(case=(HUGE_OFFSET_BATCH, 0.0), gamma_value=-2.0)
@example(case=(np.full(3, -999.9), 1e-5), gamma_value=1.0)
def test_bridge_torch_and_closed_form_jacobians_agree(name, case, gamma_value):
    batch, eps_value = case
    assume(_defined(name, batch, eps_value))
    scale, _, closed = CLOSED_FORMS[name](batch, gamma_value, eps_value)
    tolerance = jacobian_entry_tolerance(batch.shape[0], _condition(name, batch, eps_value))
    bridge = numeric.jacobian(name, batch, gamma_value, eps_value)
    autograd = _torch_jacobian(name, batch, gamma_value, eps_value)
    entry_scale = abs(gamma_value) / scale
    assert_close(bridge, closed, tolerance, entry_scale, context=f"{name}: bridge vs typed closed form")
    assert_close(autograd, closed, tolerance, entry_scale, context=f"{name}: jacrev(torch_forward) vs closed form")


def _sides(name, batch, grad, gamma_value, eps_value):
    """(||J^T g||^2 by autograd, closed form from the bridge, thm4.1 RHS from the bridge, tolerance, scale)."""
    scale, yhat, _ = CLOSED_FORMS[name](batch, gamma_value, eps_value)
    direct = float(np.sum((_torch_jacobian(name, batch, gamma_value, eps_value).T @ grad) ** 2))
    invariants = (float(grad @ grad), float(grad.sum()), float(grad @ yhat), batch.shape[0], gamma_value, scale)
    closed = float(numeric.grad_sq_norm(name)(*invariants, eps_value))
    bound = float(numeric.activation_bound("thm4.1", name)(*invariants))
    tolerance = grad_sq_norm_tolerance(batch.shape[0], _condition(name, batch, eps_value))
    return direct, closed, bound, tolerance, gamma_value**2 * float(grad @ grad) / scale**2


@pytest.mark.parametrize("name", GENERAL_M)
@JACOBIAN_ROUTES
@given(case=batches_with_grads_and_eps(), gamma_value=gammas())
@example(case=(M2_BATCH, np.array([1.0, 0.0]), 0.0), gamma_value=1.0)
@example(case=(HUGE_OFFSET_BATCH, np.array([1.0, -2.0, 0.5]), 1e-5), gamma_value=3.0)
def test_grad_sq_norm_closed_form_equals_autograd_and_thm41_holds(name, case, gamma_value):
    batch, grad, eps_value = case
    assume(_defined(name, batch, eps_value))
    direct, closed, bound, tolerance, scale = _sides(name, batch, grad, gamma_value, eps_value)
    assert_close(closed, direct, tolerance, scale, context=f"{name}: closed ||J^T g||^2 vs autograd")
    assert_at_most(direct, bound, tolerance, scale, context=f"{name}: thm4.1 analogue at eps={eps_value:g}")


@pytest.mark.parametrize("name", GENERAL_M)
@JACOBIAN_ROUTES
@given(case=batches_with_grads(), gamma_value=gammas())
@example(case=(M2_BATCH, np.array([1.0, 0.0])), gamma_value=1.0)
def test_thm41_analogue_is_tight_at_zero_eps(name, case, gamma_value):
    """eps = 0: every general-m analogue is an equality (the Jacobian is gamma/sigma times a projector)."""
    batch, grad = case
    assume(_defined(name, batch, 0.0))
    direct, _, bound, tolerance, scale = _sides(name, batch, grad, gamma_value, 0.0)
    assert_close(direct, bound, tolerance, scale, context=f"{name}: thm4.1 equality at eps=0")


# --- concrete m: the exact Jacobian, and l1 / l-inf -----------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("size", [2, 3])
def test_chain_rule_jacobian_at_a_point_equals_matrix_jacobian_of_the_written_out_forward(name, size):
    normaliser = REGISTRY[name]
    for point in exact_points_for(normaliser, size, 3, seed=5):
        full = concrete_jacobian(normaliser, size).xreplace(point)
        at_point = concrete_jacobian_at(normaliser, size, point)
        assert all(sp.simplify(a - b) == 0 for a, b in zip(full, at_point)), point


@pytest.mark.parametrize("name", CONCRETE_ONLY)
@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
def test_torch_module_jacobian_equals_exact_concrete_jacobian(name, size):
    normaliser = REGISTRY[name]
    for point in exact_points_for(normaliser, size, 3, seed=1):
        exact = concrete_jacobian_at(normaliser, size, {**point, gamma: sp.Integer(1)})
        batch = np.array([float(point[y[i + 1]]) for i in range(size)])
        eps_value = float(point[eps])
        autograd = _torch_jacobian(name, batch, 1.0, eps_value)
        scale, _ = numeric.scale_and_hat(name, batch, eps_value)
        tolerance = jacobian_entry_tolerance(size, centring_condition(batch, eps_value))
        assert_close(autograd, np.array(exact.tolist(), dtype=np.float64), tolerance, 1.0 / float(scale[0]),
                     context=f"{name} at {point}")


def test_kinks_are_screened_out():
    """|y_i - mu| at 0 (l1) and a max tied between different functions (l-inf, m = 3) have no Jacobian;
    at m = 2 the two l-inf deviations are the same function, so their tie is smooth."""
    at = lambda values: {**{y[i + 1]: sp.Integer(v) for i, v in enumerate(values)}, eps: sp.Integer(0)}
    assert not differentiable_at(REGISTRY["lp1"], 3, at([-1, 0, 1]))
    assert differentiable_at(REGISTRY["lp1"], 3, at([-1, 0, 2]))
    assert not differentiable_at(REGISTRY["lpinf"], 3, at([-1, 0, 1]))
    assert differentiable_at(REGISTRY["lpinf"], 2, at([0, 1]))
    with pytest.raises(ValueError, match="not differentiable"):
        concrete_jacobian_at(REGISTRY["lpinf"], 3, at([-1, 0, 1]))


def _typed_lp_forward(name: str, size: int, epsilon, gamma_value):
    """l1 / l-inf batch normalisation typed from paper-notes §4, eps added to the norm; (z, xs)."""
    xs = sp.symbols(f"x1:{size + 1}", real=True)
    mean = sum(xs) / size
    deviations = [x - mean for x in xs]
    norm = (sum(sp.Abs(d) for d in deviations) / size if name == "lp1"
            else sp.Max(*[sp.Abs(d) for d in deviations]))
    return sp.Matrix([gamma_value * d / (norm + epsilon) for d in deviations]), xs


@pytest.mark.parametrize("name", CONCRETE_ONLY)
def test_numeric_closed_forms_refuse_normalisers_without_one(name):
    batch = np.array([0.0, 1.0, 3.0])
    with pytest.raises(NoClosedForm):
        numeric.jacobian(name, batch, 1.0, 0.0)
    with pytest.raises(NoClosedForm):
        numeric.grad_sq_norm(name)


# --- the forward lambdified from the formula ----------------------------------------------------------


@pytest.mark.parametrize("name", CONCRETE_ONLY)
def test_torch_forward_of_lp_norms_matches_the_typed_formula(name):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, generator=generator, dtype=torch.float64)
    centred = x - x.mean(dim=(0, 2), keepdim=True)
    norm = (centred.abs().mean(dim=(0, 2), keepdim=True) if name == "lp1"
            else centred.abs().amax(dim=(0, 2), keepdim=True))
    expected = 2.0 * centred / (norm + 1e-3) - 1.0
    actual = numeric.torch_forward(name)(x, (0, 2), 1e-3, 2.0, -1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13)


def test_scale_and_hat_are_the_normalisers_own():
    batch = np.array([1.0, 2.0, 4.0, 7.0])
    for name, form in CLOSED_FORMS.items():
        scale, yhat = numeric.scale_and_hat(name, batch, 1e-3)
        expected_scale, expected_yhat, _ = form(batch, 1.0, 1e-3)
        np.testing.assert_allclose(scale, [expected_scale], rtol=1e-14)
        np.testing.assert_allclose(yhat, expected_yhat, rtol=1e-13)


def test_unknown_normaliser_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown normaliser 'nosuchnorm'; known: batchnorm"):
        numeric.torch_forward("nosuchnorm")


def test_exact_points_make_the_scale_rational_where_eps_allows():
    for name in ("batchnorm", "rmsnorm", "lp1"):
        normaliser = REGISTRY[name]
        for point in exact_points_for(normaliser, 4, 3):
            values = [point[y[i]] for i in range(1, 5)]
            scale, _ = numeric.scale_and_hat(name, np.array(values, dtype=np.float64), float(point[eps]))
            assert sp.Rational(point[eps]) >= 0
            exact_scale = sp.sqrt(sum(v**2 for v in values) / 4 + point[eps]) if name == "rmsnorm" else None
            assert exact_scale is None or exact_scale.is_Rational, (name, point)
            assert all(point[g[i]].is_Integer for i in range(1, 5))


# --- the torch module (empirics.norm_layers) against torch's own layers, float64 --------------------


def _module(name: str, channels: int, dims, **kwargs):
    from empirics.norm_layers import FormulaNorm

    module = FormulaNorm(name, channels, dims, **kwargs).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        module.weight.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5)
        module.bias.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
    return module


def _input(*shape) -> torch.Tensor:
    return 3.0 + 2.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("shape", [(8, 4), (6, 4, 5), (3, 4, 2, 3)])
def test_formula_batchnorm_module_equals_torch_batch_norm_in_training_mode(shape):
    from empirics.norm_layers import BATCH_DIMS

    x = _input(*shape)
    module = _module("batchnorm", 4, BATCH_DIMS[len(shape)])
    expected = torch.nn.functional.batch_norm(x, None, None, module.weight, module.bias, training=True, eps=1e-5)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
    module.eval()  # no running statistics: eval() normalises with the batch statistics too
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 4), (6, 4, 5)])
def test_formula_layernorm_module_equals_torch_layer_norm(shape):
    from empirics.norm_layers import LAYER_DIMS

    x = _input(*shape)
    module = _module("layernorm", 4, LAYER_DIMS[len(shape)])
    affine = (-1,) + (1,) * (len(shape) - 2)
    expected = (torch.nn.functional.layer_norm(x, shape[1:], eps=1e-5) * module.weight.view(affine)
                + module.bias.view(affine))
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def test_formula_groupnorm_and_rmsnorm_modules_equal_torch_layers():
    x = _input(6, 4, 5)
    groupnorm = _module("groupnorm", 4, (2, 3), groups=2)
    expected = torch.nn.functional.group_norm(x, 2, groupnorm.weight, groupnorm.bias, eps=1e-5)
    torch.testing.assert_close(groupnorm(x), expected, rtol=1e-12, atol=1e-12)
    rmsnorm = _module("rmsnorm", 4, (1, 2))
    expected = (torch.nn.functional.rms_norm(x, (4, 5), eps=1e-5) * rmsnorm.weight.view(-1, 1)
                + rmsnorm.bias.view(-1, 1))
    torch.testing.assert_close(rmsnorm(x), expected, rtol=1e-12, atol=1e-12)


def test_formula_weightnorm_reparametrises_like_torch_weight_norm():
    from empirics.norm_layers import WeightNormalisedLinear

    v = _input(3, 7)
    module = _module("weightnorm", 3, (1,), eps=0.0, channel_dim=0)
    with torch.no_grad():
        module.bias.zero_()
    torch.testing.assert_close(module(v), torch._weight_norm(v, module.weight.view(-1, 1), 0), rtol=1e-12, atol=1e-12)
    layer = WeightNormalisedLinear(7, 3).double()
    torch.testing.assert_close(layer.effective_weight(), layer.direction, rtol=1e-6, atol=1e-7)  # g = ||v|| at init


def test_formula_module_rejects_a_wrong_channel_count():
    module = _module("batchnorm", 4, (0, 2))
    with pytest.raises(ValueError, match="expected 4 channels on axis 1"):
        module(_input(6, 3, 5))
