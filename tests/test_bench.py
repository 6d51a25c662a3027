"""`python -m verify bench` at the smoke size: bench.json's structure, finite positive figures, and the
report section and README block drawn from it. Timings are never asserted: they depend on the machine."""

from __future__ import annotations

import json
import math

import pytest

from verify.bench import SIZES, TARGETS
from verify.cli import main
from verify.readme import BENCH_END, BENCH_START, bench_block, update_readme
from verify.report.runs import performance_blocks

PROBE_FIGURES = ("train_step", "capture_overhead", "capture_overhead_torch", "capture_hooks_floor", "capture_disabled",
                 "probe_point_unbatched", "probe_point_batched", "ics_layer", "hvp", "hvp_amortised", "probed_step", "pool_step",
                 "lp_step_lp1", "lp_step_lpinf", "noisy_step", "sgd_update", "dln_step_none", "dln_step_batchnorm",
                 "dln_step_lp1", "lockstep_vgg1d_none", "lockstep_vgg1d_batchnorm", "lockstep_dln_none",
                 "lockstep_dln_batchnorm", "run_overhead_batchnorm", "run_overhead_lp1",
                 "run_overhead_noisy_batchnorm", "sharpness_estimate", "sharpness_per_hvp", "filter_landscape_point")
THEORY_FIGURES = ("theory_cold_s", "theory_cached_s")


RESULTS = {"config": {"preset": "smoke", "train": {"batch_size": 32, "steps": 30}},
           "environment": {"git_revision": "abc", "device": "cpu", "torch": "x"}, "timings": {}, "theory": {},
           "checks": [], "training_summary": {"threshold": 0.8, "metric": "training accuracy", "rows": []}}


def _bench(out_dir, *extra: str) -> dict:
    assert main(["bench", "--size", "smoke", "--device", "cpu", "--repeats", "3", "--out", str(out_dir),
                 *extra]) == 0
    return json.loads((out_dir / "bench.json").read_text())


@pytest.fixture(scope="module")
def smoke_bench(tmp_path_factory):
    """(folder holding bench.json and a minimal results.json, the bench) of one smoke run, no derivations."""
    out_dir = tmp_path_factory.mktemp("bench")
    bench = _bench(out_dir, "--no-theory")
    (out_dir / "results.json").write_text(json.dumps(RESULTS))
    return out_dir, bench


def _assert_figures_are_finite_and_positive(bench: dict, names: tuple[str, ...]) -> None:
    for name in names:
        figure = bench["figures"][name]
        low, high = figure["iqr"]
        assert figure["unit"] in ("ratio", "s"), name
        assert all(math.isfinite(v) and v > 0 for v in (figure["value"], low, high)), (name, figure)
        assert low <= figure["value"] <= high, (name, figure)
        if name in TARGETS:
            assert figure["target"] is not None and isinstance(figure["passed"], bool), (name, figure)


def test_smoke_bench_writes_every_probe_figure_with_its_machine(smoke_bench):
    _, bench = smoke_bench
    assert bench["size"] == "smoke" and "smoke" in SIZES
    assert set(bench["figures"]) == set(PROBE_FIGURES)
    _assert_figures_are_finite_and_positive(bench, PROBE_FIGURES)
    for key in ("platform", "python", "torch", "device", "device_name", "cpu_model", "threads", "cpu_count"):
        assert key in bench["machine"], key
    assert bench["machine"]["threads"] == 1 and bench["clock"] == "process CPU time"
    assert bench["sync_in_plain_step"]["checked"] is False  # CPU: nothing to synchronise with
    probed = bench["figures"]["probed_step"]
    assert probed["floor"] > 1 and probed["target"] == pytest.approx(1.2 * probed["floor"])
    assert "0 module hooks left" in bench["figures"]["capture_disabled"]["note"]
    # both l_p normalisers have a derived backward (l-inf's batch maximum on its smooth piece, numeric.torch_program)
    assert "derived" in bench["figures"]["lp_step_lp1"]["note"] and "derived" in bench["figures"]["lp_step_lpinf"]["note"]
    run = bench["figures"]["run_overhead_batchnorm"]
    assert run["run_overhead"] == pytest.approx(sum(run["breakdown"].values()))
    assert run["breakdown"]["curvature"] > 0 and run["breakdown"]["captures"] > 0  # the smoke BN run does both


def test_report_section_and_readme_block_render_the_bench(smoke_bench, tmp_path):
    out_dir, bench = smoke_bench
    section = performance_blocks(out_dir)
    assert section and "verify bench" in str(section[0]) and "run_overhead_batchnorm" in str(section[1])
    block = bench_block(bench, str(out_dir))
    assert block.startswith(BENCH_START) and block.endswith(BENCH_END)
    assert all(f"`{name}`" in block for name in PROBE_FIGURES)
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- results:start -->\nold\n<!-- results:end -->\n"
                      f"middle\n{BENCH_START}\nold bench\n{BENCH_END}\nafter\n")
    update_readme(out_dir, readme)
    text = readme.read_text()
    assert "old bench" not in text and "`hvp`" in text and text.endswith("after\n") and "middle" in text


def test_readme_without_bench_markers_says_where_to_put_them(smoke_bench, tmp_path):
    out_dir, _ = smoke_bench
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    with pytest.raises(FileNotFoundError, match="bench:start"):
        update_readme(out_dir, readme)


@pytest.mark.slow
def test_smoke_bench_times_cold_and_cached_derivations(tmp_path):
    bench = _bench(tmp_path)
    _assert_figures_are_finite_and_positive(bench, PROBE_FIGURES + THEORY_FIGURES)
    assert "subprocess" in bench["figures"]["theory_cold_s"]["note"]


@pytest.mark.parametrize("kind", ["vgg1d", "dln"])
@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_a_lockstep_step_updates_every_seed_as_its_own_step_does(kind, norm):
    """The lockstep figure times the same work as its baseline: each stacked seed ends where its own SGD step puts it
    (parameters and BatchNorm's running statistics), to float32 summation order."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch.func import stack_module_state

    from empirics.config import PRESETS, Norm
    from empirics.dln import build_dln, dln_loss, synthetic_regression
    from empirics.models import build_model
    from empirics.norms import norm_factory
    from verify.bench_steps import _batch, _lockstep_stepper, _stepper

    config = PRESETS["smoke"]
    if kind == "vgg1d":
        models = [build_model(config.model, Norm(norm), 1e-5, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
        x, y = _batch("smoke", torch.device("cpu"))
        loss_fn, lr = F.cross_entropy, 0.1
    else:
        d = config.dln
        models = [build_dln(d.depth, d.width, norm_factory(Norm(norm), 1e-5) or "none",
                            generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
        x, y, _ = synthetic_regression(d.samples, d.width, seed=0)
        loss_fn, lr = dln_loss, 0.01
    own = [copy.deepcopy(model) for model in models]
    for model in own:
        _stepper(model, x, y, loss_fn, lr)()
    lockstep = _lockstep_stepper(models, x, y, loss_fn, lr)
    lockstep()
    params, buffers = lockstep.state
    for index, model in enumerate(own):
        for name, value in [*model.named_parameters(), *model.named_buffers()]:
            stacked = {**params, **buffers}[name][index]
            torch.testing.assert_close(stacked, value.detach(), rtol=1e-5, atol=1e-6, msg=f"{name} of seed {index}")
