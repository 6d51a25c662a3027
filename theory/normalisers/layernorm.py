"""LayerNorm (Ba, Kiros & Hinton 2016): BatchNorm's formula with statistics over one sample's features.

    mu = (1/m) sum_i y_i,   var = (1/m) sum_i (y_i - mu)^2   (biased variance, as torch's LayerNorm)
    z_i = gamma (y_i - mu) / sqrt(var + eps) + beta

The m values of one group are the features of ONE sample (channels x positions for a conv layer),
so train and eval mode compute the same thing. eps sits inside the square root, as in torch. The
formula is the paper's (centre, divide by the std), so its typed statements apply with m the
feature count. torch's LayerNorm has elementwise affine parameters; the theory treats gamma and
beta of the analysed unit as constants, as the paper does.
"""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

mu = sp.Symbol("mu", real=True)
var = sp.Symbol("var", nonnegative=True)

LAYERNORM = Normaliser(
    name="layernorm",
    title="LayerNorm (biased variance)",
    axis="features: one sample over its m features (channels x positions)",
    statistics=(
        (mu, batch_mean(lambda i: y[i], "i")),
        (var, batch_mean(lambda i: (y[i] - mu) ** 2, "i")),
    ),
    hat=lambda sample: (sample - mu) / sp.sqrt(var + eps),
    scale=sp.sqrt(var + eps),
    scale_of_sigma={var: sigma**2 - eps},
    paper_form=True,
)
