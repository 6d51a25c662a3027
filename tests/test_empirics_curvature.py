"""BN-layer Hessian quadratic forms against dense torch.autograd.functional Hessians, float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empirics.curvature import activation_curvature
from empirics.noisy import NoisyBatchNorm1d, NoisyIdentity
from tests.test_empirics_measurements import (
    tiny_batch,
    tiny_net,
    training_step_forward,
)

RTOL = 1e-9  # float64; dense Hessians (m x m) and HVPs sum in different orders
# torch >= 2.1x rejects eps = 0 in train(); 1e-300 is zero in effect: var + 1e-300 rounds to var
# for any var > 1e-284, so sigma, P and the identities are those of eps = 0 to rounding.
ZERO_EPS = 1e-300
KEYS = ("hess_in_v", "hess_out_v", "hess_out_g", "hess_out_Jv", "bn_second_order")


def _split(model: nn.Sequential, layer: int):
    """(upstream, bn, downstream) of a frozen deep copy, cut at the layer-th BN of the Sequential."""
    clone = copy.deepcopy(model).train()
    for module in clone.modules():
        if isinstance(module, NoisyIdentity):
            module.frozen = True
    positions = [i for i, m in enumerate(clone) if isinstance(m, (nn.BatchNorm1d, NoisyBatchNorm1d))]
    k = positions[layer]
    noisy = isinstance(clone[k], NoisyBatchNorm1d)
    bn = clone[k].bn if noisy else clone[k]
    downstream = nn.Sequential(*([clone[k].noise] if noisy else []), *clone[k + 1:])
    return clone[:k], bn, downstream


def _dense_reference(model, layer, x, labels) -> dict:
    """Per channel: m x m Hessians of the channel's inputs / outputs (others fixed), then v^T H v."""
    upstream, bn, downstream = _split(model, layer)
    with torch.no_grad():
        y0 = upstream(x)
    y = y0.clone().requires_grad_(True)
    z = bn(y)
    loss = F.cross_entropy(downstream(z), labels)
    v, g = (t.detach() for t in torch.autograd.grad(loss, [y, z]))
    z0 = z.detach()

    def embed(base, c, values):  # base with channel c replaced by values (N, L)
        full = base.clone()
        full[:, c, :] = values
        return full

    out = {key: [] for key in KEYS}
    for c in range(y0.shape[1]):
        def loss_of_in(yc, c=c):
            return F.cross_entropy(downstream(bn(embed(y0, c, yc))), labels)

        def loss_of_out(zc, c=c):
            return F.cross_entropy(downstream(embed(z0, c, zc)), labels)

        def bn_channel(yc, c=c):
            return bn(embed(y0, c, yc))[:, c, :]

        def g_dot_bn(yc, c=c):
            return torch.sum(g[:, c, :] * bn_channel(yc))

        yc, zc = y0[:, c, :], z0[:, c, :]
        m = yc.numel()
        h_in = torch.autograd.functional.hessian(loss_of_in, yc).reshape(m, m)
        h_out = torch.autograd.functional.hessian(loss_of_out, zc).reshape(m, m)
        jac = torch.autograd.functional.jacobian(bn_channel, yc).reshape(m, m)
        h_bn = torch.autograd.functional.hessian(g_dot_bn, yc).reshape(m, m)
        vc, gc = v[:, c, :].reshape(m), g[:, c, :].reshape(m)
        jv = jac @ vc
        out["hess_in_v"].append(float(vc @ h_in @ vc))
        out["hess_out_v"].append(float(vc @ h_out @ vc))
        out["hess_out_g"].append(float(gc @ h_out @ gc))
        out["hess_out_Jv"].append(float(jv @ h_out @ jv))
        out["bn_second_order"].append(float(vc @ h_bn @ vc))
    return {key: np.array(values) for key, values in out.items()}


def _assert_forms_close(actual, expected, context=""):
    for key in KEYS:
        scale = np.max(np.abs(expected[key])) + 1e-300  # forms may cancel to ~0 in one channel
        np.testing.assert_allclose(actual[key], expected[key], rtol=RTOL, atol=RTOL * scale,
                                   err_msg=f"{context} {key}")


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("norm", ["batchnorm", "noisy_bn"])
def test_quadratic_forms_match_dense_channel_hessians(norm, layer):
    model = tiny_net(norm, widths=(3, 3))
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    result = activation_curvature(model, layer, x, labels, F.cross_entropy)
    _assert_forms_close(result, _dense_reference(model, layer, x, labels), f"{norm} layer {layer}")
    assert result["m"][0] == x.shape[0] * x.shape[2]


def test_looped_and_vmapped_channels_agree_and_the_module_may_be_passed():
    model = tiny_net("batchnorm", widths=(3, 3))
    x, labels = tiny_batch()
    vmapped = activation_curvature(model, 1, x, labels, F.cross_entropy, chunk_size=2)
    looped = activation_curvature(model, model[4], x, labels, F.cross_entropy, vectorize=False)
    _assert_forms_close(looped, vmapped)


@pytest.mark.parametrize("eps", [1e-5, ZERO_EPS])
def test_chain_rule_splits_the_input_hessian_exactly(eps):
    """v^T d2L-hat v = (Jv)^T H (Jv) + sum_b g_b v^T d2z_b v, for every eps."""
    model = tiny_net("batchnorm", widths=(3, 3))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eps = eps
    result = activation_curvature(model, 0, *tiny_batch(), F.cross_entropy)
    total = result["hess_out_Jv"] + result["bn_second_order"]
    scale = np.abs(result["hess_out_Jv"]) + np.abs(result["bn_second_order"])
    np.testing.assert_allclose(result["hess_in_v"], total, rtol=0, atol=float(RTOL * scale.max()))


def test_thm4_2_first_form_is_an_equality_at_zero_eps():
    """eps = 0: J v = (gamma/sigma) v and the BN term is -(gamma / (m sigma^2)) <g, yhat> ||v||^2."""
    model = tiny_net("batchnorm", widths=(3, 3))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eps = ZERO_EPS
    r = activation_curvature(model, 1, *tiny_batch(), F.cross_entropy)
    ratio = r["gamma"] ** 2 / r["sigma"] ** 2
    scale = np.abs(r["hess_out_Jv"]).max()
    np.testing.assert_allclose(r["hess_out_Jv"], ratio * r["hess_out_v"], rtol=RTOL, atol=RTOL * scale)
    predicted = -(r["gamma"] / (r["m"] * r["sigma"] ** 2)) * r["g_yhat"] * r["lhs"]
    np.testing.assert_allclose(r["bn_second_order"], predicted, rtol=RTOL, atol=RTOL * np.abs(predicted).max())


def test_layer_selection_errors_say_what_exists():
    model = tiny_net("batchnorm")
    with pytest.raises(IndexError, match="2 normalisation layers"):
        activation_curvature(model, 2, *tiny_batch(), F.cross_entropy)
    with pytest.raises(ValueError, match="not a normalisation layer"):
        activation_curvature(model, nn.BatchNorm1d(3), *tiny_batch(), F.cross_entropy)


def test_zero_eps_identities_fail_measurably_at_large_eps():
    """The eps = 0 equalities are not artefacts of the route: at eps ~ var they break by O(1)."""
    model = tiny_net("batchnorm", widths=(3, 3))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eps = 1.0
    r = activation_curvature(model, 1, *tiny_batch(), F.cross_entropy)
    predicted = -(r["gamma"] / (r["m"] * r["sigma"] ** 2)) * r["g_yhat"] * r["lhs"]
    assert np.max(np.abs(r["bn_second_order"] - predicted)) > 1e-3 * np.abs(predicted).max()


@pytest.mark.parametrize("norm", ["layernorm", "groupnorm"])
def test_per_sample_groups_satisfy_the_zero_eps_identity_with_a_trained_affine(norm):
    """thm4.2's first form is an identity at eps = 0 for BatchNorm's formula on any axis: with LayerNorm's and
    GroupNorm's per-channel affine inside a sample's group (gamma != 1, as after training) the output-side forms
    must be taken for z = yhat (H -> Gamma H Gamma, g -> Gamma g), or the identity breaks by O(gamma - 1)."""
    from empirics.config import ModelConfig, Norm
    from empirics.models import build_model

    generator = torch.Generator().manual_seed(3)
    model = build_model(ModelConfig(channels=(4, 8), hidden=8), Norm(norm), ZERO_EPS, generator=generator).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 2.0, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    x = torch.randn(6, 1, 40, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (6,), generator=generator)
    for layer in (0, 1):
        r = activation_curvature(model, layer, x, labels, F.cross_entropy)
        assert np.all(r["gamma"] == 1.0)  # the affine is folded into g: a per-element scale
        first_form = r["hess_out_v"] / r["sigma"] ** 2 - r["g_yhat"] * r["lhs"] / (r["m"] * r["sigma"] ** 2)
        scale = np.abs(r["hess_in_v"]).max()
        np.testing.assert_allclose(r["hess_in_v"], first_form, rtol=1e-8, atol=1e-8 * scale,
                                   err_msg=f"{norm} layer {layer}")
