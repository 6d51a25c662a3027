"""The prover's reach: a formula that is BatchNorm up to a factor depending on m is proved for general m.

An unbiased variance, var_u = (m/(m - 1)) (1/m) sum_i (y_i - mu)^2, leaves a slack with a factor 1/(m - 1)
whose sign SymPy cannot know for a positive-integer m (m = 1 is allowed by the symbol). `theory.signs`
builds in m >= 2 (every statement assumes it); then thm4.1's derived analogue is proved, not `checked`.
"""

from __future__ import annotations

import textwrap

import pytest
import sympy as sp

from theory import activation_bound
from theory.batch_algebra import m
from theory.claims import Status
from theory.concrete import agreement_at_points
from theory.derive import derive
from theory.normaliser import eps, g_hat, gamma, sigma
from theory.normalisers import REGISTRY, load_normaliser_file
from theory.signs import is_nonnegative, is_positive

UNBIASED_FILE = '''
"""BatchNorm with the unbiased variance (m - 1 in the denominator), as torch.var's default."""

import sympy as sp

from theory.batch_algebra import batch_mean, m, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
var_u = sp.Symbol("var_u", nonnegative=True)

UNBIASED = Normaliser(
    name="bn_unbiased_variance",
    title="BatchNorm, unbiased variance",
    axis="batch: one unit over the m samples",
    statistics=((mu, batch_mean(lambda i: y[i], "i")),
                (var_u, m / (m - 1) * batch_mean(lambda i: (y[i] - mu) ** 2, "i"))),
    hat=lambda sample: (sample - mu) / sp.sqrt(var_u + eps),
    scale=sp.sqrt(var_u + eps),
    scale_of_sigma={var_u: sigma**2 - eps},
)
'''


@pytest.fixture(scope="module")
def unbiased(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "unbiased.py"
    path.write_text(textwrap.dedent(UNBIASED_FILE).lstrip(), encoding="utf-8")
    (normaliser,) = load_normaliser_file(path)
    yield normaliser
    REGISTRY.pop(normaliser.name, None)


def test_signs_build_in_a_batch_of_two_or_more():
    assert is_nonnegative(1 / (m - 1)) and is_positive((m - 1) / m) and is_positive(m / (m - 1))
    assert not is_nonnegative(m - 3)  # m = 2 gives -1: the assumption is m >= 2, not more
    assert not is_positive(m - 2)  # m = 2 gives 0
    assert not (1 / (m - 1)).is_nonnegative  # what SymPy alone says: m = 1 is not excluded by the symbol


def test_unbiased_variance_thm41_is_proved_for_general_m(unbiased):
    derivation = derive(unbiased)
    result = activation_bound.establish(derivation, ((), "not computed here"))["thm4.1"]
    assert result.status is Status.PROVED and result.general_m, result.evidence
    assert result.measured_check == "identity"  # equality at eps = 0, as for BatchNorm
    lhs = derivation.in_sigma(derivation.grad_sq_norm)
    rhs = activation_bound.bound_expressions(derivation)["thm4.1"]
    # ||yhat||^2 = (m - 1) var_u/sigma^2 and d = yhat/(m - 1): the <g,yhat>^2 term is 1/(m - 1), and eps leaves
    # gamma^2 <g,yhat>^2 eps / ((m - 1) sigma^4) of slack
    assert sp.simplify(rhs - lhs - gamma**2 * g_hat**2 * eps / ((m - 1) * sigma**4)) == 0
    assert sp.simplify(rhs.subs(eps, 0) - lhs.subs(eps, 0)) == 0


@pytest.mark.parametrize("size", [2, 3])
def test_unbiased_variance_closed_form_agrees_with_the_concrete_route(unbiased, size):
    """The concrete route evaluates the statistics at m = size (a symbolic m left in them made this fail)."""
    row = agreement_at_points(derive(unbiased), size)
    assert row["jacobian_agree"] == row["grad_sq_norm_agree"] == row["points"] > 0, row
