"""l-inf batch normalisation of §3.3 (Santurkar et al. 2018): centre, divide by the largest deviation.

    mu = (1/m) sum_i y_i,   dmax = max_i |y_i - mu|,   z_i = gamma (y_i - mu) / (dmax + eps) + beta

eps is added to the maximum itself; the paper's formula (paper-notes §4) is the case eps = 0.
Statistics over the batch axis, as BatchNorm. The map is differentiable wherever the maximum is
attained by a single sample (and that sample is not at mu). A maximum is not a batch sum, so there
is no closed form for symbolic m: the statements are checked at concrete m.
"""

import sympy as sp

from theory.batch_algebra import batch_max, batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
dmax = sp.Symbol("dmax", nonnegative=True)

LPINF = Normaliser(
    name="lpinf",
    title="l-inf batch normalisation (largest deviation)",
    axis="batch: one unit over the m samples (a conv channel: all sample-position pairs)",
    statistics=(
        (mu, batch_mean(lambda i: y[i], "i")),
        (dmax, batch_max(lambda i: sp.Abs(y[i] - mu), "i")),
    ),
    hat=lambda sample: (sample - mu) / (dmax + eps),
    scale=dmax + eps,
    scale_of_sigma={dmax: sigma - eps},
)
