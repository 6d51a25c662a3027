"""The compiled capture kernel (`empirics.fused_reductions`) against the torch reduction it replaces on a CPU.

Reference: `group_reductions.batchnorm_reductions`, the torch two-pass float64 reduction (itself checked against
explicit loops in test_empirics_capture.py), and `BoundCapture(fused=False)`, which keeps every layer on it. The two
routes differ only in the order of their float64 sums, so every comparison allows the rounding of a two-pass
reduction of m values: ROUNDING_CHAIN_FACTOR * m * u * kappa of each column's natural scale (tests/tolerances.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from empirics import capture as capture_module
from empirics import fused_reductions
from empirics.capture import BoundCapture
from empirics.config import ModelConfig, Norm
from empirics.group_reductions import Scratch, batchnorm_reductions
from empirics.models import build_model
from tests.tolerances import ROUNDING_CHAIN_FACTOR, UNIT_ROUNDOFF

pytestmark = pytest.mark.skipif(not fused_reductions.available(), reason="numba is not installed: no fused kernel")

MODEL = ModelConfig(channels=(4, 8), hidden=8)
BN_FORMULA = ("batchnorm", "lp2", "layernorm", "groupnorm")  # the registered normalisers the kernel can take


def _reference(y, g, dy, gamma, eps) -> np.ndarray:
    """(9, G) float64: the torch reduction's columns in BN_COLUMNS order (yhat_sq = m var / sigma^2)."""
    columns = batchnorm_reductions(y, g, dy, gamma, eps, Scratch()).numpy()
    m = y.shape[0] * y.shape[2]
    return np.vstack([columns, columns[2] * m / columns[3] ** 2])


def _allowed(peak, sigma, g_sq, g_abs, lhs, gamma, m: int, eps: float) -> np.ndarray:
    """(9, G): the rounding two float64 two-pass reductions of m values may differ by, per BN_COLUMNS row, from
    each group's peak |y|, sigma, ||g||^2, sum |g|, ||dy||^2 and gamma: ROUNDING_CHAIN_FACTOR m u kappa times the
    row's natural scale, kappa = max(1, peak / sigma) the centring condition (tests/tolerances.py)."""
    kappa = np.maximum(1.0, peak / sigma)
    g_norm = np.sqrt(g_sq)
    scales = np.vstack([np.abs(gamma), peak, peak**2 + eps, kappa * peak + np.sqrt(eps), g_abs, g_sq,
                        g_norm * np.sqrt(m) * kappa, lhs, m * kappa**2])
    return ROUNDING_CHAIN_FACTOR * m * UNIT_ROUNDOFF * kappa * scales


def _assert_within(actual: np.ndarray, expected: np.ndarray, allowed: np.ndarray, keys, context: str = "") -> None:
    for row, key in enumerate(keys):
        excess = np.abs(actual[row] - expected[row]) - allowed[row]
        assert np.all(excess <= 0), f"{key}{context}: {actual[row]} vs {expected[row]}, allowed {allowed[row]}"


def _assert_matches(actual: np.ndarray, expected: np.ndarray, y, g, dy, gamma, eps) -> None:
    y, g, dy = (np.asarray(a, dtype=np.float64) for a in (y, g, dy))
    axes = (0, 2)
    m = y.shape[0] * y.shape[2]
    allowed = _allowed(np.abs(y).max(axes), np.sqrt(y.var(axes) + eps), (g * g).sum(axes), np.abs(g).sum(axes),
                       (dy * dy).sum(axes), np.asarray(gamma, dtype=np.float64), m, eps)
    _assert_within(actual, expected, allowed, fused_reductions.BN_COLUMNS, f" (m={m})")


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 6),
    groups=st.integers(1, 5),
    inner=st.integers(1, 7),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    offset=st.sampled_from([0.0, 1.0, 1e3]),
    eps=st.sampled_from([0.0, 1e-5, 1.0]),
    seed=st.integers(0, 2**16),
)
@example(batch=1, groups=3, inner=1, dtype=torch.float32, scale=1.0, offset=0.0, eps=1e-5, seed=0)  # m = 1
@example(batch=2, groups=1, inner=1, dtype=torch.float32, scale=1.0, offset=1e3, eps=1e-5, seed=1)  # m = 2
def test_kernel_matches_the_torch_reduction_on_sampled_layouts(batch, groups, inner, dtype, scale, offset, eps,
                                                               seed):
    if batch * inner < 2 and eps == 0.0:
        return  # m = 1 with eps = 0: sigma = 0, BatchNorm itself is undefined
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, groups, inner)
    y = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype)
    g, dy = (torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for _ in range(2))
    gamma = torch.rand(groups, generator=generator, dtype=torch.float64) + 0.5
    actual = fused_reductions.batchnorm_columns(y, g, dy, gamma, eps).numpy()
    _assert_matches(actual, _reference(y, g, dy, gamma, eps), y.numpy(), g.numpy(), dy.numpy(), gamma.numpy(), eps)


@pytest.mark.parametrize("shape", [(128, 8, 40), (1, 3, 70000), (4, 70000, 1)], ids=["row", "grouped-A1", "wide"])
def test_both_loops_match_the_torch_reduction_on_large_layers(shape):
    # (128, 8, 40) takes the row loop; A = 1 and a row wider than ROW_KERNEL_MAX_WIDTH take the grouped loop
    generator = torch.Generator().manual_seed(0)
    y, g, dy = (torch.randn(shape, generator=generator) for _ in range(3))
    gamma = torch.rand(shape[1], generator=generator, dtype=torch.float64) + 0.5
    actual = fused_reductions.batchnorm_columns(y, g, dy, gamma, 1e-5).numpy()
    _assert_matches(actual, _reference(y, g, dy, gamma, 1e-5), y.numpy(), g.numpy(), dy.numpy(), gamma.numpy(), 1e-5)


def test_constant_group_has_exactly_zero_variance_and_zero_g_yhat():
    y = torch.full((5, 2, 3), 7.0)
    g = torch.arange(30, dtype=torch.float32).reshape(5, 2, 3)
    out = fused_reductions.batchnorm_columns(y, g, g, torch.ones(2), 1e-5).numpy()
    columns = dict(zip(fused_reductions.BN_COLUMNS, out))
    assert np.all(columns["var"] == 0.0) and np.all(columns["g_yhat"] == 0.0) and np.all(columns["yhat_sq"] == 0.0)
    np.testing.assert_array_equal(columns["mean"], 7.0)


def test_float32_values_are_converted_to_float64_before_they_are_summed():
    # a mean that dwarfs the spread: float32 sums would lose the variance
    y = (torch.arange(8, dtype=torch.float32) + 1e4).reshape(8, 1, 1)
    out = fused_reductions.batchnorm_columns(y, torch.zeros_like(y), torch.zeros_like(y), torch.ones(1), 0.0)
    np.testing.assert_allclose(out[2].numpy(), np.var(np.arange(8.0)), rtol=1e-12)


def test_nan_and_inf_propagate_as_in_the_torch_reduction():
    # a diverged run: the kernel's fastmath keeps NaN/inf semantics (no nnan/ninf), so the check sees them
    y = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(1))
    g, dy = y.clone(), y.clone()
    y[0, 0, 0], g[1, 1, 1], dy[2, 2, 0] = float("nan"), float("inf"), float("nan")
    gamma = torch.ones(3, dtype=torch.float64)
    actual = fused_reductions.batchnorm_columns(y, g, dy, gamma, 1e-5).numpy()
    expected = _reference(y, g, dy, gamma, 1e-5)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))


def test_extra_rows_are_nan_and_the_input_is_validated():
    y = torch.randn(3, 2, 2)
    out = fused_reductions.batchnorm_columns(y, y, y, torch.ones(2), 1e-5, rows=12).numpy()
    assert out.shape == (12, 2) and np.all(np.isnan(out[9:])) and not np.any(np.isnan(out[:9]))
    with pytest.raises(ValueError, match="share one"):
        fused_reductions.batchnorm_columns(y, y[:, :1], y, torch.ones(2), 1e-5)
    with pytest.raises(ValueError, match="one dtype"):
        fused_reductions.batchnorm_columns(y, y.double(), y, torch.ones(2), 1e-5)
    with pytest.raises(ValueError, match="one per group"):
        fused_reductions.batchnorm_columns(y, y, y, torch.ones(3), 1e-5)
    with pytest.raises(ValueError, match="rows=4"):
        fused_reductions.LayerColumns(lambda: None, "batch", 1, 1e-5, rows=4)
    with pytest.raises(ValueError, match="no group layout"):
        fused_reductions.LayerColumns(lambda: None, "diagonal", 1, 1e-5, rows=9)


def test_layer_columns_without_numba_says_what_to_install(monkeypatch):
    monkeypatch.setattr(fused_reductions, "_compiled", lambda: None)
    assert not fused_reductions.available()
    with pytest.raises(RuntimeError, match="pip install numba"):
        fused_reductions.LayerColumns(lambda: None, "batch", 1, 1e-5, rows=9)


def test_layer_columns_follow_in_place_updates_and_a_replaced_scale():
    module = torch.nn.BatchNorm1d(3)
    y = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(2))
    columns = fused_reductions.LayerColumns(lambda: module.weight, "batch", 1, 1e-5, rows=9)
    np.testing.assert_array_equal(columns(y, y, y)[0], 1.0)
    with torch.no_grad():
        module.weight.mul_(3.0)  # an optimizer step: in place, no refresh needed
    np.testing.assert_array_equal(columns(y, y, y)[0], 3.0)
    module.weight = torch.nn.Parameter(torch.full((3,), 0.5))  # a new parameter: read at refresh()
    columns.refresh()
    np.testing.assert_array_equal(columns(y, y, y)[0], 0.5)


def test_layer_columns_of_a_per_sample_axis_follow_the_batch_size():
    columns = fused_reductions.LayerColumns(lambda: None, "group", 2, 1e-5, rows=9)  # two groups per sample
    for batch in (4, 3, 4):
        y = torch.randn(batch, 6, 5, generator=torch.Generator().manual_seed(batch))
        out = columns(y, y, y).copy()
        view = y.reshape(1, batch * 2, -1)
        expected = _reference(view, view, view, torch.ones(batch * 2, dtype=torch.float64), 1e-5)
        assert out.shape == (9, batch * 2)
        _assert_matches(out, expected, view.numpy(), view.numpy(), view.numpy(), np.ones(batch * 2), 1e-5)


# ---------------------------------------------------------------- through BoundCapture


def _model(name: str, dtype: torch.dtype, drop_affine: bool):
    model = build_model(MODEL, Norm(name), 1e-5, generator=torch.Generator().manual_seed(7)).to(dtype)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.GroupNorm)) and weight is not None:
                if drop_affine and isinstance(module, torch.nn.GroupNorm):
                    module.weight = module.bias = None  # no per-element affine: per-sample groups take the kernel
                else:
                    weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(8))
    return model


def _captured_rows(model, fused: bool, x, labels) -> dict[str, np.ndarray]:
    capture = BoundCapture(model, fused=fused)
    with capture.active():
        F.cross_entropy(model(x), labels).backward()
    return capture.collect(step=3)


def _assert_rows_match(fused: dict, reference: dict) -> None:
    assert set(fused) == set(reference)
    for key in ("step", "layer", "channel", "m", "eps"):
        np.testing.assert_array_equal(fused[key], reference[key], err_msg=key)
    keys = fused_reductions.BN_COLUMNS
    m, sigma = reference["m"], reference["sigma"]
    peak = np.abs(reference["mean"]) + np.sqrt(m * reference["var"])  # |y_i| <= |mean| + sqrt(m var)
    allowed = _allowed(peak, sigma, reference["g_sq"], np.sqrt(m * reference["g_sq"]), reference["lhs"],
                       reference["gamma"], m, reference["eps"])
    _assert_within(np.vstack([fused[k] for k in keys]), np.vstack([reference[k] for k in keys]), allowed, keys)


@pytest.mark.parametrize("affine", [False, True], ids=["no-affine", "affine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", BN_FORMULA)
def test_capture_with_the_kernel_matches_the_torch_path(name, dtype, affine):
    # a per-channel affine inside a per-sample group (LayerNorm, GroupNorm) is folded into g before the kernel
    generator = torch.Generator().manual_seed(4)
    x, labels = torch.randn(6, 1, 40, generator=generator, dtype=dtype), torch.randint(0, 10, (6,), generator=generator)
    model = _model(name, dtype, drop_affine=not affine)
    fused, reference = _captured_rows(model, True, x, labels), _captured_rows(model, False, x, labels)
    _assert_rows_match(fused, reference)


def test_each_layer_keeps_a_kernel_unless_its_scale_is_per_element():
    # the per-layer kernel object (scale read once per block) where gamma is one number per group; a per-element
    # affine goes through group_reductions, which folds it into g and calls the kernel afresh
    like = torch.zeros(6, 4, 40)
    assert all(h.kernel(like) is not None for h in BoundCapture(_model("batchnorm", torch.float32, False))._hooks)
    assert all(h.kernel(like) is not None for h in BoundCapture(_model("layernorm", torch.float32, True))._hooks)
    assert all(h.kernel(like) is None for h in BoundCapture(_model("layernorm", torch.float32, False))._hooks)
    assert all(h.kernel(like) is None for h in BoundCapture(_model("batchnorm", torch.float32, False), fused=False)._hooks)


def test_tensor_hooks_and_the_node_hook_capture_the_same_rows(monkeypatch):
    # the node hook (y a direct input of the output's autograd node) against the two tensor hooks used elsewhere
    generator = torch.Generator().manual_seed(6)
    x, labels = torch.randn(6, 1, 40, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    model = _model("batchnorm", torch.float32, drop_affine=False)
    node_rows = _captured_rows(model, True, x, labels)
    monkeypatch.setattr(capture_module, "_input_slot", lambda node, y: None)
    tensor_rows = _captured_rows(model, True, x, labels)
    for key in node_rows:
        np.testing.assert_array_equal(node_rows[key], tensor_rows[key], err_msg=key)


def test_a_second_backward_through_a_retained_graph_leaves_the_rows_unchanged():
    generator = torch.Generator().manual_seed(9)
    x, labels = torch.randn(6, 1, 40, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    model = _model("batchnorm", torch.float32, drop_affine=False)
    once = _captured_rows(model, True, x, labels)
    capture = BoundCapture(model)
    with capture.active():
        loss = F.cross_entropy(model(x), labels)
        loss.backward(retain_graph=True)
        loss.backward()
    twice = capture.collect(step=3)
    for key in once:
        np.testing.assert_array_equal(once[key], twice[key], err_msg=key)


def test_a_non_contiguous_output_gradient_takes_the_torch_path():
    # the loss reads the BN output transposed: its gradient reaches the layer as a transposed (strided) view
    bn = torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(11))
    y = torch.randn(6, 4, 40, generator=torch.Generator().manual_seed(10), requires_grad=True)
    weights = torch.randn(6, 40, 4, generator=torch.Generator().manual_seed(12))
    rows = {}
    for fused in (True, False):
        capture = BoundCapture(torch.nn.Sequential(bn), fused=fused)
        with capture.active():
            (bn(y).transpose(1, 2) * weights).sum().backward()
        rows[fused] = capture.collect(0)
    _assert_rows_match(rows[True], rows[False])


def test_capture_without_numba_takes_the_torch_path(monkeypatch):
    generator = torch.Generator().manual_seed(13)
    x, labels = torch.randn(6, 1, 40, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    model = _model("batchnorm", torch.float32, drop_affine=False)
    reference = _captured_rows(model, False, x, labels)
    monkeypatch.setattr(fused_reductions, "_compiled", lambda: None)
    assert all(h.kernel(torch.zeros(6, 4, 40)) is None for h in BoundCapture(model)._hooks)
    without = _captured_rows(model, True, x, labels)
    for key in reference:
        np.testing.assert_array_equal(without[key], reference[key], err_msg=key)
