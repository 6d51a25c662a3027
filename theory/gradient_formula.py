"""Fact C.1 (Appendix C): the gradient through BatchNorm, compared with the derived backward map.

    dL-hat/dy = (gamma / (m sigma)) (m g - 1 <1,g> - yhat <g,yhat>),   dz/dy = (gamma/sigma)(I - 11^T/m - yhat yhat^T/m)

Typed as the paper states it, with the normaliser's own yhat and scale; applies to normalisers of
the paper's form (centre, divide by the batch standard deviation).
"""

from __future__ import annotations

import sympy as sp

from theory.batch_algebra import g, k, l, m, y
from theory.claims import ACTIVATION_ASSUMPTIONS, G1, ClaimResult, Status, to_latex
from theory.derive import Derivation
from theory.normaliser import Normaliser, g_hat, gamma

STATEMENT_LATEX = (
    r"\frac{\partial\hat{\mathcal{L}}}{\partial y_j} = \frac{\gamma}{m\sigma_j}\left(m g - \mathbf{1}\langle"
    r"\mathbf{1},g\rangle - \hat{y}_j\langle g,\hat{y}_j\rangle\right),\quad \frac{\partial z_j}{\partial y_j} = "
    r"\frac{\gamma}{\sigma_j}\left(I - \frac{\mathbf{1}\mathbf{1}^\top}{m} - \frac{\hat{y}_j\hat{y}_j^\top}{m}\right)"
)


# Results depend on the forward formula alone, not on the axis: shared by normalisers of one formula (`statements`).
RESULT_KEY = Normaliser.statement_key


def establish(derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    normaliser = derivation.normaliser
    if not normaliser.paper_form:
        return {}
    yhat = {index: normaliser.hat(y[index]) for index in (k, l)}
    scale = normaliser.scale
    paper_backward = gamma / (m * scale) * (m * g[k] - G1 - yhat[k] * g_hat)
    paper_jacobian = gamma / scale * (sp.KroneckerDelta(k, l) - 1 / m - yhat[l] * yhat[k] / m)
    backward_residual = sp.simplify(derivation.backward - paper_backward)
    jacobian_residual = sp.simplify(derivation.jacobian - paper_jacobian)
    proved = backward_residual == 0 and jacobian_residual == 0
    result = ClaimResult(
        claim="factC.1", normaliser=normaliser.name, status=Status.PROVED if proved else Status.REFUTED,
        general_m=True, source="Appendix C, Fact C.1 (gradient through BN)", statement_latex=STATEMENT_LATEX,
        assumptions=ACTIVATION_ASSUMPTIONS[:3],
        derived_latex=r"\frac{\partial z_l}{\partial y_k} = " + to_latex(derivation.jacobian),
        slack_latex=(rf"\text{{residuals: backward}} = {sp.latex(backward_residual)},\ "
                     rf"\text{{Jacobian}} = {sp.latex(jacobian_residual)}"),
        equality="identity (exact for every eps >= 0, with sigma including eps)", measured_check="identity",
        concrete_m_checked=concrete[0],
        evidence=("SymPy: derived Jacobian and backward map minus the paper's formulas simplify to 0 for "
                  "symbolic m and eps; " + concrete[1] if proved else "the residual does not simplify to 0"),
    )
    return {"factC.1": result}
