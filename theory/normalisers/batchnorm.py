"""BatchNorm in training mode (Ioffe & Szegedy 2015), as analysed by Santurkar et al. (2018).

    mu = (1/m) sum_i y_i,   var = (1/m) sum_i (y_i - mu)^2   (biased variance, as PyTorch uses in training)
    z_i = gamma (y_i - mu) / sqrt(var + eps) + beta

Statistics run over the batch axis: for a dense layer, the m samples of one unit; for a
convolution, one channel over all (sample, position) pairs, as torch's BatchNorm1d/2d do.
"""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
var = sp.Symbol("var", nonnegative=True)

BATCHNORM = Normaliser(
    name="batchnorm",
    title="BatchNorm (training mode, biased variance)",
    axis="batch: one unit over the m samples (a conv channel: all sample-position pairs)",
    statistics=(
        (mu, batch_mean(lambda i: y[i], "i")),
        (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i")),
    ),
    hat=lambda sample: (sample - mu) / sp.sqrt(var + eps),
    scale=sp.sqrt(var + eps),
    scale_of_sigma={var: sigma**2 - eps},
    paper_form=True,
)
