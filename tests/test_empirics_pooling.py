"""pair_max_pool against nn.MaxPool1d(2) in float64: values, gradients, ties, NaN, odd lengths, and torch.func.

nn.MaxPool1d(2) is the reference: the pool must be the same function with the same gradient, so
every comparison here is exact (torch.equal), not within a tolerance.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import grad, jvp, vmap

from empirics.pooling import PairMaxPool1d, pair_max_pool

REFERENCE = nn.MaxPool1d(2)


def _value_and_input_grad(pool, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().clone().requires_grad_(True)
    out = pool(leaf)
    (dx,) = torch.autograd.grad(out, leaf, upstream)
    return out.detach(), dx


def _assert_same_as_maxpool(x: torch.Tensor, seed: int = 0) -> None:
    upstream = torch.randn(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype,
                           generator=torch.Generator().manual_seed(seed))
    expected, expected_dx = _value_and_input_grad(REFERENCE, x, upstream)
    actual, actual_dx = _value_and_input_grad(pair_max_pool, x, upstream)
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(actual.nan_to_num(), expected.nan_to_num()), "pooled values differ"
    assert torch.equal(actual_dx, expected_dx), "input gradients differ (ties route to the first element)"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), channels=st.integers(1, 3), length=st.integers(2, 11), levels=st.integers(1, 5),
       seed=st.integers(0, 2**16))
@example(n=2, channels=2, length=7, levels=1, seed=0)  # odd length, every value tied
@example(n=1, channels=1, length=2, levels=2, seed=3)  # the smallest window
def test_pair_max_pool_matches_maxpool1d_values_and_gradients_with_ties(n, channels, length, levels, seed):
    # values drawn from a few levels, so many windows hold ties
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n, channels, length), generator=generator).double() - levels / 2
    _assert_same_as_maxpool(x, seed)


@pytest.mark.parametrize("window", [(float("nan"), 1.0), (1.0, float("nan")), (float("nan"), float("nan")),
                                    (float("-inf"), float("-inf")), (-0.0, 0.0), (0.0, -0.0), (2.0, 2.0)],
                         ids=["nan-first", "nan-second", "nan-both", "minus-inf", "signed-zero", "zero-signed", "tie"])
def test_pair_max_pool_matches_maxpool1d_on_special_windows(window):
    x = torch.tensor([[[*window, 3.0, -1.0, 5.0]]], dtype=torch.float64)  # (1, 1, 5): odd length as well
    _assert_same_as_maxpool(x)
    if window in ((-0.0, 0.0), (0.0, -0.0)):  # the very zero MaxPool1d keeps, sign included
        assert torch.equal(torch.signbit(pair_max_pool(x)), torch.signbit(REFERENCE(x)))


def test_pair_max_pool_accepts_unbatched_input_and_rejects_length_one():
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(pair_max_pool(x), REFERENCE(x))
    with pytest.raises(ValueError, match="length >= 2"):
        pair_max_pool(torch.zeros(2, 3, 1))


def _loss(pool, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A smooth function through the pool, so second derivatives are non-trivial."""
    return torch.sum(torch.tanh(pool(x) * weight) ** 2)


# torch.func's forward-over-reverse loads torch's jvp decompositions, which are built with torch.jit.script and warn
# that it is deprecated (for nn.MaxPool1d as well): a message about torch's internals, not about this code
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_pair_max_pool_agrees_with_maxpool1d_under_torch_func_transforms():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 9, dtype=torch.float64, generator=generator)
    weight = torch.randn(3, 1, dtype=torch.float64, generator=generator)
    directions = torch.randn(5, *x.shape, dtype=torch.float64, generator=generator)
    results = {}
    for name, pool in (("ours", pair_max_pool), ("maxpool", REFERENCE)):
        f = lambda point, pool=pool: _loss(pool, point, weight)  # noqa: E731
        hvp = lambda u, f=f: grad(lambda point: torch.sum(grad(f)(point) * u))(x)  # noqa: E731 - reverse over reverse
        results[name] = {
            "vmapped grad": vmap(grad(f))(directions + x),
            "hvp (vmapped)": vmap(hvp)(directions),
            "forward over reverse": jvp(grad(f), (x,), (directions[0],))[1],
            "jvp": jvp(f, (x,), (directions[1],))[1],
        }
    for key, expected in results["maxpool"].items():
        torch.testing.assert_close(results["ours"][key], expected, rtol=1e-12, atol=1e-12, msg=key)


def test_pair_max_pool_module_is_the_function():
    x = torch.randn(2, 4, 10, dtype=torch.float64)
    assert torch.equal(PairMaxPool1d()(x), pair_max_pool(x))
