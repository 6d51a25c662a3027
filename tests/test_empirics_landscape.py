"""Landscape probe against a deepcopy-and-step reference, float64, on tiny nets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from empirics.landscape import landscape_probe
from empirics.noisy import NoisyIdentity
from tests.test_empirics_measurements import (
    NORMS,
    tiny_batch,
    tiny_net,
    training_step_forward,
)

# float64 on both routes; they differ only in summation order (functional_call vs module call)
RTOL = 1e-10
MULTIPLIERS = [0.5, 1.0, 2.0, 4.0]
LR = 0.2


def _loss_and_grads(model, x, labels):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return loss.item(), [p.grad.detach().clone() for p in model.parameters()]


def _reference_probe(model, x, labels, lr, multipliers):
    """One deep copy per eta, parameters stepped by hand, loss and .grad from loss.backward()."""
    def fresh():
        clone = copy.deepcopy(model).train()
        for module in clone.modules():
            if isinstance(module, NoisyIdentity):
                module.frozen = True  # the copy replays the training step's noise
        return clone

    loss0, g = _loss_and_grads(fresh(), x, labels)
    g_norm = np.sqrt(sum(float((t**2).sum()) for t in g))
    losses, changes = [], []
    for multiplier in multipliers:
        clone = fresh()
        with torch.no_grad():
            for p, gp in zip(clone.parameters(), g):
                p -= multiplier * lr * gp
        loss, grads = _loss_and_grads(clone, x, labels)
        losses.append(loss)
        changes.append(np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(grads, g))))
    etas = np.array(multipliers) * lr
    return {"loss0": loss0, "grad_norm": g_norm, "loss": np.array(losses), "grad_change": np.array(changes),
            "beta_eff": np.max(np.array(changes) / (etas * g_norm))}


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "vmap"])
@pytest.mark.parametrize("norm", NORMS)
def test_probe_matches_deepcopy_reference_in_float64(norm, batched):
    model = tiny_net(norm)
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    probe = landscape_probe(model, F.cross_entropy, x, labels, LR, MULTIPLIERS, batched=batched)
    expected = _reference_probe(model, x, labels, LR, MULTIPLIERS)
    for key in ("loss0", "grad_norm", "loss", "grad_change", "beta_eff"):
        np.testing.assert_allclose(probe[key], expected[key], rtol=RTOL, err_msg=key)
    np.testing.assert_allclose(probe["eta"], np.array(MULTIPLIERS) * LR, rtol=0)
    assert probe["loss_range"] == pytest.approx(np.ptp(expected["loss"]), rel=RTOL, abs=1e-14)
    with_x0 = np.append(expected["loss"], expected["loss0"])
    assert probe["loss_range_with_x0"] == pytest.approx(np.ptp(with_x0), rel=RTOL, abs=1e-14)
    assert probe["grad_change_min"] <= probe["grad_change_max"]


def test_batched_and_unbatched_probes_agree_and_given_grads_are_used():
    model = tiny_net("batchnorm")
    x, labels = tiny_batch()
    training_step_forward(model, x, labels)
    loop = landscape_probe(model, F.cross_entropy, x, labels, LR, MULTIPLIERS)
    vmapped = landscape_probe(model, F.cross_entropy, x, labels, LR, MULTIPLIERS, batched=True, chunk_size=3)
    given = landscape_probe(model, F.cross_entropy, x, labels, LR, MULTIPLIERS,
                            grads={n: p.grad for n, p in model.named_parameters()})
    for key in ("loss", "grad_change", "beta_eff", "loss0"):
        np.testing.assert_allclose(vmapped[key], loop[key], rtol=RTOL, err_msg=key)
        np.testing.assert_allclose(given[key], loop[key], rtol=RTOL, err_msg=key)


def test_small_steps_see_a_nearly_linear_loss():
    """L(x0 - eta g) = L(x0) - eta ||g||^2 + O(eta^2): the probe's loss has the right first-order slope."""
    model = tiny_net("batchnorm")
    x, labels = tiny_batch()
    probe = landscape_probe(model, F.cross_entropy, x, labels, 1e-6, [1.0])
    slope = (probe["loss0"] - probe["loss"][0]) / probe["eta"][0]
    assert slope == pytest.approx(probe["grad_norm"] ** 2, rel=1e-4)


@pytest.mark.parametrize("multipliers", [[], [0.0, 1.0], [-1.0]])
def test_multipliers_must_be_positive(multipliers):
    with pytest.raises(ValueError, match="positive"):
        landscape_probe(tiny_net(), F.cross_entropy, *tiny_batch(), 0.1, multipliers)


def test_the_step_loss_passed_with_its_gradient_is_reported_as_loss0():
    model = tiny_net("batchnorm")
    x, labels = tiny_batch()
    loss, _ = _loss_and_grads(model, x, labels)
    grads = {n: p.grad for n, p in model.named_parameters()}
    computed = landscape_probe(model, F.cross_entropy, x, labels, LR, MULTIPLIERS, grads=grads)
    given = landscape_probe(model, F.cross_entropy, x, labels, LR, MULTIPLIERS, grads=grads, loss0=loss)
    assert given["loss0"] == loss and computed["loss0"] == pytest.approx(loss, rel=RTOL)
    np.testing.assert_array_equal(given["loss"], computed["loss"])
