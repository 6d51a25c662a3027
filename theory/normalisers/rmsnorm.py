"""RMSNorm (Zhang & Sennrich 2019): divide by the root mean square, no centring.

    ms = (1/m) sum_i y_i^2,   z_i = gamma y_i / sqrt(ms + eps) + beta

Statistics over one sample's m features (as torch's RMSNorm; the formula is the same over any
axis). eps sits inside the square root. Without centring the Jacobian keeps the 1-direction:
paper-notes §2 expects J = (gamma/rms)(I - yhat yhat^T/m), so only the yhat term is removed.
"""

import sympy as sp

from theory.batch_algebra import batch_mean, y
from theory.normaliser import Normaliser, eps, sigma

ms = sp.Symbol("ms", nonnegative=True)

RMSNORM = Normaliser(
    name="rmsnorm",
    title="RMSNorm (no centring)",
    axis="features: one sample over its m features (no mean subtracted)",
    statistics=((ms, batch_mean(lambda i: y[i] ** 2, "i")),),
    hat=lambda sample: sample / sp.sqrt(ms + eps),
    scale=sp.sqrt(ms + eps),
    scale_of_sigma={ms: sigma**2 - eps},
)
