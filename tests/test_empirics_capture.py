"""BoundCapture and channel_reductions against slow float64 references.

References: explicit per-channel Python loops for the reductions; torch.autograd.grad on
intermediates retained by a hand-written forward for the gradients; the closed form of Fact C.1
for the BN input gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from empirics.capture import REDUCTION_KEYS, ROW_KEYS, BoundCapture, channel_reductions
from empirics.config import ModelConfig, Norm
from empirics.models import build_model, norm_layers

# float64 end to end: only summation-order rounding separates the two routes
FLOAT64_RTOL = 1e-10
SMOKE_MODEL = ModelConfig(channels=(8, 8, 16, 16), hidden=32)
BATCH = 16




def _loop_reductions(y: np.ndarray, g: np.ndarray, dy: np.ndarray, gamma: np.ndarray, eps: float) -> dict:
    """One channel at a time, one element at a time: the obviously-correct reference."""
    y, g, dy = (np.asarray(a, dtype=np.float64) for a in (y, g, dy))
    if y.ndim == 2:  # (N, C) -> (N, C, 1): a dense channel is a conv channel of length 1
        y, g, dy = y[:, :, None], g[:, :, None], dy[:, :, None]
    n, channels, length = y.shape
    out = {key: [] for key in REDUCTION_KEYS}
    for c in range(channels):
        values = [(y[i, c, t], g[i, c, t], dy[i, c, t]) for i in range(n) for t in range(length)]
        m = len(values)
        mean = sum(v[0] for v in values) / m
        var = sum((v[0] - mean) ** 2 for v in values) / m
        sigma = (var + eps) ** 0.5
        out["m"].append(m)
        out["eps"].append(eps)
        out["gamma"].append(float(gamma[c]))
        out["mean"].append(mean)
        out["var"].append(var)
        out["sigma"].append(sigma)
        out["g_sum"].append(sum(v[1] for v in values))
        out["g_sq"].append(sum(v[1] ** 2 for v in values))
        out["g_yhat"].append(sum(v[1] * (v[0] - mean) / sigma for v in values))
        out["lhs"].append(sum(v[2] ** 2 for v in values))
    return {key: np.array(value) for key, value in out.items()}


def _assert_reductions_close(actual: dict, expected: dict, rtol: float = FLOAT64_RTOL, atol: float = 1e-12) -> None:
    assert set(actual) == set(REDUCTION_KEYS)
    for key in REDUCTION_KEYS:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol, err_msg=f"reduction {key!r}")


@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 2), (2, 1, 1), (1, 4, 2)], ids=["conv", "dense", "m=2", "n=1-conv"])
def test_channel_reductions_match_explicit_loops(shape):
    rng = np.random.default_rng(0)
    y, g, dy = (rng.normal(size=shape) * 3 + 1 for _ in range(3))
    gamma = rng.uniform(0.5, 2.0, size=shape[1])
    actual = channel_reductions(y, g, dy, gamma, 1e-5)
    _assert_reductions_close(actual, _loop_reductions(y, g, dy, gamma, 1e-5))
    assert actual["m"].dtype == np.int64 and actual["lhs"].dtype == np.float64


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    channels=st.integers(1, 4),
    length=st.integers(1, 4),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    eps=st.sampled_from([0.0, 1e-5, 1.0]),
    seed=st.integers(0, 2**16),
)
@example(n=2, channels=1, length=1, scale=1.0, eps=1e-5, seed=0)  # m = 2, the smallest BN batch
def test_channel_reductions_match_loops_on_sampled_shapes(n, channels, length, scale, eps, seed):
    if n * length < 2 and eps == 0.0:
        return  # m = 1 with eps = 0 has sigma = 0: BN itself is undefined there
    rng = np.random.default_rng(seed)
    y, g, dy = (rng.normal(size=(n, channels, length)) * scale for _ in range(3))
    gamma = rng.normal(size=channels)
    _assert_reductions_close(channel_reductions(y, g, dy, gamma, eps), _loop_reductions(y, g, dy, gamma, eps))


def test_channel_reductions_constant_channel_has_zero_variance_and_zero_yhat():
    y = np.full((3, 2, 4), 7.0)
    g = np.ones_like(y)
    out = channel_reductions(y, g, g, np.ones(2), 1e-5)
    np.testing.assert_array_equal(out["var"], 0.0)
    np.testing.assert_array_equal(out["g_yhat"], 0.0)
    np.testing.assert_allclose(out["sigma"], np.sqrt(1e-5))


def test_channel_reductions_convert_float32_tensors_to_float64_before_reducing():
    # a large offset makes float32 sums lose the variance; float64 first keeps it
    y32 = (torch.arange(8, dtype=torch.float32).reshape(8, 1) + 1e4)
    out = channel_reductions(y32, torch.zeros_like(y32), torch.zeros_like(y32), torch.ones(1), 0.0)
    np.testing.assert_allclose(out["var"], np.var(np.arange(8.0)), rtol=1e-12)


def test_channel_reductions_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="share one shape"):
        channel_reductions(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), np.zeros((2, 3, 4)), np.ones(3), 1e-5)


def _double_bn_model(seed: int = 0) -> torch.nn.Sequential:
    model = build_model(SMOKE_MODEL, Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():  # non-trivial affine parameters so gamma enters every formula
        for layer in norm_layers(model):
            layer.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
            layer.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
    return model


def _batch(dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(BATCH, 1, 40, generator=generator, dtype=dtype)  # (batch, 1, 40)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    return x, y


def _manual_bn_gradients(model: torch.nn.Sequential, x, labels):
    """Forward layer by layer, keeping each BN input and output, then torch.autograd.grad on them."""
    inputs, outputs = [], []
    h = x
    for module in model:
        if isinstance(module, torch.nn.BatchNorm1d):
            inputs.append(h)
            h = module(h)
            outputs.append(h)
        else:
            h = module(h)
    loss = F.cross_entropy(h, labels)
    grads = torch.autograd.grad(loss, inputs + outputs)
    k = len(inputs)
    return inputs, grads[:k], grads[k:]  # y, dL/dy, dL/dz per BN layer


def _captured(model, x, labels):
    capture = BoundCapture(model)
    with capture.active():
        F.cross_entropy(model(x), labels).backward()
    return capture.collect(step=7)


def test_capture_matches_autograd_on_retained_intermediates():
    model = _double_bn_model()
    x, labels = _batch()
    rows = _captured(model, x, labels)
    ys, dys, gs = _manual_bn_gradients(model, x, labels)
    for index, layer in enumerate(norm_layers(model)):
        mine = {key: rows[key][rows["layer"] == index] for key in REDUCTION_KEYS}
        expected = _loop_reductions(ys[index].detach().numpy(), gs[index].numpy(), dys[index].numpy(),
                                    layer.weight.detach().numpy(), layer.eps)
        _assert_reductions_close(mine, expected)
        np.testing.assert_allclose(mine["lhs"], (dys[index] ** 2).sum(dim=(0, 2)).numpy(), rtol=FLOAT64_RTOL)


def test_capture_rows_are_labelled_by_step_layer_and_channel():
    model = _double_bn_model()
    rows = _captured(model, *_batch())
    assert set(rows) == set(ROW_KEYS)
    widths = [layer.num_features for layer in norm_layers(model)]
    assert len(rows["step"]) == sum(widths)
    np.testing.assert_array_equal(rows["step"], 7)
    np.testing.assert_array_equal(rows["layer"], np.repeat(np.arange(len(widths)), widths))
    np.testing.assert_array_equal(rows["channel"], np.concatenate([np.arange(w) for w in widths]))
    # m = batch * length: 40 before the first pool, 20 after it
    np.testing.assert_array_equal(np.unique(rows["m"][rows["layer"] < 2]), [BATCH * 40])
    np.testing.assert_array_equal(np.unique(rows["m"][rows["layer"] >= 2]), [BATCH * 20])


def test_captured_input_gradient_norm_equals_fact_c1_closed_form():
    """lhs = ||(gamma / (m sigma)) (m g - <1,g> 1 - <g,yhat> yhat)||^2, exact for eps > 0 too."""
    model = _double_bn_model()
    x, labels = _batch()
    rows = _captured(model, x, labels)
    ys, _dys, gs = _manual_bn_gradients(model, x, labels)
    for index, layer in enumerate(norm_layers(model)):
        y = ys[index].detach().transpose(0, 1).reshape(layer.num_features, -1)  # (C, m)
        g = gs[index].transpose(0, 1).reshape(layer.num_features, -1)
        m = y.shape[1]
        mean = y.mean(dim=1, keepdim=True)
        sigma = torch.sqrt(((y - mean) ** 2).mean(dim=1, keepdim=True) + layer.eps)
        yhat = (y - mean) / sigma
        gamma = layer.weight.detach()[:, None]
        closed = gamma / (m * sigma) * (m * g - g.sum(dim=1, keepdim=True) - yhat * (g * yhat).sum(dim=1, keepdim=True))
        np.testing.assert_allclose(rows["lhs"][rows["layer"] == index], (closed**2).sum(dim=1).numpy(),
                                   rtol=FLOAT64_RTOL)


def test_capture_leaves_parameter_gradients_bit_identical():
    x, labels = _batch(torch.float32)
    plain = build_model(SMOKE_MODEL, Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(0))
    hooked = build_model(SMOKE_MODEL, Norm.BATCHNORM, 1e-5, torch.Generator().manual_seed(0))
    F.cross_entropy(plain(x), labels).backward()
    _captured(hooked, x, labels)
    for (name, a), b in zip(plain.named_parameters(), hooked.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for a, b in zip(plain.buffers(), hooked.buffers()):
        assert torch.equal(a, b)


def test_hooks_are_removed_when_active_exits():
    model = _double_bn_model()
    capture = BoundCapture(model)
    with capture.active():
        assert all(len(layer._forward_hooks) == 1 for layer in norm_layers(model))
        F.cross_entropy(model(_batch()[0]), _batch()[1]).backward()
    assert all(len(layer._forward_hooks) == 0 for layer in norm_layers(model))
    capture.collect(0)


def test_hooks_are_removed_when_an_exception_escapes_active():
    model = _double_bn_model()
    capture = BoundCapture(model)
    x, labels = _batch()
    with pytest.raises(KeyError), capture.active():
        loss = F.cross_entropy(model(x), labels)
        raise KeyError("boom")
    assert all(len(layer._forward_hooks) == 0 for layer in norm_layers(model))
    # tensor hooks went too: a backward after exit reaches no capture
    loss.backward()
    with pytest.raises(RuntimeError, match="received no gradient"):
        capture.collect(0)
    # and the capture is reusable afterwards
    model.zero_grad()
    rows = _captured(model, x, labels)
    assert len(rows["lhs"]) == sum(layer.num_features for layer in norm_layers(model))


def test_collect_rejects_two_forwards_in_one_active_block():
    model = _double_bn_model()
    capture = BoundCapture(model)
    x, labels = _batch()
    with capture.active():
        F.cross_entropy(model(x), labels).backward()
        F.cross_entropy(model(x), labels).backward()
    with pytest.raises(RuntimeError, match="exactly one forward"):
        capture.collect(0)


def test_forward_without_grad_is_not_recorded():
    model = _double_bn_model()
    capture = BoundCapture(model)
    x, labels = _batch()
    with capture.active():
        with torch.no_grad():
            model(x)
        F.cross_entropy(model(x), labels).backward()
    assert len(capture.collect(0)["lhs"]) == sum(layer.num_features for layer in norm_layers(model))


def test_capture_of_non_affine_batchnorm_uses_unit_gamma():
    layer = torch.nn.BatchNorm1d(3, affine=False).double()
    model = torch.nn.Sequential(torch.nn.Linear(4, 3).double(), layer, torch.nn.Linear(3, 2).double())
    capture = BoundCapture(model)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with capture.active():
        model(x).square().sum().backward()
    rows = capture.collect(0)
    np.testing.assert_array_equal(rows["gamma"], 1.0)
    np.testing.assert_array_equal(rows["m"], 5)  # dense: the batch is the samples
