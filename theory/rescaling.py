"""obs4.3: BatchNorm can undo itself, so it keeps every standard optimum, yet its gradient reduction stays.

For a normaliser of the paper's form, z_i = gamma * hat(y_i) + beta with hat affine in the sample,
hat(s) = (s - shift) / scale. Choosing

    gamma = 1 / (d hat / d s) = scale  (= sigma = sqrt(var + eps) for BatchNorm),
    beta  = the root of hat          (= mu),

gives z_i = y_i for every batch and every m: any activations the standard network produces, the
BN network produces too, so minima of the standard landscape are preserved. Both settings are
*derived* here (derivative and root of the normaliser's own `hat`), then substituted into the
forward formula, once with the statistics as symbols and once with them inlined as batch sums of
symbolic size m; each residual z_k - y_k must simplify to 0.

At that configuration z = y, so the downstream network sees the standard network's activations
and g = dL-hat/dz = dL/dy exactly (the identification the paper's proofs make is exact here). The
derived ||dL-hat/dy||^2 with gamma = sigma is then compared with ||g||^2 = ||dL/dy||^2:

    reduction = ||g||^2 - ||dL-hat/dy||^2 |_{gamma = sigma}

must be a positive-definite diagonal quadratic form in (<1,g>, <g,yhat>): nonnegative, and zero
exactly when g is orthogonal to 1 and to yhat. That is the paper's point: the reduction of thm4.1
is not a rescaling effect, since it survives the one gamma that makes BN the identity map.

"Minima are preserved" needs gamma and beta to be free per group. For BatchNorm a group is one
unit over the batch and gamma_j, beta_j are that unit's parameters. For normalisers of the same
form over features or groups of one sample (LayerNorm, GroupNorm) the groups are samples while
gamma, beta are per feature and shared by all samples, so gamma = sigma can be set for one sample
only: the algebra still holds per group, and the status is `conditional` on that.
"""

from __future__ import annotations

import sympy as sp

from theory.batch_algebra import k, y
from theory.claims import ACTIVATION_ASSUMPTIONS, G1, G2, ClaimResult, Status, to_latex
from theory.derive import Derivation
from theory.normaliser import beta, g_hat, gamma, sigma
from theory.signs import is_positive
from theory.weight_space import normalises_over_batch

STATEMENT_LATEX = (
    r"\gamma = \sigma_j,\ \beta = \mu_j \Rightarrow z_j = y_j;\ \text{and then } "
    r"\|\nabla_{y_j}\hat{\mathcal{L}}\|^2 = \|g\|^2 - \frac{\langle\mathbf{1},g\rangle^2}{m}"
    r" - \left(1 + \frac{\epsilon}{\sigma_j^2}\right)\frac{\langle g,\hat{y}_j\rangle^2}{m}"
    r" \le \|g\|^2 = \|\nabla_{y_j}\mathcal{L}\|^2"
)


def identity_configuration(derivation: Derivation) -> dict[sp.Symbol, sp.Expr]:
    """{gamma: scale, beta: shift} making z = y, derived by inverting the affine map hat.

    Raises ValueError if hat is not affine in the sample (then no constant gamma, beta invert it).
    """
    normaliser = derivation.normaliser
    sample = sp.Dummy("s", real=True)
    hat = normaliser.hat(sample)
    slope = sp.simplify(sp.diff(hat, sample))
    if sp.simplify(sp.diff(hat, sample, 2)) != 0 or slope.has(sample):
        raise ValueError(f"{normaliser.name}: hat(s) = {hat} is not affine in s, so no constant gamma, beta "
                         "make the normaliser the identity; obs4.3 applies to normalisers of the paper's form")
    (shift,) = sp.solve(sp.Eq(hat, 0), sample)
    return {gamma: sp.simplify(1 / slope), beta: shift}


def forward_residuals(derivation: Derivation) -> tuple[sp.Expr, sp.Expr]:
    """z_k - y_k at the identity configuration: (statistics as symbols, statistics inlined as sums)."""
    normaliser = derivation.normaliser
    config = identity_configuration(derivation)
    with_symbols = sp.simplify(normaliser.forward(y[k]).subs(config) - y[k])
    inlined_config = {symbol: normaliser.inline(value) for symbol, value in config.items()}
    with_sums = sp.simplify(normaliser.forward_inlined(k).subs(inlined_config) - y[k])
    return with_symbols, with_sums


def gradient_reduction(derivation: Derivation) -> tuple[sp.Expr, sp.Expr]:
    """(||dL-hat/dy||^2 at gamma = sigma, the reduction ||g||^2 - that), both in sigma and eps."""
    lhs = derivation.in_sigma(derivation.grad_sq_norm)
    at_identity = sp.simplify(lhs.subs(gamma, sigma))
    return at_identity, sp.simplify(G2 - at_identity)


def reduction_is_positive_definite(reduction: sp.Expr) -> tuple[bool, dict]:
    """True iff reduction = a <1,g>^2 + b <g,yhat>^2 with a, b > 0 under the symbols' assumptions.

    Returns (verdict, {monomial: coefficient}) so the evidence can show the coefficients.
    """
    numerator, denominator = sp.fraction(sp.together(reduction))
    poly = sp.Poly(sp.expand(numerator), G1, g_hat)
    coefficients = {str(sp.Mul(*[v**e for v, e in zip((G1, g_hat), monom)])): sp.simplify(c / denominator)
                    for monom, c in poly.terms()}
    diagonal = set(poly.monoms()) == {(2, 0), (0, 2)}
    positive = all(is_positive(c) for c in coefficients.values())
    return bool(diagonal and positive), coefficients


def result_key(normaliser) -> tuple:
    """What obs4.3 depends on: the formula and the axis word, which decides the condition (BatchNorm = l2)."""
    return normaliser.statement_key(), normaliser.axis.partition(":")[0].strip()


RESULT_KEY = result_key


def establish(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    normaliser = derivation.normaliser
    if not normaliser.paper_form:
        return {}
    config = identity_configuration(derivation)
    with_symbols, with_sums = forward_residuals(derivation)
    at_identity, reduction = gradient_reduction(derivation)
    definite, coefficients = reduction_is_positive_definite(reduction)
    proved = with_symbols == 0 and with_sums == 0 and definite
    per_batch = normalises_over_batch(normaliser)
    status = (Status.PROVED if per_batch else Status.CONDITIONAL) if proved else Status.REFUTED
    conditions = () if per_batch else (
        r"\gamma, \beta \text{ free per group: here groups are samples (" + normaliser.axis.split(":")[0]
        + r"\text{ axis) while } \gamma, \beta \text{ are shared across samples, so } \gamma = \sigma "
        r"\text{ can undo the normaliser for one sample only}",)
    coefficient_text = ", ".join(f"{monomial}: {sp.sstr(c)}" for monomial, c in coefficients.items())
    result = ClaimResult(
        # measured as ||dL-hat/dy||^2 <= (gamma^2/sigma^2)||g||^2, whose slack is the reduction itself
        claim="obs4.3", normaliser=normaliser.name, status=status, conditions=conditions, measured_check="bound",
        general_m=True, source="Section 4.1, Observation 4.3 (BN does more than rescaling)",
        statement_latex=STATEMENT_LATEX, assumptions=ACTIVATION_ASSUMPTIONS[:4],
        derived_latex=(rf"\gamma = {to_latex(config[gamma])},\ \beta = {to_latex(config[beta])};\ "
                       rf"\|\nabla_{{y_j}}\hat{{\mathcal{{L}}}}\|^2\big|_{{\gamma=\sigma}} = {to_latex(at_identity)}"),
        slack_latex=(rf"\|g\|^2 - \|\nabla_{{y_j}}\hat{{\mathcal{{L}}}}\|^2\big|_{{\gamma=\sigma}} = {to_latex(reduction)};"
                     rf"\ \text{{residuals }} z_k - y_k = {sp.latex(with_symbols)}\ \text{{(statistics as symbols)}},\ "
                     rf"{sp.latex(with_sums)}\ \text{{(inlined batch sums, symbolic }} m)"),
        equality="reduction = 0 iff <1,g> = 0 and <g,yhat> = 0 (g orthogonal to 1 and yhat)",
        concrete_m_checked=concrete[0],
        evidence=(
            "SymPy: gamma = 1/(d hat/ds), beta = root of hat, derived from the normaliser's forward formula; "
            "z_k - y_k simplifies to 0 with statistics as symbols and with them inlined as batch sums of "
            "symbolic m; at that gamma the derived ||dL-hat/dy||^2 falls short of ||g||^2 = ||dL/dy||^2 by a "
            f"quadratic form with coefficients {{{coefficient_text}}}, all positive"
            if proved else
            f"not shown: residuals {with_symbols}, {with_sums}; reduction {reduction} (coefficients {coefficients})"),
        extra={"identity_gamma": sp.sstr(config[gamma]), "identity_beta": sp.sstr(config[beta]),
               "reduction": sp.sstr(reduction)},
    )
    return {"obs4.3": result}
