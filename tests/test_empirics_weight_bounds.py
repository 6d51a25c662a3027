"""thm4.4 weight-space terms against explicit loops and autograd, float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empirics.weight_bounds import (
    spectral_norm_sq,
    unfolded_input,
    weight_bound_terms,
    weight_bound_terms_of_layers,
)
from tests.test_empirics_measurements import tiny_batch, tiny_net

RTOL = 1e-10  # float64, summation order only


def _loop_unfold(x: np.ndarray, kernel: int, padding: int, stride: int, dilation: int) -> np.ndarray:
    """Row (n, t): the in_channels * kernel inputs output position t of sample n sees (zero padded)."""
    n, channels, length = x.shape
    out_length = (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    rows = []
    for i in range(n):
        for t in range(out_length):
            row = []
            for c in range(channels):
                for k in range(kernel):
                    position = t * stride + k * dilation - padding
                    row.append(x[i, c, position] if 0 <= position < length else 0.0)
            rows.append(row)
    return np.array(rows)


def _strided_net() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, stride=2, dilation=2), nn.BatchNorm1d(3), nn.ReLU(),
                             nn.Flatten(), nn.Linear(3 * 4, 4)).double()


def _reference(model, layer_index, x, labels):
    """Autograd weight gradient and layer-output gradient from a deep copy, then loops for X^T dy."""
    clone = copy.deepcopy(model).train()
    kept = {}
    clone[layer_index].register_forward_hook(lambda m, a, out: kept.update(x=a[0].detach(), y=out))
    loss = F.cross_entropy(clone(x), labels)
    grad_w, grad_y = torch.autograd.grad(loss, [clone[layer_index].weight, kept["y"]])
    layer = clone[layer_index]
    if isinstance(layer, nn.Conv1d):
        matrix = _loop_unfold(kept["x"].numpy(), layer.kernel_size[0], layer.padding[0], layer.stride[0],
                              layer.dilation[0])
        dy = grad_y.numpy().transpose(1, 0, 2).reshape(grad_y.shape[1], -1)
    else:
        matrix, dy = kept["x"].numpy(), grad_y.numpy().T
    grad_w = grad_w.numpy().reshape(grad_w.shape[0], -1)
    explicit = np.array([[sum(matrix[r, f] * dy[j, r] for r in range(matrix.shape[0]))
                          for f in range(matrix.shape[1])] for j in range(dy.shape[0])])
    return matrix, grad_w, dy, explicit


@pytest.mark.parametrize("net, layer_index", [("tiny", 0), ("tiny", 3), ("tiny", 8), ("strided", 0)],
                         ids=["conv-first", "conv-after-bn", "linear", "conv-stride2-dilation2"])
def test_terms_match_loops_and_the_identity_holds(net, layer_index):
    model = tiny_net("batchnorm") if net == "tiny" else _strided_net()
    x, labels = tiny_batch() if net == "tiny" else tiny_batch(n=4, seed=2)
    if net == "strided":
        x = torch.randn(4, 2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    matrix, grad_w, dy, explicit = _reference(model, layer_index, x, labels)
    np.testing.assert_allclose(explicit, grad_w, rtol=RTOL, atol=1e-14)  # dL/dW_j = X^T dL/dy_j
    result = weight_bound_terms(model, model[layer_index], x, labels, F.cross_entropy)
    np.testing.assert_allclose(result["grad_w_sq"], (grad_w**2).sum(1), rtol=RTOL)
    np.testing.assert_allclose(result["dy_sq"], (dy**2).sum(1), rtol=RTOL)
    assert result["x_spec_sq"] == pytest.approx(np.linalg.norm(matrix, 2) ** 2, rel=RTOL)
    assert result["rows"] == matrix.shape[0]
    assert np.all(result["identity_err"] <= 1e-12 * np.sqrt(result["grad_w_sq"]).max())
    assert np.all(result["grad_w_sq"] <= result["x_spec_sq"] * result["dy_sq"] * (1 + 1e-12))


def test_unfold_matches_the_conv_it_describes():
    conv = _strided_net()[0]
    x = torch.randn(3, 2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rows = unfolded_input(conv, x)  # (N * L_out, C_in * k)
    expected = conv(x).detach() - conv.bias.detach()[None, :, None]  # (N, C_out, L_out)
    product = (rows @ conv.weight.detach().reshape(3, -1).T).reshape(3, -1, 3).transpose(1, 2)
    torch.testing.assert_close(product, expected, rtol=1e-12, atol=1e-12)


def test_spectral_norm_uses_the_smaller_gram_either_way():
    wide = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for matrix in (wide, wide.T):
        assert spectral_norm_sq(matrix) == pytest.approx(float(torch.linalg.matrix_norm(matrix, ord=2)) ** 2, rel=1e-12)


def test_unsupported_layers_are_rejected_with_the_rule():
    with pytest.raises(TypeError, match="neither Conv1d nor Linear"):
        unfolded_input(nn.ReLU(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="groups=1"):
        unfolded_input(nn.Conv1d(2, 2, 3, groups=2), torch.zeros(2, 2, 5))
    model = tiny_net()
    with pytest.raises(ValueError, match="not a layer of the model"):
        weight_bound_terms(model, nn.Linear(2, 2), *tiny_batch(), F.cross_entropy)


def test_all_layers_from_one_pass_equal_one_layer_at_a_time():
    model = tiny_net("batchnorm")
    x, labels = tiny_batch()
    layers = [model[0], model[3], model[8]]
    together = weight_bound_terms_of_layers(model, layers, x, labels, F.cross_entropy)
    for layer, terms in zip(layers, together):
        alone = weight_bound_terms(model, layer, x, labels, F.cross_entropy)
        for key in alone:
            np.testing.assert_allclose(terms[key], alone[key], rtol=RTOL, err_msg=key)
