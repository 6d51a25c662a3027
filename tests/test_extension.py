"""The extension path: a normaliser defined in one short file, with no other edit, gets everything.

A researcher writes the forward formula below to a file anywhere, registers it with
`theory.normalisers.load_normaliser_file(path)`, and from then on it is a normaliser like the
shipped ones: `establish_all` derives its Jacobian, its thm4.1 analogue and the thm4.4 analogue its
axis calls for, with statuses, `theory.numeric` gives its numeric callables, `empirics.norm_layers.FormulaNorm` its torch module, and
`verify.pipeline.stage_theory` its section of the theory report. The files are written here to
tmp_path exactly as a user would write them.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given

from tests.strategies import batches_with_eps, batches_with_grads_and_eps, gammas
from tests.tolerances import (
    assert_close,
    centring_condition,
    grad_sq_norm_tolerance,
    jacobian_entry_tolerance,
)
from theory import numeric
from theory.batch_algebra import m, mixed_sum
from theory.derive import derive
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.normalisers import REGISTRY, load_normaliser_file
from theory.statements import Status, establish_all

# The whole extension: one file, one Normaliser. Nothing else in the repository is edited.
CENTERING_FILE = '''
"""Mean-only centring: z = gamma (y - mu) + beta, mu the batch mean; no division, hence no eps."""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser

mu = sp.Symbol("mu", real=True)

CENTERING = Normaliser(
    name="centering",
    title="Mean-only centring (no division)",
    axis="batch: one unit over the m samples",
    statistics=((mu, batch_mean(lambda i: y[i], "i")),),
    hat=lambda sample: sample - mu,
    scale=sp.Integer(1),
    scale_of_sigma={},
)
'''

POWER_STD_FILE = '''
"""BatchNorm dividing by a power of the std: z = gamma (y - mu) / (var + eps)^(p/2) + beta, p = 1/2."""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

P = sp.Rational(1, 2)
mu = sp.Symbol("mu", real=True)
var = sp.Symbol("var", nonnegative=True)

POWER_STD = Normaliser(
    name="bn_std_power_half",
    title="BatchNorm dividing by std^(1/2)",
    axis="batch: one unit over the m samples",
    statistics=((mu, batch_mean(lambda i: y[i], "i")), (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
    hat=lambda sample: (sample - mu) / (var + eps) ** (P / 2),
    scale=(var + eps) ** (P / 2),
    scale_of_sigma={var: sigma ** (2 / P) - eps},
)
'''

G1, G2 = mixed_sum(0, 1), mixed_sum(0, 2)


def _write(directory, name: str, source: str):
    path = directory / name
    path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def centering(tmp_path_factory):
    """The centring normaliser, loaded from its own file; unregistered afterwards."""
    (normaliser,) = load_normaliser_file(_write(tmp_path_factory.mktemp("user"), "centering.py", CENTERING_FILE))
    yield normaliser
    REGISTRY.pop(normaliser.name, None)


@pytest.fixture
def scratch_registry():
    """Names registered during one test are removed afterwards."""
    before = set(REGISTRY)
    yield
    for name in set(REGISTRY) - before:
        REGISTRY.pop(name)


# --- one file gives statuses, numeric callables, a module and a report section ----------------------


def test_loaded_normaliser_is_registered_and_gets_statuses(centering):
    assert REGISTRY["centering"] is centering
    results = establish_all(centering)
    thm41 = results["thm4.1"]
    assert thm41.status is Status.PROVED and thm41.general_m, thm41.evidence
    assert thm41.equality.startswith("identity")  # ||J^T g||^2 = gamma^2 (||g||^2 - <1,g>^2/m), no slack
    derivation = derive(centering)
    assert sp.simplify(derivation.in_sigma(derivation.grad_sq_norm) - gamma**2 * (G2 - G1**2 / m)) == 0
    # its groups run over the batch ("batch: ..."), so it gets thm4.4's per-unit bound and minimax form too
    assert results["thm4.4-per-unit"].status is Status.PROVED, results["thm4.4-per-unit"].evidence
    assert results["thm4.4"].status is Status.CONDITIONAL, results["thm4.4"].evidence
    json.dumps({claim: result.as_dict() for claim, result in results.items()})  # what the report reads


def test_a_per_sample_user_normaliser_gets_the_whole_matrix_thm44_analogue(tmp_path, scratch_registry):
    """The same formula with axis "features: ..." (statistics over one sample's units): the weight analogue
    follows the axis, not the name -- thm4.4-per-layer, no per-unit bound."""
    source = CENTERING_FILE.replace('name="centering"', 'name="centering_features"').replace(
        'axis="batch: one unit over the m samples"', 'axis="features: one sample over its m units"')
    (normaliser,) = load_normaliser_file(_write(tmp_path, "centering_features.py", source))
    results = establish_all(normaliser)
    assert results["thm4.4-per-layer"].status is Status.PROVED, results["thm4.4-per-layer"].evidence
    assert results["thm4.4"].status is Status.CONDITIONAL and "thm4.4-per-unit" not in results


@given(case=batches_with_eps(), gamma_value=gammas())
def test_loaded_normaliser_numeric_jacobian_equals_torch_and_closed_form(centering, case, gamma_value):
    """numeric.jacobian, jacrev of numeric.torch_forward and gamma (I - 11^T/m) agree in float64."""
    batch, eps_value = case
    size = batch.shape[0]
    closed = gamma_value * (np.eye(size) - 1.0 / size)
    forward = numeric.torch_forward("centering")
    autograd = torch.func.jacrev(lambda v: forward(v, (0,), eps_value, gamma_value, 0.0))(torch.from_numpy(batch))
    tolerance = jacobian_entry_tolerance(size, centring_condition(batch, eps_value))
    assert_close(numeric.jacobian("centering", batch, gamma_value, eps_value), closed, tolerance, abs(gamma_value),
                 context="bridge vs gamma (I - 11^T/m)")
    assert_close(autograd.numpy(), closed, tolerance, abs(gamma_value), context="jacrev vs gamma (I - 11^T/m)")


@given(case=batches_with_grads_and_eps(), gamma_value=gammas())
def test_loaded_normaliser_grad_sq_norm_and_bound_callables(centering, case, gamma_value):
    batch, grad, eps_value = case
    size = batch.shape[0]
    sigma_value, yhat = numeric.scale_and_hat("centering", batch, eps_value)
    invariants = (float(grad @ grad), float(grad.sum()), float(grad @ yhat), size, gamma_value, float(sigma_value[0]))
    direct = gamma_value**2 * float(np.sum((grad - grad.mean()) ** 2))
    tolerance = grad_sq_norm_tolerance(size, centring_condition(batch, eps_value))
    scale = gamma_value**2 * float(grad @ grad)
    assert_close(numeric.grad_sq_norm("centering")(*invariants, eps_value), direct, tolerance, scale,
                 context="closed form vs gamma^2 ||g - mean(g)||^2")
    assert_close(numeric.activation_bound("thm4.1", "centering")(*invariants), direct, tolerance, scale,
                 context="thm4.1 analogue (an identity) vs gamma^2 ||g - mean(g)||^2")


def test_loaded_normaliser_is_a_torch_module(centering):
    from empirics.norm_layers import FormulaNorm

    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    module = FormulaNorm("centering", 3, (0, 2)).double()
    with torch.no_grad():
        module.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        module.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    expected = (x - x.mean(dim=(0, 2), keepdim=True)) * module.weight.view(1, -1, 1) + module.bias.view(1, -1, 1)
    torch.testing.assert_close(module(x), expected, rtol=1e-13, atol=1e-13)


def test_loaded_normaliser_gets_a_theory_report_section(centering, tmp_path):
    from verify.pipeline import stage_theory

    theory = stage_theory(tmp_path, ("centering",))
    assert theory["centering"]["thm4.1"]["status"] == "proved"
    assert theory["centering"]["thm4.4-per-unit"]["status"] == "proved"
    assert json.loads((tmp_path / "theory.json").read_text())["centering"]["thm4.1"]["general_m"] is True
    assert "centering" in (tmp_path / "theory.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_batchnorm_with_a_power_of_the_std_is_derived_from_one_file(tmp_path, scratch_registry):
    """p = 1/2: ||J^T g||^2 keeps (2p - p^2) = 3/4 of the yhat term; the analogue is proved with slack
    gamma^2 <g,yhat>^2 eps / (4 m sigma^8) (sigma = (var + eps)^(1/4)), and the numeric routes agree."""
    (normaliser,) = load_normaliser_file(_write(tmp_path, "power_std.py", POWER_STD_FILE))
    result = establish_all(normaliser)["thm4.1"]
    assert result.status is Status.PROVED, result.evidence
    derivation = derive(normaliser)
    slack = gamma**2 * g_hat**2 * eps / (4 * m * sigma**8)
    bound = gamma**2 / sigma**4 * (G2 * sigma**2 - G1**2 * sigma**2 / m - sp.Rational(3, 4) * g_hat**2 / m)
    assert sp.simplify(bound - derivation.in_sigma(derivation.grad_sq_norm) - slack) == 0
    batch = np.array([0.5, -1.0, 2.0, 0.25])
    forward = numeric.torch_forward(normaliser.name)
    autograd = torch.func.jacrev(lambda v: forward(v, (0,), 1e-3, 2.0, 0.0))(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(numeric.jacobian(normaliser.name, batch, 2.0, 1e-3), autograd, rtol=1e-12, atol=1e-12)


# --- what goes wrong, said clearly --------------------------------------------------------------------


def test_file_without_a_normaliser_is_rejected(tmp_path):
    path = _write(tmp_path, "empty.py", "X = 1\n")
    with pytest.raises(ValueError, match="defines no theory.normaliser.Normaliser instance"):
        load_normaliser_file(path)


def test_name_taken_by_another_file_is_rejected(tmp_path, scratch_registry):
    path = _write(tmp_path, "impostor.py", CENTERING_FILE.replace('name="centering"', 'name="batchnorm"'))
    with pytest.raises(ValueError, match="'batchnorm' .* is already registered by .*batchnorm.py"):
        load_normaliser_file(path)
    assert REGISTRY["batchnorm"].title.startswith("BatchNorm")


def test_reloading_the_same_file_replaces_its_normaliser(tmp_path, scratch_registry):
    path = _write(tmp_path, "centring_again.py", CENTERING_FILE.replace('name="centering"', 'name="centring2"'))
    (first,) = load_normaliser_file(path)
    (second,) = load_normaliser_file(path)
    assert first is not second and REGISTRY["centring2"] is second


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an existing .py file"):
        load_normaliser_file(tmp_path / "nowhere.py")
