"""WeightNorm (Salimans & Kingma 2016): a weight-space reparametrisation, w = gamma v / ||v||.

    ms = (1/m) sum_i v_i^2,   w_i = gamma v_i / sqrt(m ms) + beta      (beta = 0 in WeightNorm)

Here the m values are the m input weights v of ONE output unit (y stands for v), and g is the
gradient of the loss w.r.t. the effective weights w. There is no eps (sqrt(m ms) = ||v|| > 0 is
assumed; torch's weight_norm has none either), so every statement holds at eps = 0 and the eps
symbol never appears. Its Jacobian is (gamma/||v||)(I - vhat vhat^T) with vhat = v/||v|| a unit
vector: the derived thm4.1 analogue is the identity ||grad_v||^2 = (gamma^2/||v||^2)(||g||^2 - <g, vhat>^2).
"""

import sympy as sp

from theory.batch_algebra import batch_mean, m, y
from theory.normaliser import Normaliser, sigma

ms = sp.Symbol("ms", nonnegative=True)

WEIGHTNORM = Normaliser(
    name="weightnorm",
    title="WeightNorm (weight space, no eps)",
    axis="weight space: the m input weights v of one output unit (y denotes v; yhat = v/||v||)",
    statistics=((ms, batch_mean(lambda i: y[i] ** 2, "i")),),
    hat=lambda sample: sample / sp.sqrt(m * ms),
    scale=sp.sqrt(m * ms),
    scale_of_sigma={ms: sigma**2 / m},
)
