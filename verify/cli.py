"""Command line: `python -m verify all|theory|empirics|report [options]`.

Every problem with the arguments or the configuration ends in one line on stderr naming the
problem and the fix, and exit code 2. Everything the user gave is checked before any stage
writes anything -- options, config values, the device, the CIFAR-10 folder, the output directory
(writable, and not holding results of another schema), normaliser files and names -- so a typo
never damages an earlier result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from empirics.cifar import load_cifar10, locate_cifar10
from empirics.config import PRESETS, ConfigError, Device, Executor, Norm, override
from empirics.experiments import run_specs, validate
from empirics.executors import check_executor
from empirics.runner import CorruptRunError
from empirics.train import check_trainable, resolve_device
from theory.normalisers import REGISTRY, load_normaliser_file
from theory.wellformed import check_well_formed
from verify import bench, browser, pipeline, stability, summary
from verify.readme import update_readme

COMMANDS = {
    "all": "derive, train, check and write the report (theory + empirics + report)",
    "theory": "derive every statement symbolically; write DIR/theory.json",
    "empirics": "train the networks of the preset, capturing bound quantities; write DIR/runs/",
    "report": "check the derived bounds on the captured runs; write DIR/results.json and DIR/report.{md,html}",
    "readme": "rewrite README.md's generated results block from DIR/results.json",
    "bench": "time the probes and captures against the passes they need; write DIR/bench.json",
    "stability": "run `all` with 1 and with 2 threads per run (another float summation order) and compare the "
                 "verdicts; write DIR/threads1, DIR/threads2, DIR/stability.json",
    "screenshot": "the first screen of DIR/report.html in headless Chromium at 1400 x 900; write "
                  "DIR/report-first-viewport.png",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not usage + error) and exits with 2."""

    def error(self, message: str):
        self.exit(2, f"verify: error: {message}; see `python -m verify --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m verify",
        description="Verify the claims of Santurkar et al. (2018) on BatchNorm: derive the bounds with SymPy, "
                    "measure them on trained networks, and report which statements hold and how tightly.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), help="what to run (see below)")
    parser.add_argument("--preset", choices=list(PRESETS), default="default",
                        help="experiment size: smoke (seconds, for tests) or default (minutes on a laptop CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: reports/<preset>)")
    parser.add_argument("--device", choices=[d.value for d in Device], default=None,
                        help="where to train: auto (CUDA if available), cpu, or cuda (an error if unavailable)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="CIFAR-10 for the paper preset: the local cifar-10-batches-py folder (or its parent)")
    parser.add_argument("--seed", type=int, default=None,
                        help="offset added to every seed of the preset (default 0: the preset's own seeds)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.steps=200 --set train.lrs=0.1,0.5")
    parser.add_argument("--norm", dest="norms", action="append", default=None, metavar="NAME",
                        help="normaliser(s) to derive and to train in the norms experiment (beside BatchNorm and "
                             "none), repeatable (default: every registered one: "
                             + ", ".join(sorted(REGISTRY)) + ")")
    parser.add_argument("--normaliser-file", dest="normaliser_files", action="append", default=[], type=Path,
                        metavar="PATH", help="a .py file defining Normaliser(s) to derive too (see README)")
    parser.add_argument("--no-progress", action="store_true", help="hide the training progress bars")
    parser.add_argument("--executor", choices=[e.value for e in Executor], default=None,
                        help="what trains the runs: local (this machine's process pool, the default) or ray "
                             "(one Ray task per run; needs pip install 'normcheck[ray]')")
    parser.add_argument("--address", default=None, metavar="ADDRESS",
                        help="with --executor ray: auto or host:port or ray://host:port joins that cluster "
                             "(--out must then be a filesystem every node sees); none starts Ray on this machine")
    bench.add_arguments(parser)
    return parser


TRAINING_COMMANDS = ("all", "empirics", "stability")


def resolve_config(args: argparse.Namespace):
    """The preset with the command line applied, validated; the device and the data are checked too."""
    config = PRESETS[args.preset]
    if args.device is not None:
        config = dataclasses.replace(config, device=Device(args.device))
    if args.seed is not None:
        config = dataclasses.replace(config, seed_offset=args.seed)
    if args.data_root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(args.data_root)))
    if args.executor is not None:
        config = dataclasses.replace(config, executor=Executor(args.executor))
    if args.address is not None:
        config = dataclasses.replace(config, address=args.address)
    if args.norms:  # the normalisers to derive are the ones the norms experiment trains
        config = dataclasses.replace(config, norms_normalisers=tuple(Norm(name) for name in args.norms))
    if args.normaliser_files:  # registered again by every process that trains a run (empirics.train)
        config = dataclasses.replace(config, normaliser_files=tuple(str(Path(p).resolve()) for p in args.normaliser_files))
    for assignment in args.overrides:
        config = override(config, assignment)
    config = validate(config)
    check_executor(config)  # --executor ray without Ray installed, a malformed --address
    run_specs(config)  # unknown experiments
    resolve_device(config.device)  # --device cuda without CUDA
    if config.data.name == "cifar10":
        locate_cifar10(config.data.root)  # fail before any stage runs, with the fix in the message
        if args.command in TRAINING_COMMANDS:
            load_cifar10(config.data.root)  # every file parsed and checked; cached for the training that follows
    return config


def check_output_dir(out_dir: Path) -> None:
    """out_dir can be created and written, and holds no results of another schema (which this code
    would partly overwrite and partly misread)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        raise ConfigError(f"output directory {out_dir} is not writable ({error.strerror}); pick another --out "
                          "or fix its permissions") from None
    for name in ("results.json", "config.json"):
        path = out_dir / name
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or damaged: rewritten by this run, never read as a result
            continue
        if not isinstance(content, dict):
            continue
        # results.json has carried `schema` from the start; config.json since schema 1 (absent: 1)
        schema = content.get("schema", None if name == "results.json" else pipeline.SCHEMA)
        if schema != pipeline.SCHEMA:
            raise ConfigError(f"{path} holds results of schema {schema}, this version writes schema {pipeline.SCHEMA}; "
                              f"pick a new --out, or remove {out_dir} to recompute everything there")


def load_normaliser_files(paths: list[Path]) -> None:
    """Import and register each user normaliser file; any problem with one is a ConfigError, and then
    the registry is left as it was (a rejected formula is never derived)."""
    registered = dict(REGISTRY)
    try:
        for path in paths:
            try:
                for normaliser in load_normaliser_file(path):
                    check_well_formed(normaliser)
            except (ValueError, FileNotFoundError) as error:  # ill-formed, no Normaliser, a name already taken
                raise ConfigError(str(error)) from None
            except Exception as error:  # noqa: BLE001 - the user's file failed to import; say how
                raise ConfigError(f"normaliser file {path} failed to import ({type(error).__name__}: {error}); "
                                  "fix the file") from None
    except ConfigError:
        REGISTRY.clear()
        REGISTRY.update(registered)
        raise


def _normalisers(names: list[str] | None) -> tuple[str, ...] | None:
    unknown = sorted(set(names or ()) - set(REGISTRY))
    if unknown:
        raise ConfigError(f"unknown normaliser(s) {', '.join(unknown)}; known: {', '.join(sorted(REGISTRY))}")
    return tuple(names) if names else None


def run(args: argparse.Namespace) -> None:
    # the user's formulas first: --norm, --set train.norms=... and the norms experiment may name them
    registered = dict(REGISTRY)
    try:
        load_normaliser_files(args.normaliser_files)
        normalisers = _normalisers(args.norms)
        config = resolve_config(args)
        if args.command in TRAINING_COMMANDS:
            check_trainable(config)  # a user's formula that cannot train: one line, before anything is written
    except ConfigError:  # a rejected formula is never left registered
        REGISTRY.clear()
        REGISTRY.update(registered)
        raise
    out_dir = args.out if args.out is not None else Path("reports") / args.preset
    if args.command == "readme":
        update_readme(out_dir, Path(__file__).resolve().parent.parent / "README.md")
        return
    if args.command == "screenshot":
        print(f"screenshot: {browser.screenshot_report(out_dir)}")
        return
    if args.command == "bench":
        bench.run_from_args(args, config, args.out if args.out is not None else Path("reports") / args.size)
        return
    started = time.perf_counter()
    check_output_dir(out_dir)
    if args.command == "stability":
        for line in stability.describe(stability.run_stability(config, args.preset, out_dir,
                                                               progress=not args.no_progress)):
            print(line)
        return
    pipeline.write_config(config, args.preset, out_dir)  # the first write of any stage
    if args.command == "all":
        pipeline.stage_theory_and_empirics(config, out_dir, normalisers, progress=not args.no_progress)
    elif args.command == "theory":
        pipeline.stage_theory(out_dir, normalisers)
    elif args.command == "empirics":
        pipeline.stage_empirics(config, out_dir, progress=not args.no_progress)
    if args.command in ("all", "report"):
        results = pipeline.stage_report(config, out_dir, all_started=started if args.command == "all" else None)
        for line in summary.headline_lines(results):  # the report's and the README's headline, verbatim
            print(line)
        print(f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"verify: error: {error}", file=sys.stderr)
        return 2
    except CorruptRunError as error:  # `report` alone met a damaged run; `empirics` recomputes it
        print(f"verify: error: {error}; run `python -m verify empirics` with the same options: it sets the run "
              "aside and recomputes it", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished file is whole (written atomically); say how to go on
        print("verify: interrupted; run the same command again to resume (finished runs are kept, an unfinished "
              "one continues from its last checkpoint)", file=sys.stderr)
        return 130  # 128 + SIGINT, the shell's convention
    return 0
