"""Experiments plan runs once each; probes never change a trajectory; run ids track what a run depends on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from empirics.config import (
    PRESETS,
    ConfigError,
    DLNConfig,
    Norm,
    ProbeConfig,
    RunSpec,
    override,
)
from empirics.experiments import plan, runs_of
from empirics.train import train_model

SMOKE = PRESETS["smoke"]




def test_plan_trains_each_run_once_with_the_union_of_its_probes():
    config = dataclasses.replace(SMOKE, experiments=("train", "ics", "landscape", "bounds"))
    specs = plan(config)
    keys = [(s.kind, s.norm, s.lr, s.seed) for s in specs]
    assert len(keys) == len(set(keys))
    (bn,) = [s for s in specs if s.norm is Norm.BATCHNORM]
    assert bn.probes.ics_every and bn.probes.landscape_every and bn.probes.curvature_every
    assert runs_of(config, "ics", specs) == [s for s in specs if s.norm in (Norm.NONE, Norm.BATCHNORM)]


def test_a_config_without_a_probe_does_not_widen_its_layers_to_all():
    """The train experiment asks for no curvature: merging it must keep bounds' first and last layer."""
    bounds = ProbeConfig(curvature_every=500, curvature_layers=(0, -1), ics_every=100, ics_layers=(8, 16))
    for merged in (bounds.union(ProbeConfig()), ProbeConfig().union(bounds)):
        assert merged.curvature_layers == (0, -1) and merged.ics_layers == (8, 16)
    every_layer = ProbeConfig(curvature_every=100)  # () with the probe on: every layer, and that wins
    assert bounds.union(every_layer).curvature_layers == ()


def test_unknown_experiment_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown experiment"):
        plan(override(SMOKE, "experiments=train,fig99"))


def test_run_id_ignores_the_sweep_and_the_worker_count():
    spec = plan(dataclasses.replace(SMOKE, experiments=("train",)))[0]
    wider = dataclasses.replace(spec.config, workers=7, experiments=("train", "dln"),
                                train=dataclasses.replace(spec.config.train, lrs=(0.1, 0.2)))
    assert RunSpec(wider, spec.norm, spec.lr, spec.seed, spec.kind, spec.probes).run_id == spec.run_id
    longer = dataclasses.replace(spec.config, train=dataclasses.replace(spec.config.train, steps=31))
    assert RunSpec(longer, spec.norm, spec.lr, spec.seed, spec.kind, spec.probes).run_id != spec.run_id


@pytest.mark.parametrize("norm", [Norm.BATCHNORM, Norm.NOISY_BATCHNORM])
def test_probes_leave_the_training_trajectory_bit_identical(norm):
    config = override(SMOKE, "train.steps=12")
    every = ProbeConfig(landscape_every=4, ics_every=4, curvature_every=6, weight_bounds_every=4, histogram_every=4)
    plain = train_model(RunSpec(config, norm, 0.1, 0), progress=False)
    probed = train_model(RunSpec(config, norm, 0.1, 0, probes=every), progress=False)
    assert probed.history["train"] == plain.history["train"]
    assert probed.history["test"] == plain.history["test"]
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), probed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert {"landscape/beta_eff", "ics/ics_l2", "curvature/hess_in_v", "weights/grad_w_sq", "hist/counts_0"} \
        <= set(probed.probes)


def test_deep_linear_network_run_trains_full_batch_and_records_probes():
    config = dataclasses.replace(SMOKE, dln=DLNConfig(depth=4, samples=64, steps=8, eval_every=4, log_every=2,
                                                      probe_every=4))
    spec = RunSpec(config, Norm.BATCHNORM, 1e-3, 0, "dln",
                   ProbeConfig(landscape_every=4, ics_every=4, landscape_multipliers=(0.01, 1.0, 30.0)))
    result = train_model(spec, progress=False)
    assert result.history["steps_done"] == 8 and result.history["final_train_acc"] is None
    assert result.probes["landscape/eta"].shape == (2, 3)
    assert result.probes["ics/ics_l2"].shape[0] == 2


def test_vgg2d_on_a_cifar10_folder_trains_with_captures_and_probes(tmp_path):
    """The paper preset's path, at toy size: a fake cifar-10-batches-py folder, VGG-11 at 1/16 width."""
    from tests.test_empirics_cifar_vgg2d import write_fake_cifar10

    write_fake_cifar10(tmp_path, n_per_batch=8)
    config = dataclasses.replace(
        PRESETS["paper"], data=dataclasses.replace(PRESETS["paper"].data, root=str(tmp_path)),
        model=dataclasses.replace(PRESETS["paper"].model, name="vgg11", width_multiplier=1 / 16),
        train=dataclasses.replace(SMOKE.train, steps=4, batch_size=8, capture_every=2, probe_every=2,
                                  curvature_every=2, curvature_layers=(-1,)))
    spec = RunSpec(config, Norm.BATCHNORM, 0.1, 0, probes=ProbeConfig(landscape_every=2, weight_bounds_every=2,
                                                                        curvature_every=2, curvature_layers=(-1,)))
    result = train_model(spec, progress=False)
    assert result.history["steps_done"] == 4
    assert len(result.captures["lhs"]) > 0 and result.captures["m"][0] == 8 * 32 * 32
    assert {"landscape/beta_eff", "weights/grad_w_sq", "curvature/hess_in_v"} <= set(result.probes)
