"""The capture of every registered normaliser, on every axis, against slow float64 references.

References: `norms.group_rows` (the formula's groups as explicit rows), `theory.numeric.scale_and_hat` in NumPy per
row for sigma and yhat, an explicit loop per group for the reductions, and autograd of the module for dL/dy. Then
the measured checks: every proved activation statement holds on the captured rows of a real float32 step, and a
1% error in the measured gradient is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from empirics.capture import BoundCapture
from empirics.config import ModelConfig, Norm
from empirics.group_reductions import capture_points
from empirics.models import build_model
from empirics.norms import group_rows
from empirics.vgg2d import build_vgg2d
from empirics.norms import norm_factory
from theory import numeric
from theory.normalisers import REGISTRY
from verify import checks

MODEL = ModelConfig(channels=(4, 8), hidden=8)
NORMALISERS = tuple(REGISTRY)


def _step(model, x, labels):
    capture = BoundCapture(model)
    with capture.active():
        F.cross_entropy(model(x), labels).backward()
    return capture, capture.collect(step=0)


def _model(name: str, dtype=torch.float32):
    generator = torch.Generator().manual_seed(11)
    model = build_model(MODEL, Norm(name), 1e-5, generator=generator)
    with torch.no_grad():  # a trained-looking affine: gamma != 1 inside per-sample groups must be folded in
        for parameter_name, parameter in model.named_parameters():
            if parameter.dim() == 1 and parameter_name.endswith("weight"):
                parameter.uniform_(0.5, 1.5, generator=generator)
    return model.to(dtype)


def _batch(dtype=torch.float32, n=6):
    generator = torch.Generator().manual_seed(5)
    return torch.randn(n, 1, 40, generator=generator, dtype=dtype), torch.randint(0, 10, (n,), generator=generator)


def _reference_rows(model, x, labels) -> list[dict]:
    """Per capture point, per group: the reductions by explicit loops over group_rows, in float64."""
    points = capture_points(model)
    kept: dict[int, dict] = {}
    handles = []
    for index, point in enumerate(points):
        def forward_hook(module, inputs, output, index=index):
            (y,) = inputs
            kept[index] = {"y": y, "z": output}
            y.retain_grad()
            output.retain_grad()
        handles.append(point.module.register_forward_hook(forward_hook))
    F.cross_entropy(model(x), labels).backward()
    for handle in handles:
        handle.remove()
    references = []
    for index, point in enumerate(points):
        y, z = kept[index]["y"], kept[index]["z"]
        dy, g = y.grad.double(), z.grad.double()
        scale = point.affine()
        gamma_rows = None
        if scale is not None:
            scale = scale.detach().double()
            if point.axis in ("batch", "weight space"):
                gamma_rows = scale.reshape(-1)
            else:
                g = g * scale.reshape(1, -1, *([1] * (y.dim() - 2)))
        rows_y = group_rows(point.slot, y.detach().double()).numpy()
        rows_g = group_rows(point.slot, g).numpy()
        rows_dy = group_rows(point.slot, dy).numpy()
        for k in range(rows_y.shape[0]):
            gamma = 1.0 if gamma_rows is None else float(gamma_rows[k])
            gk = rows_g[k] / gamma if point.axis == "weight space" else rows_g[k]
            sigma, yhat = numeric.scale_and_hat(point.normaliser, rows_y[k], point.eps, dims=(0,))
            references.append({"layer": index, "channel": k, "gamma": gamma, "sigma": float(sigma[0]),
                               "g_sum": float(sum(gk)), "g_sq": float(sum(v * v for v in gk)),
                               "g_yhat": float(sum(a * b for a, b in zip(gk, yhat))),
                               "lhs": float(sum(v * v for v in rows_dy[k])), "m": rows_y.shape[1]})
    return references


@pytest.mark.parametrize("name", NORMALISERS)
def test_group_reductions_match_explicit_loops_in_float64(name):
    model = _model(name, torch.float64)
    x, labels = _batch(torch.float64)
    _, rows = _step(model, x, labels)
    model.zero_grad(set_to_none=True)
    references = _reference_rows(model, x, labels)
    assert len(references) == len(rows["step"]) > 0
    for key in ("gamma", "sigma", "g_sum", "g_sq", "g_yhat", "lhs", "m"):
        expected = np.array([r[key] for r in references], dtype=np.float64)
        scale = np.abs(expected).max() + 1e-300
        np.testing.assert_allclose(rows[key], expected, rtol=1e-9, atol=1e-12 * scale, err_msg=f"{name} {key}")


@pytest.mark.parametrize("name", NORMALISERS)
def test_every_proved_activation_statement_holds_on_float32_captures_and_catches_one_percent(name):
    _, rows = _step(_model(name), *_batch())
    statuses = {"thm4.1": "proved", "factC.1": "proved", "obs4.3": "proved"}
    measured = []
    for statement in statuses:
        try:
            check = (checks.gradient_identity_check(name) if statement == "factC.1" else
                     checks.matched_scale_check(name) if statement == "obs4.3" else
                     checks.activation_bound_check(statement, name))
        except KeyError:
            continue  # the normaliser has no such statement (no closed form, or not BatchNorm's formula)
        if statement == "obs4.3" and "obs4.3" not in _statements(name):
            continue
        summary = checks.summarise(checks.check_rows(check, rows, "float32"))
        assert summary["n_checked"] == len(rows["lhs"]) > 0, (name, statement, summary)
        assert summary["n_violations"] == 0, (name, statement, summary)
        inflated = {**rows, "lhs": rows["lhs"] * 1.01**2}
        caught = checks.summarise(checks.check_rows(check, inflated, "float32"))
        # an identity is violated both ways; a bound only where it is near-tight (at eps > 0 it is tight to ~1e-4)
        tight = np.asarray(check.bound(rows)) * 0.99 < rows["lhs"]
        assert caught["n_violations"] >= int(tight.sum()), (name, statement, caught)
        measured.append(statement)
    assert "thm4.1" in measured


def _statements(name: str) -> set[str]:
    from theory.statements import establish_all

    return set(establish_all(REGISTRY[name]))


@pytest.mark.parametrize("name", [n for n in NORMALISERS if n not in ("batchnorm", "layernorm", "groupnorm", "lp2")])
def test_a_formula_normaliser_gradient_is_its_formula_within_float32_rounding(name):
    """identity_err, the float32 gradient's distance from the formula's float64 one, stays inside the a-priori
    rounding bound the checks use to accept it (assumption `GRADIENT_IDENTITY`)."""
    _, rows = _step(_model(name), *_batch())
    assert np.all(np.isfinite(rows["identity_err"]))
    assert np.all(checks.GRADIENT_IDENTITY.holds(rows))
    assert np.all(rows["identity_err"] <= 1e-4 * np.sqrt(rows["lhs"]) + 1e-30)


def test_two_dimensional_groupnorm_and_batchnorm_capture_their_groups():
    """Conv2d with BatchNorm2d (a channel over (sample, h, w)) and 2-D GroupNorm (a sample's 4 channels)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (5,), generator=generator)
    for name, groups_per_layer in (("batchnorm", lambda c: c), ("groupnorm", lambda c: 5 * c // 4)):
        model = build_vgg2d([8, "M", 8], norm_factory(Norm(name), 1e-5, spatial_dims=2), generator=generator,
                            in_channels=1, image_size=8)
        _, rows = _step(model, x, labels)
        counts = [int(np.sum(rows["layer"] == layer)) for layer in range(rows["layer"].max() + 1)]
        assert counts == [groups_per_layer(8), groups_per_layer(8)]
        summary = checks.summarise(checks.check_rows(checks.activation_bound_check("thm4.1", name), rows, "float32"))
        assert summary["n_violations"] == 0 and summary["n_checked"] == len(rows["lhs"])


def test_piecewise_reductions_are_the_ones_numeric_computes_per_group():
    """l1 / l-inf: the sign and maximum reductions equal numeric.piecewise_reductions on each group's rows."""
    for name in ("lp1", "lpinf"):
        model = _model(name, torch.float64)
        x, labels = _batch(torch.float64)
        _, rows = _step(model, x, labels)
        model.zero_grad(set_to_none=True)
        points = capture_points(model)
        kept = {}

        def keep(module, inputs, output, k):
            kept[k] = (inputs[0], output)
            output.retain_grad()

        handles = [p.module.register_forward_hook(lambda m, i, o, k=k: keep(m, i, o, k)) for k, p in enumerate(points)]
        F.cross_entropy(model(x), labels).backward()
        for handle in handles:
            handle.remove()
        y, z = kept[0]
        point = points[0]
        rows_y = group_rows(point.slot, y.detach()).numpy()
        rows_g = group_rows(point.slot, z.grad.double()).numpy()
        first = rows["layer"] == 0
        for k in range(rows_y.shape[0]):
            expected = numeric.piecewise_reductions(name, rows_y[k], rows_g[k], point.eps)
            for key in ("g_sign", "sign_mean", "g_at_max", "sign_at_max", "yhat_sq"):
                np.testing.assert_allclose(rows[key][first][k], expected[key], rtol=1e-9, atol=1e-12,
                                           err_msg=f"{name} group {k} {key}")
