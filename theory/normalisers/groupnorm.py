"""GroupNorm (Wu & He 2018): BatchNorm's formula with statistics over one sample's channel group.

    mu = (1/m) sum_i y_i,   var = (1/m) sum_i (y_i - mu)^2   (biased variance, as torch's GroupNorm)
    z_i = gamma (y_i - mu) / sqrt(var + eps) + beta

The m values of one group are ONE sample's channels of one group times all positions
(m = C/G x L for input (N, C, L) and G groups); InstanceNorm is the case G = C. Train and eval
mode agree. eps sits inside the square root. The paper's typed statements apply with m the group
size.
"""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
var = sp.Symbol("var", nonnegative=True)

GROUPNORM = Normaliser(
    name="groupnorm",
    title="GroupNorm / InstanceNorm (biased variance)",
    axis="group: one sample over a group of channels x positions (InstanceNorm: one channel)",
    statistics=(
        (mu, batch_mean(lambda i: y[i], "i")),
        (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i")),
    ),
    hat=lambda sample: (sample - mu) / sp.sqrt(var + eps),
    scale=sp.sqrt(var + eps),
    scale_of_sigma={var: sigma**2 - eps},
    paper_form=True,
)
