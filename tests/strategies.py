"""Named Hypothesis strategies for the theory tests: float64 batches, upstream gradients, eps, gamma.

A batch is one normalisation group y in R^m (shape (m,)): offset + scale * z with z in [-1, 1]^m.
Scale and offset magnitudes are drawn log-uniformly over 1e-3 .. 1e3, so one run covers tiny and
huge values and batches whose mean dwarfs their spread (offset 1e3, scale 1e-3: the centring is
then ill-conditioned, kappa ~ 1e6, which `tests.tolerances` accounts for). Non-constant batches
always contain z = -1 and z = +1, so their spread is at least 2 * scale and sigma > 0 at eps = 0.
Constant batches (a dead or saturated channel: var = 0) are only meaningful with eps > 0.
"""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

MAX_BATCH = 32  # largest m drawn; conv channels have larger groups but the algebra is the same for all m
SCALE_DECADES = (-3.0, 3.0)  # batch spread and offset magnitude: 1e-3 .. 1e3
GRAD_DECADES = (-3.0, 3.0)  # upstream gradient magnitude: 1e-3 .. 1e3
EPS_DECADES = (-12.0, 0.0)  # positive eps: 1e-12 .. 1
GAMMA_DECADES = (-6.0, 6.0)  # |gamma|: 1e-6 .. 1e6

# Strategy constructors below are cached: composites draw from them on every example, and building
# (and validating) fresh strategy objects each time was most of the cost of the `thorough` profile.


@functools.cache
def _log_uniform(decades: tuple[float, float]) -> st.SearchStrategy[float]:
    low, high = decades
    return st.floats(low, high).map(lambda exponent: float(10.0**exponent))


def _signed(magnitudes: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.tuples(st.sampled_from((1.0, -1.0)), magnitudes).map(lambda pair: pair[0] * pair[1])


# Magnitudes below this are flushed to exactly 0: the tests square products of these values with
# scales down to 1e-3 and gammas down to 1e-6, and values like 1e-160 would underflow into float64's
# subnormal range, where the relative-error model of `tests.tolerances` does not hold. Exact zeros
# (g = (0, 1), a zero gradient) stay in; float32 captures never carry such magnitudes anyway.
FLUSH_TO_ZERO_BELOW = 1e-30


@functools.cache
def _unit_interval_values(size: int) -> st.SearchStrategy[np.ndarray]:
    """float64 array of shape (size,) in [-1, 1]; hypothesis.extra.numpy draws it far faster than a list."""
    values = arrays(np.float64, size, elements=st.floats(-1.0, 1.0))
    return values.map(lambda z: np.where(np.abs(z) >= FLUSH_TO_ZERO_BELOW, z, 0.0))


@functools.cache
def offsets() -> st.SearchStrategy[float]:
    """Batch means: 0, or +-1e-3 .. +-1e3."""
    return st.one_of(st.just(0.0), _signed(_log_uniform(SCALE_DECADES)))


@functools.cache
@st.composite
def spread_batches(draw, min_size: int = 2, max_size: int = MAX_BATCH) -> np.ndarray:
    """Non-constant batches, shape (m,): offset + scale * z, z containing -1 and +1."""
    if min_size < 2:
        raise ValueError(f"a non-constant batch needs m >= 2, got min_size={min_size}; use constant_batches for m = 1")
    size = draw(st.integers(min_size, max_size))
    z = draw(_unit_interval_values(size))
    low = draw(st.integers(0, size - 1))
    high = (low + draw(st.integers(1, size - 1))) % size  # a position other than `low`
    z[low], z[high] = -1.0, 1.0
    scale = draw(_log_uniform(SCALE_DECADES))
    return draw(offsets()) + scale * z


@functools.cache
@st.composite
def constant_batches(draw, min_size: int = 2, max_size: int = MAX_BATCH) -> np.ndarray:
    """All m values equal (var = 0): a dead or saturated channel; only defined with eps > 0."""
    size = draw(st.integers(min_size, max_size))
    return np.full(size, draw(offsets()), dtype=np.float64)


@functools.cache
def batches(min_size: int = 2, max_size: int = MAX_BATCH, *, allow_constant: bool = False) -> st.SearchStrategy:
    """float64 batches of shape (m,), min_size <= m <= max_size; constant ones too if allow_constant."""
    spread = spread_batches(min_size, max_size)
    return st.one_of(spread, constant_batches(min_size, max_size)) if allow_constant else spread


@functools.cache
@st.composite
def upstream_grads(draw, size: int) -> np.ndarray:
    """g = dL/dz for one group, shape (size,): entries in [-1, 1] times a scale 1e-3 .. 1e3."""
    return draw(_log_uniform(GRAD_DECADES)) * draw(_unit_interval_values(size))


@functools.cache
@st.composite
def batches_with_grads(draw, min_size: int = 2, max_size: int = MAX_BATCH, *, allow_constant: bool = False):
    """(y, g), a batch and an upstream gradient of the same size."""
    batch = draw(batches(min_size, max_size, allow_constant=allow_constant))
    return batch, draw(upstream_grads(batch.shape[0]))


@functools.cache
def positive_eps() -> st.SearchStrategy[float]:
    """eps > 0: tiny 1e-12, PyTorch's default 1e-5, large 1.0, and log-uniform in between."""
    return st.one_of(st.sampled_from((1e-12, 1e-5, 1.0)), _log_uniform(EPS_DECADES))


@functools.cache
def nonnegative_eps() -> st.SearchStrategy[float]:
    """eps >= 0: the paper's eps = 0 and every positive_eps()."""
    return st.one_of(st.just(0.0), positive_eps())


@functools.cache
def gammas() -> st.SearchStrategy[float]:
    """The affine scale: 1, negative, tiny 1e-6, huge 1e6, and signed log-uniform in between."""
    return st.one_of(st.sampled_from((1.0, -1.0, 1e-6, 1e6, -1e6)), _signed(_log_uniform(GAMMA_DECADES)))


@functools.cache
@st.composite
def batches_with_eps(draw, min_size: int = 2, max_size: int = MAX_BATCH):
    """(y, eps) with sigma = sqrt(var + eps) > 0: a non-constant batch with eps >= 0, or a constant one with eps > 0."""
    constant = draw(st.booleans())
    if constant:
        return draw(constant_batches(min_size, max_size)), draw(positive_eps())
    return draw(spread_batches(min_size, max_size)), draw(nonnegative_eps())


@functools.cache
@st.composite
def batches_with_grads_and_eps(draw, min_size: int = 2, max_size: int = MAX_BATCH):
    """(y, g, eps) with sigma > 0, as `batches_with_eps`, and an upstream gradient of the same size."""
    batch, eps = draw(batches_with_eps(min_size, max_size))
    return batch, draw(upstream_grads(batch.shape[0])), eps


@functools.cache
@st.composite
def spread_batches_with_grads_and_eps(draw, min_size: int = 2, max_size: int = MAX_BATCH):
    """(y, g, eps): a non-constant batch (sigma > 0 for every eps >= 0), an upstream gradient, eps >= 0."""
    batch = draw(spread_batches(min_size, max_size))
    return batch, draw(upstream_grads(batch.shape[0])), draw(nonnegative_eps())
