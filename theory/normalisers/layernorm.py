"""LayerNorm (Ba, Kiros & Hinton 2016): BatchNorm's formula with statistics over one sample's features.

    mu = (1/m) sum_i y_i,   var = (1/m) sum_i (y_i - mu)^2   (biased variance, as torch's LayerNorm)
    z_i = gamma (y_i - mu) / sqrt(var + eps) + beta

The m values of one group are the features of ONE sample (channels x positions for a conv layer),
so train and eval mode compute the same thing. eps sits inside the square root, as in torch. The
formula is the paper's (centre, divide by the std), so its typed statements apply with m the
feature count. torch's LayerNorm has elementwise affine parameters; the theory treats gamma and
beta of the analysed unit as constants, as the paper does.
"""

import dataclasses

from theory.normalisers import (
    batchnorm as _batchnorm,  # the module, so discovery finds BATCHNORM once
)

# The same forward formula as BatchNorm (shared, not copied); only the axis of its m values differs.
LAYERNORM = dataclasses.replace(
    _batchnorm.BATCHNORM,
    name="layernorm",
    title="LayerNorm (biased variance)",
    axis="features: one sample over its m features (channels x positions)",
)
