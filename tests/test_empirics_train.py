"""The training loop, its files and the resumable runner, on the smoke preset (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from empirics import runner, train
from empirics.capture import ROW_KEYS
from empirics.config import PRESETS, ConfigError, Device, Norm, RunSpec
from empirics.dln import build_dln, dln_loss, synthetic_regression
from empirics.experiments import run_specs
from empirics.models import build_model
from empirics.storage import strict_json
from empirics.train import evaluate, resolve_device, train_model, train_run

SMOKE = dataclasses.replace(PRESETS["smoke"], device=Device.CPU)


def _with_train(config, **changes):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def _strict_json(path):
    """Parse rejecting NaN/Infinity, which strict JSON does not allow."""

    def reject(constant):
        raise ValueError(f"{path} contains the non-JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_capturing_every_step_leaves_the_trajectory_bit_identical():
    config = _with_train(SMOKE, steps=20)
    every = train_model(RunSpec(_with_train(config, capture_every=1), Norm.BATCHNORM, 0.1, 0), progress=False)
    rarely = train_model(RunSpec(_with_train(config, capture_every=1000), Norm.BATCHNORM, 0.1, 0), progress=False)
    assert len(np.unique(every.captures["step"])) == 20
    np.testing.assert_array_equal(np.unique(rarely.captures["step"]), [0, 19])  # first and last step
    assert every.history["train"] == rarely.history["train"]
    assert every.history["test"] == rarely.history["test"]
    for (name, a), b in zip(every.model.state_dict().items(), rarely.model.state_dict().values()):
        assert torch.equal(a, b), name


def _sgd_trajectory(kind: str, foreach: bool, steps: int = 4) -> list[torch.Tensor]:
    """The parameters after `steps` SGD updates of the default preset's BN network on one fixed batch."""
    config, generator = PRESETS["default"], torch.Generator().manual_seed(0)
    if kind == "dln":
        model = build_dln(config.dln.depth, config.dln.width, "batchnorm", generator=generator)
        x, target, _ = synthetic_regression(config.dln.samples, config.dln.width, seed=0)
        loss_fn, lr = dln_loss, config.dln.lrs[0]
    else:
        model = build_model(config.model, Norm.BATCHNORM, config.train.bn_eps, generator=generator)
        x = torch.randn(config.train.batch_size, 1, 40, generator=generator)
        target = torch.randint(0, 10, (config.train.batch_size,), generator=generator)
        loss_fn, lr = torch.nn.functional.cross_entropy, config.train.lrs[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0, foreach=foreach)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["vgg1d", "dln"])
def test_foreach_sgd_takes_the_per_tensor_loops_steps_bit_for_bit(kind):
    """train.py's SGD(foreach=True) is the same update p <- p - lr g as torch's per-tensor CPU loop, to the bit."""
    fused, looped = _sgd_trajectory(kind, foreach=True), _sgd_trajectory(kind, foreach=False)
    assert len(fused) == len(looped) > 0
    for index, (a, b) in enumerate(zip(fused, looped)):
        assert torch.equal(a, b), f"parameter {index}: max |diff| {(a - b).abs().max().item():.3g}"


def test_same_seed_reproduces_and_another_seed_differs():
    config = _with_train(SMOKE, steps=5)
    first = train_model(RunSpec(config, Norm.NONE, 0.1, 0), progress=False)
    again = train_model(RunSpec(config, Norm.NONE, 0.1, 0), progress=False)
    other = train_model(RunSpec(config, Norm.NONE, 0.1, 1), progress=False)
    assert first.history["train"] == again.history["train"]
    assert first.history["train"]["loss"] != other.history["train"]["loss"]


def test_training_leaves_global_rng_states_untouched():
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    train_model(RunSpec(_with_train(SMOKE, steps=3), Norm.BATCHNORM, 0.1, 0), progress=False)
    assert torch.equal(torch_state, torch.random.get_rng_state())
    after = np.random.get_state()
    assert numpy_state[0] == after[0] and np.array_equal(numpy_state[1], after[1]) and numpy_state[2:] == after[2:]


def test_run_writes_valid_files_with_the_promised_schema(tmp_path):
    spec = RunSpec(SMOKE, Norm.BATCHNORM, 0.1, 0)
    history = train_run(spec, tmp_path / "run", progress=False)
    run_dir = tmp_path / "run"
    assert (run_dir / "done").exists()
    assert not list(run_dir.glob(".*tmp"))  # no temp files left behind
    saved_spec = _strict_json(run_dir / "spec.json")
    assert saved_spec["run_id"] == spec.run_id and saved_spec["norm"] == "batchnorm"
    assert saved_spec["config"]["model"]["channels"] == [8, 8, 16, 16]
    saved = _strict_json(run_dir / "history.json")
    assert saved == history
    t = SMOKE.train
    assert saved["train"]["step"] == [0, 5, 10, 15, 20, 25, 29]  # every log_every and the last step
    assert saved["test"]["step"] == [0, 15, 30]  # every eval_every and the end (after 30 updates)
    assert saved["steps_done"] == t.steps and saved["diverged_at"] is None and saved["device"] == "cpu"
    assert saved["final_test_acc"] == saved["test"]["acc"][-1]
    assert 0.0 <= saved["final_train_acc"] <= 1.0
    with np.load(run_dir / "captures.npz", allow_pickle=False) as archive:
        captures = {key: archive[key] for key in archive.files}
    assert set(captures) == set(ROW_KEYS)
    np.testing.assert_array_equal(np.unique(captures["step"]), [0, 10, 20, 29])
    assert captures["step"].dtype == np.int64 and captures["lhs"].dtype == np.float64
    assert np.all(captures["lhs"] >= 0) and np.all(np.isfinite(captures["lhs"]))


def test_run_without_batchnorm_writes_empty_captures(tmp_path):
    train_run(RunSpec(_with_train(SMOKE, steps=2), Norm.NONE, 0.1, 0), tmp_path, progress=False)
    with np.load(tmp_path / "captures.npz", allow_pickle=False) as archive:
        assert set(archive.files) == set(ROW_KEYS)
        assert all(archive[key].shape == (0,) for key in archive.files)


def test_divergence_is_recorded_not_raised(tmp_path):
    spec = RunSpec(SMOKE, Norm.NONE, 1e6, 0)  # absurd lr: the loss overflows within a few steps
    history = train_run(spec, tmp_path, progress=False)
    saved = _strict_json(tmp_path / "history.json")
    assert saved == history
    assert saved["diverged_at"] is not None and saved["diverged_at"] < SMOKE.train.steps
    assert saved["steps_done"] == saved["diverged_at"]
    assert saved["train"]["step"][-1] == saved["diverged_at"]
    assert saved["train"]["loss"][-1] is None  # the non-finite loss, written as null
    assert saved["test"]["step"][-1] == saved["steps_done"]
    assert (tmp_path / "done").exists()


def test_evaluate_restores_train_mode_and_running_statistics():
    result = train_model(RunSpec(_with_train(SMOKE, steps=2), Norm.BATCHNORM, 0.1, 0), progress=False)
    buffers = [b.clone() for b in result.model.buffers()]
    x = torch.randn(50, 1, 40, generator=torch.Generator().manual_seed(0))
    loss, acc = evaluate(result.model, x, torch.zeros(50, dtype=torch.int64))
    assert result.model.training and math.isfinite(loss) and 0 <= acc <= 1
    assert all(torch.equal(a, b) for a, b in zip(buffers, result.model.buffers()))


def test_resolve_device():
    assert resolve_device(Device.CPU) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(Device.AUTO).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda was requested"):
            resolve_device(Device.CUDA)


def test_run_all_trains_each_run_once_and_resumes(tmp_path, monkeypatch):
    config = dataclasses.replace(_with_train(SMOKE, steps=2, norms=(Norm.NONE, Norm.BATCHNORM)), experiments=("train",))
    trained = []
    real_train_run = train.train_run

    def counting_train_run(spec, out_dir, progress=True):
        trained.append(spec.run_id)
        return real_train_run(spec, out_dir, progress)

    monkeypatch.setattr(train, "train_run", counting_train_run)
    directories = runner.run_all(config, tmp_path, progress=False)
    specs = run_specs(config)
    assert directories == [tmp_path / "runs" / spec.run_id for spec in specs]
    assert trained == [spec.run_id for spec in specs]

    trained.clear()
    (directories[1] / "done").unlink()  # as if interrupted before finishing
    assert runner.run_all(config, tmp_path, progress=False) == directories
    assert trained == [specs[1].run_id]

    loaded = runner.load_run(directories[1])
    assert loaded["spec"]["run_id"] == specs[1].run_id
    assert loaded["history"]["steps_done"] == 2
    assert set(loaded["captures"]) == set(ROW_KEYS)


def test_run_all_validates_before_training(tmp_path):
    with pytest.raises(ConfigError, match="train.steps"):
        runner.run_all(_with_train(SMOKE, steps=0), tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()


def test_load_run_refuses_incomplete_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'done' marker"):
        runner.load_run(tmp_path)


class _Interrupt(Exception):
    """Raised by a test hook inside the training loop, as a kill would stop it there."""


def _interrupting_probes(monkeypatch, at_step: int) -> None:
    """Make the probe recorder raise when the loop reaches `at_step` (after that step's backward)."""
    real_before_update = train.ProbeRecorder.before_update

    def before_update(self, step, *batch_and_loss):
        if step == at_step:
            raise _Interrupt(step)
        return real_before_update(self, step, *batch_and_loss)

    monkeypatch.setattr(train.ProbeRecorder, "before_update", before_update)


def _run_arrays(directory) -> dict[str, np.ndarray]:
    arrays = {}
    for name in ("captures", "probes"):
        with np.load(directory / f"{name}.npz", allow_pickle=False) as archive:
            arrays.update({f"{name}/{key}": archive[key] for key in archive.files})
    return arrays


# runs whose probes cover every kind of state a checkpoint must carry: captures and histogram
# edges (noisy BN, its noise generator), ICS snapshots and landscape tables, the DLN's full batch
_RESUMABLE = {
    "noisy_batchnorm": lambda: [s for s in run_specs(dataclasses.replace(SMOKE, experiments=("noisy", "ics")))
                                if s.norm is Norm.NOISY_BATCHNORM][0],
    "batchnorm-bounds": lambda: [s for s in run_specs(dataclasses.replace(SMOKE, experiments=("bounds", "landscape")))
                                 if s.norm is Norm.BATCHNORM][0],
    "dln": lambda: [s for s in run_specs(dataclasses.replace(SMOKE, experiments=("dln",)))
                    if s.norm is Norm.BATCHNORM][0],
}


@pytest.mark.parametrize("which", sorted(_RESUMABLE))
def test_a_run_interrupted_mid_way_resumes_from_its_checkpoint_bit_identically(which, tmp_path, monkeypatch):
    spec = _RESUMABLE[which]()
    assert spec.config.checkpoint_every == 10 and spec.config.train.steps == 30
    uninterrupted = tmp_path / "uninterrupted"
    train_run(spec, uninterrupted, progress=False)

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _interrupting_probes(patch, at_step=17)  # last checkpoint after 10 updates; steps 10..16 are lost
        with pytest.raises(_Interrupt):
            train_run(spec, resumed, progress=False)
    assert (resumed / train.CHECKPOINT).exists() and not (resumed / "done").exists()
    assert torch.load(resumed / train.CHECKPOINT, weights_only=False)["progress"].next_step == 10

    history = train_run(spec, resumed, progress=False)
    assert history["resumed_at"] == [10]
    assert not (resumed / train.CHECKPOINT).exists()  # deleted once the run is done
    expected, got = _strict_json(uninterrupted / "history.json"), _strict_json(resumed / "history.json")
    for key in ("wall_s", "resumed_at"):  # time taken and the resume itself are the only differences
        expected.pop(key), got.pop(key)
    assert got == expected
    expected_arrays, got_arrays = _run_arrays(uninterrupted), _run_arrays(resumed)
    assert sorted(got_arrays) == sorted(expected_arrays) and expected_arrays
    for key, array in expected_arrays.items():
        assert got_arrays[key].dtype == array.dtype and np.array_equal(got_arrays[key], array, equal_nan=True), key


def test_checkpoint_interval_changes_no_run_id():
    every = dataclasses.replace(SMOKE, checkpoint_every=7)
    never = dataclasses.replace(SMOKE, checkpoint_every=0)
    assert [s.run_id for s in run_specs(every)] == [s.run_id for s in run_specs(never)]


def test_a_checkpoint_of_another_run_is_ignored(tmp_path, monkeypatch):
    spec = RunSpec(_with_train(SMOKE, steps=12), Norm.BATCHNORM, 0.1, 0)
    other = RunSpec(_with_train(SMOKE, steps=12), Norm.BATCHNORM, 0.1, 1)
    with monkeypatch.context() as patch:
        _interrupting_probes(patch, at_step=11)
        with pytest.raises(_Interrupt):
            train_run(other, tmp_path / "other", progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "other" / train.CHECKPOINT).rename(tmp_path / "run" / train.CHECKPOINT)
    history = train_run(spec, tmp_path / "run", progress=False)
    assert history["resumed_at"] == [] and history["steps_done"] == 12
    assert history["train"] == strict_json(train_model(spec, progress=False).history["train"])


def test_deferred_training_accuracies_equal_the_per_step_ones():
    """The accuracies flushed together are each step's own float32 mean of `_correct`, bit for bit."""
    generator = torch.Generator().manual_seed(3)
    log: list = []
    pending = train._PendingAccuracy(log)
    expected = []
    for size in (128, 128, 97, 128, 5):
        logits = torch.randn(size, 10, generator=generator)
        logits[0, 3] = float("nan") if size == 97 else logits[0, 3]  # a non-finite logit counts as wrong
        labels = torch.randint(0, 10, (size,), generator=generator)
        labels[: size // 2] = logits[: size // 2].argmax(dim=1)  # some right, some wrong
        expected.append(train._correct(logits, labels).float().mean().item())
        pending.keep(logits, labels)
        if size == 97:
            pending.flush()  # a checkpoint in between
    pending.flush()
    assert log == expected
