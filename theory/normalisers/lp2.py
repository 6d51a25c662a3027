"""l2 batch normalisation of §3.3 (Santurkar et al. 2018): centre, divide by the batch l2 average.

    mu = (1/m) sum_i y_i,   n2 = (1/m) sum_i |y_i - mu|^2,   z_i = gamma (y_i - mu) / sqrt(n2 + eps) + beta

Written with |.|^2 as the paper's family ((1/m) sum |y_i - mu|^p)^(1/p) is; for real y SymPy
rewrites Abs(x)**2 as x**2 on construction, so this IS BatchNorm (biased variance, eps inside the
root) and the paper's typed statements apply. Statistics over the batch axis, as BatchNorm.
"""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
var = sp.Symbol("var", nonnegative=True)

LP2 = Normaliser(
    name="lp2",
    title="l2 batch normalisation (= BatchNorm)",
    axis="batch: one unit over the m samples (a conv channel: all sample-position pairs)",
    statistics=(
        (mu, batch_mean(lambda i: y[i], "i")),
        (var, batch_mean(lambda i: sp.Abs(y[i] - mu) ** 2, "i")),
    ),
    hat=lambda sample: (sample - mu) / sp.sqrt(var + eps),
    scale=sp.sqrt(var + eps),
    scale_of_sigma={var: sigma**2 - eps},
    paper_form=True,
)
