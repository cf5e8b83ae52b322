"""What a grid shows while it trains, and what each run leaves in its folder's train.log.

Three levels for a whole grid, set by `medpeft run --quiet | --verbose` (see `showing`):
- quiet: no bars; the grid prints one line per run, and errors;
- normal: a bar per run (step, loss, tokens/s, ETA) under a grid bar (runs done / total, ETA);
- verbose: the bars and the Trainer's raw log dictionaries.
Bars go to stderr, lines to stdout (`say` prints a line above the bars without breaking them).
Whatever the level, every line about a run (the grid's, the Trainer's logs, medpeft's logged
warnings) is appended, time-stamped, to <run_dir>/train.log by the main process.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from medpeft.dist import is_main_process

LEVELS = ("quiet", "normal", "verbose")
LOG_FILE = "train.log"
_shown = {"level": "normal"}  # the level of the grid being run (like transformers' logging verbosity)


def level() -> str:
    return _shown["level"]


@contextmanager
def showing(new_level: str):
    """Inside the block, runs and grids show `new_level` (quiet, normal or verbose)."""
    if new_level not in LEVELS:
        raise ValueError(f"progress level must be one of {', '.join(LEVELS)}; got {new_level!r}")
    before, _shown["level"] = _shown["level"], new_level
    try:
        yield
    finally:
        _shown["level"] = before


def bars_shown() -> bool:
    return level() != "quiet" and is_main_process()


def say(text: str = "") -> None:
    """Print a line on stdout above any progress bar (tqdm.write clears and redraws the bars)."""
    from tqdm import tqdm

    tqdm.write(str(text))


def append_log(run_dir: Path | None, text: str) -> None:
    """Append `text`, one time-stamped line per line, to the run's train.log. The log is a view of the
    run: a write that fails (a full disk) is skipped, never the run's failure."""
    if run_dir is None or not is_main_process():
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir) / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{stamp} {line}\n" for line in str(text).splitlines() or [""]))
    except OSError:
        pass


class ConsoleWarnings(logging.Handler):
    """Warnings of any logger on stderr, above the progress bars, as the bare message (as Python's
    last-resort handler prints them)."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def console_logging() -> None:
    """The command line's logging, where nothing has configured any: warnings printed once, plainly. Without
    a root handler, absl (rouge_score's logging) calls logging.basicConfig() at its first message, and every
    later warning came out as WARNING:medpeft:..., glued to the progress bar."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(ConsoleWarnings())


class WarningsToRunLog(ConsoleWarnings):
    """medpeft's logged warnings during a run: into its train.log and, where nothing else would show
    them (no handler configured), on stderr above the bars, as ConsoleWarnings prints them."""

    def __init__(self, run_dir: Path, console: bool):
        super().__init__()
        self.run_dir, self.console = run_dir, console

    def emit(self, record: logging.LogRecord) -> None:
        append_log(self.run_dir, f"{record.levelname.lower()}: {self.format(record)}")
        if self.console:
            super().emit(record)


@contextmanager
def run_log(run_dir: Path, log):
    """Inside the block: a log for one run (`log`, each line also into its train.log), and medpeft's
    logged warnings into that file too."""
    logger = logging.getLogger("medpeft")
    console = not logger.hasHandlers()  # nobody prints medpeft's warnings: this handler does
    handler = WarningsToRunLog(Path(run_dir), console=console)

    def both(text: str = "") -> None:
        log(text)
        append_log(run_dir, text)

    propagate = logger.propagate
    logger.addHandler(handler)
    if console:  # and only it: absl (rouge_score's logging) gives the root logger a handler at its first message,
        logger.propagate = False  # which printed each later warning a second time, as WARNING:medpeft:...
    try:
        yield both
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def grid_bar(title: str, total: int, finished: int):
    """The grid's bar: runs done / total and the ETA; runs finished earlier count as done, not in the rate.
    It goes when the loop ends (a tuner's loop may be one trial): the printed lines are the record."""
    from tqdm import tqdm

    return tqdm(total=total, initial=finished, desc=title, unit="run", leave=False, dynamic_ncols=True,
                disable=not bars_shown())


def log_line(state, logs: dict) -> str:
    """A Trainer log as one line: `step 4/8 loss=2.31 grad_norm=0.52 ...`."""
    shown = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in logs.items())
    return f"step {state.global_step}/{state.max_steps} {shown}"


class TrainProgress:
    """Trainer handler (see fit.as_callback): a bar per run with step, last logged loss, tokens/s (the
    Trainer's count of non-pad input tokens) and ETA; every Trainer log into the run's train.log
    (`run_dir` None: none), and printed raw at the verbose level. The Trainer's own printing is off."""

    def __init__(self, run_dir: Path | None):
        self.run_dir, self.bar, self.loss = run_dir, None, None
        self.start, self.first_tokens = 0.0, 0

    def on_train_begin(self, args, state, control, **_):
        from tqdm import tqdm

        self.start, self.first_tokens = time.perf_counter(), state.num_input_tokens_seen
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step", leave=False,
                        dynamic_ncols=True, disable=not bars_shown())  # initial: a resumed run's steps done

    def on_step_end(self, args, state, control, **_):
        if self.bar is not None:
            self.bar.set_postfix(self.figures(state), refresh=False)
            self.bar.update(state.global_step - self.bar.n)

    def figures(self, state) -> dict:
        """The bar's postfix: the last logged loss and this session's tokens per second."""
        seconds, tokens = time.perf_counter() - self.start, state.num_input_tokens_seen - self.first_tokens
        shown = {"loss": f"{self.loss:.4g}"} if self.loss is not None else {}
        if tokens and seconds:
            shown["tokens/s"] = f"{tokens / seconds:.0f}"
        return shown

    def on_log(self, args, state, control, logs=None, **_):
        logs = {k: v for k, v in (logs or {}).items() if k != "total_flos"}
        if isinstance(logs.get("loss"), (int, float)):
            self.loss = logs["loss"]
            if self.bar is not None:  # the Trainer logs after the step's end: show the new loss now
                self.bar.set_postfix(self.figures(state))
        append_log(self.run_dir, log_line(state, logs))
        if level() == "verbose" and is_main_process():
            say(str({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items()}))  # as the Trainer printed them

    def on_train_end(self, args, state, control, **_):
        self.close()

    def close(self) -> None:
        """Remove the bar (also when training raised: the Trainer then calls no on_train_end)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
