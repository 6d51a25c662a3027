"""Activation summaries and drift against explicit loops, float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from empirics.activations import (
    QUANTILE_LEVELS,
    _quantiles,
    activation_summary,
    bin_edges_from,
    distribution_drift,
    summarize_activations,
)
from tests.test_empirics_measurements import (
    tiny_batch,
    tiny_net,
    training_step_forward,
)


def test_summary_matches_loops_over_units_and_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 5)) * 2
    a[0, 0, 0], a[1, 1, 1], a[2, 2, 2] = 100.0, -100.0, np.inf  # one above, one below, one non-finite
    edges = np.linspace(-3, 3, 7)
    s = summarize_activations(torch.from_numpy(a), edges)
    values = [v for v in a.ravel() if np.isfinite(v)]
    for k in range(6):
        last = k == 5
        expected = sum(1 for v in values if edges[k] <= v and (v < edges[k + 1] or (last and v == edges[k + 1])))
        assert s["counts"][k] == expected
    assert s["below"] == sum(1 for v in values if v < edges[0]) >= 1
    assert s["above"] == sum(1 for v in values if v > edges[-1]) >= 1
    assert s["nonfinite"] == 1
    assert s["counts"].sum() + s["below"] + s["above"] + s["nonfinite"] == a.size
    for c in range(3):
        unit = [a[i, c, t] for i in range(4) for t in range(5)]
        mean = sum(unit) / len(unit)
        assert s["mean"][c] == pytest.approx(mean, rel=1e-12, nan_ok=True)
        if np.isfinite(mean):
            assert s["var"][c] == pytest.approx(sum((u - mean) ** 2 for u in unit) / len(unit), rel=1e-12)
    assert s["quantiles"].shape == (len(QUANTILE_LEVELS),)


def test_dense_activations_are_units_by_samples():
    a = torch.arange(12.0).reshape(4, 3)
    s = summarize_activations(a, [0.0, 6.0, 12.0])
    np.testing.assert_allclose(s["mean"], [4.5, 5.5, 6.5])
    np.testing.assert_allclose(s["var"], np.var(np.arange(12.0).reshape(4, 3), axis=0))


def test_model_summary_sees_the_training_forward_outputs():
    model = tiny_net("noisy_bn")
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    kept = []
    handle = model[1].register_forward_hook(lambda m, a, out: kept.append(out.detach()))
    model.eval()
    summaries = activation_summary(model, x, [model[1], model[4]], np.linspace(-4, 4, 9))
    handle.remove()
    with torch.no_grad():
        model.train()
        for module in model.modules():  # what the training step's forward produced at model[1]
            if hasattr(module, "frozen"):
                module.frozen = True
        reference = model[1](model[0](x))
    (seen,) = kept
    torch.testing.assert_close(seen, reference, rtol=0, atol=0)
    expected = summarize_activations(reference, np.linspace(-4, 4, 9))
    np.testing.assert_array_equal(summaries[0]["counts"], expected["counts"])
    np.testing.assert_allclose(summaries[0]["var"], expected["var"], rtol=1e-12)


def test_bin_edges_cover_the_first_step_with_room_to_drift():
    a = torch.randn(64, 4, 10, generator=torch.Generator().manual_seed(0))
    edges = bin_edges_from(a, bins=20, coverage=0.99, widen=3.0)
    assert edges.shape == (21,) and edges[0] == -edges[-1]
    assert edges[-1] > 3 * 2.0  # the 99.5% quantile of N(0,1) is 2.58
    assert summarize_activations(a, edges)["below"] == 0


def test_drift_is_the_mean_absolute_change_per_step():
    means = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    variances = np.array([[1.0, 1.0], [2.0, 1.0], [2.0, 1.0]])
    drift = distribution_drift(means, variances)
    np.testing.assert_allclose(drift["mean_change"], [0.5, 1.0])
    np.testing.assert_allclose(drift["var_change"], [0.5, 0.0])
    per_step = distribution_drift(means, variances, steps=[0, 10, 50])
    np.testing.assert_allclose(per_step["mean_change"], [0.05, 0.025])
    with pytest.raises(ValueError, match="strictly increasing"):
        distribution_drift(means, variances, steps=[0, 0, 1])


def test_modules_that_run_twice_are_rejected():
    layer = nn.ReLU()
    model = nn.Sequential(layer, layer)
    with pytest.raises(RuntimeError, match="ran 2 times"):
        activation_summary(model, torch.zeros(2, 3), [layer], [0.0, 1.0])


def _sorted_quantiles(values: torch.Tensor, levels) -> np.ndarray:
    """The full-sort reference: linear interpolation between sorted values at floor / ceil of (n - 1) q."""
    ordered = torch.sort(values).values
    position = torch.tensor(levels, dtype=torch.float64) * (values.numel() - 1)
    low, high = position.floor().long(), position.ceil().long()
    return (ordered[low] + (ordered[high] - ordered[low]) * (position - low)).numpy()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=300),
       st.lists(st.floats(0.0, 1.0), min_size=1, max_size=9))
def test_quantiles_by_selection_equal_the_full_sort_bit_for_bit(values, levels):
    tensor = torch.tensor(values, dtype=torch.float64)  # ties and repeated values included by the strategy
    selected = _quantiles(tensor, levels)
    np.testing.assert_array_equal(selected, _sorted_quantiles(tensor, levels))
    np.testing.assert_allclose(selected, np.quantile(np.asarray(values, dtype=np.float64), levels),
                               rtol=1e-12, atol=1e-9)


def test_layer_quantiles_match_numpy_on_a_real_sized_layer():
    a = torch.randn(128, 8, 40, generator=torch.Generator().manual_seed(1))
    s = summarize_activations(a, np.linspace(-4, 4, 9))
    np.testing.assert_allclose(s["quantiles"], np.quantile(a.double().numpy().ravel(), QUANTILE_LEVELS), rtol=1e-12)
