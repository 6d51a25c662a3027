"""Do the verdicts survive a change of float summation order? Two runs of one preset, compared claim by claim.

    python -m verify stability --preset default --out DIR

runs `verify all` of the preset as given into DIR (finished runs there are reused: after `verify all
--out DIR` only the second variant trains) and once more into DIR/threads<k> with k torch threads per run
(2 if the preset has 1, else 1) in one process: the thread count changes the order in which float sums
are accumulated, which is all that differs between two machines of the same kind running the same code.
A chaotic run (the standard network at lr 0.1) then ends differently, so measurements differ; a verdict
decided from paired seeds and intervals should not. DIR/stability.json records, per claim, both verdicts
and whether they agree, which runs changed (final training loss not bit-identical), and the revision; DIR's report
is then rendered again so that its reproducibility section shows this comparison.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from empirics.config import ExperimentConfig
from empirics.storage import write_json
from verify.report import write_report

def other_order(config: ExperimentConfig) -> ExperimentConfig:
    """The same preset with another thread count per run (and one worker, so the threads have the cores)."""
    return dataclasses.replace(config, threads=2 if config.threads == 1 else 1, workers=1)


def compare_results(first: dict, second: dict) -> dict:
    """Per claim the two verdicts; runs matched by (kind, norm, lr, seed) whose final training loss differs."""
    verdicts = {c["id"]: c["verdict"] for c in first.get("claims") or []}
    others = {c["id"]: c["verdict"] for c in second.get("claims") or []}
    claims = [{"id": cid, "first": verdicts.get(cid), "second": others.get(cid),
               "agree": verdicts.get(cid) == others.get(cid)} for cid in sorted(set(verdicts) | set(others))]

    def by_key(results):
        return {(r["kind"], r["norm"], r["lr"], r["seed"]): r for r in (results.get("training") or [])
                + (results.get("dln_training") or [])}
    runs_a, runs_b = by_key(first), by_key(second)
    common = sorted(set(runs_a) & set(runs_b), key=str)
    changed = [list(key) for key in common if runs_a[key]["final_train_loss"] != runs_b[key]["final_train_loss"]]
    return {"claims": claims, "agreeing": sum(c["agree"] for c in claims), "total": len(claims),
            "runs_compared": len(common), "runs_changed": changed}


def run_stability(config: ExperimentConfig, preset: str, out_dir: Path, progress: bool = True) -> dict:
    """`verify all` of the preset into DIR and of `other_order` into DIR/threads<k>, then DIR/stability.json."""
    from verify import pipeline

    second = other_order(config)
    variants = {f"threads{config.threads}": (config, Path(out_dir)),
                f"threads{second.threads}": (second, Path(out_dir) / f"threads{second.threads}")}
    results = []
    for variant, directory in variants.values():
        finished = _finished_results(variant, preset, directory)
        if finished is not None:  # `verify all` of this very variant and revision: its report stands as written
            results.append(finished)
            continue
        pipeline.write_config(variant, preset, directory)
        pipeline.stage_theory_and_empirics(variant, directory, progress=progress)
        results.append(pipeline.stage_report(variant, directory))
    comparison = {"git_revision": pipeline._git_revision(),
                  "variants": {name: {"threads": c.threads, "workers": c.workers, "out": str(d)}
                               for name, (c, d) in variants.items()}, **compare_results(*results)}
    write_json(Path(out_dir) / "stability.json", comparison)
    # DIR's report was written before this comparison existed (by `verify all`, or just above): render it again, so
    # its reproducibility section shows these verdicts, not an earlier stability.json's (results.json unchanged)
    write_report(Path(out_dir))
    return comparison


def _finished_results(config: ExperimentConfig, preset: str, directory: Path) -> dict | None:
    """DIR/results.json where it was written for `config` and `preset` at this revision with every run of it done
    (so its timings, `verify all`'s total among them, are kept), else None."""
    from empirics.experiments import run_specs
    from empirics.runner import run_dir
    from verify import pipeline

    path = directory / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    same = (results.get("config") == json.loads(json.dumps(pipeline.config_record(config, preset)))
            and (results.get("environment") or {}).get("git_revision") == pipeline._git_revision())
    done = all((run_dir(directory, spec.run_id) / "done").exists() for spec in run_specs(config))
    return results if same and done else None


def describe(comparison: dict) -> list[str]:
    """Closing lines for the command line."""
    lines = [f"verdicts agreeing: {comparison['agreeing']} of {comparison['total']} claims; runs whose final loss "
             f"changed with the summation order: {len(comparison['runs_changed'])} of {comparison['runs_compared']}"]
    lines += [f"  {c['id']}: {c['first']} vs {c['second']}" for c in comparison["claims"] if not c["agree"]]
    return lines


def load(out_dir: Path) -> dict | None:
    path = Path(out_dir) / "stability.json"
    return json.loads(path.read_text()) if path.exists() else None
