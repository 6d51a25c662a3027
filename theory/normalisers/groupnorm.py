"""GroupNorm (Wu & He 2018): BatchNorm's formula with statistics over one sample's channel group.

    mu = (1/m) sum_i y_i,   var = (1/m) sum_i (y_i - mu)^2   (biased variance, as torch's GroupNorm)
    z_i = gamma (y_i - mu) / sqrt(var + eps) + beta

The m values of one group are ONE sample's channels of one group times all positions
(m = C/G x L for input (N, C, L) and G groups); InstanceNorm is the case G = C. Train and eval
mode agree. eps sits inside the square root. The paper's typed statements apply with m the group
size.
"""

import dataclasses

from theory.normalisers import (
    batchnorm as _batchnorm,  # the module, so discovery finds BATCHNORM once
)

# The same forward formula as BatchNorm (shared, not copied); only the axis of its m values differs.
GROUPNORM = dataclasses.replace(
    _batchnorm.BATCHNORM,
    name="groupnorm",
    title="GroupNorm / InstanceNorm (biased variance)",
    axis="group: one sample over a group of channels x positions (InstanceNorm: one channel)",
)
