"""l1 batch normalisation of §3.3 (Santurkar et al. 2018): centre, divide by the mean absolute deviation.

    mu = (1/m) sum_i y_i,   mad = (1/m) sum_i |y_i - mu|,   z_i = gamma (y_i - mu) / (mad + eps) + beta

eps is added to the l1 average itself (there is no root to put it under); the paper's formula
(paper-notes §4) is the case eps = 0. Statistics over the batch axis, as BatchNorm. The map is
differentiable wherever no y_i equals mu. |y_i - mu| is not a polynomial in y_i, so ||J^T g||^2 has
no closed form in batch moments for symbolic m: the statements are checked at concrete m.
"""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
mad = sp.Symbol("mad", nonnegative=True)

LP1 = Normaliser(
    name="lp1",
    title="l1 batch normalisation (mean absolute deviation)",
    axis="batch: one unit over the m samples (a conv channel: all sample-position pairs)",
    statistics=(
        (mu, batch_mean(lambda i: y[i], "i")),
        (mad, batch_mean(lambda i: sp.Abs(y[i] - mu), "i")),
    ),
    hat=lambda sample: (sample - mu) / (mad + eps),
    scale=mad + eps,
    scale_of_sigma={mad: sigma - eps},
)
