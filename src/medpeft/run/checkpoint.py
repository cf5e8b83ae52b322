"""Mid-run checkpoints in the Trainer's own format, so that an interrupted run resumes where it stopped.

<run_dir>/checkpoints/checkpoint-<step>/ holds the model or adapter, optimizer, scheduler, RNG states
and trainer state (the step, hence the data position). One is written every `train.checkpoint_steps`
optimiser steps, every CHECKPOINT_EVERY_S seconds of training (so long runs are protected without
configuration) and when a stop signal arrives (preempt.py).

A checkpoint counts only when complete: once the Trainer has written it, medpeft adds MARKER (its
step, the training seconds so far and every file's size), atomically. A checkpoint without a marker,
or whose files no longer have those sizes (a kill or a full disk mid-write), is skipped with a warning
and removed. Only the newest complete checkpoint is kept; all go once the run has succeeded.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

from medpeft.dist import is_main_process
from medpeft.run.record import write_json

log = logging.getLogger("medpeft")

CHECKPOINT_DIR = "checkpoints"
MARKER = "medpeft-checkpoint.json"
CHECKPOINT_EVERY_S = 30 * 60  # wall-clock seconds of training between checkpoints, whatever the config
STEP_FOLDER = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_folder(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def find_resumable(run_dir: Path, warn=log.warning) -> tuple[Path, dict] | None:
    """The newest complete checkpoint of a run and its marker, or None. Incomplete or corrupt ones are
    skipped with a warning (and removed, so the Trainer never mistakes one for its own)."""
    folder = checkpoint_folder(run_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := STEP_FOLDER.match(p.name)) and p.is_dir()]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, json.loads((path / MARKER).read_text(encoding="utf-8"))
        warn(f"skipping checkpoint {path}: {problem}; resuming from an earlier one (or from the start)")
        if is_main_process():
            shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None when it is complete."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        sizes = marker["files"]
    except FileNotFoundError:
        return f"incomplete (no {MARKER}: the run stopped while writing it)"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MARKER} ({err})"
    for name, size in sizes.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            return f"{name} is missing or cut short (expected {size} bytes)"
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        check_safetensors(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file makes the checkpoint unusable
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def check_safetensors(path: Path) -> None:
    """Read every weights file's header (cheap: no tensor is loaded); raises when one is corrupt."""
    for file in path.rglob("*.safetensors"):
        read_safetensors_header(file)


def read_safetensors_header(file: Path) -> None:
    """Open one safetensors file and list its tensors: its header gives every tensor's bytes, so a file cut
    short or damaged raises here (safetensors' SafetensorError, or an OSError)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        handle.keys()


def write_marker(path: Path, step: int, train_seconds: float) -> None:
    """Mark the checkpoint at `path` complete: its step, training seconds so far, each file's size."""
    files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file() and f.name != MARKER}
    write_json(path / MARKER, {"step": step, "train_seconds": train_seconds, "files": files})


def remove_checkpoints(run_dir: Path) -> None:
    if is_main_process():
        shutil.rmtree(checkpoint_folder(run_dir), ignore_errors=True)


class Checkpointer:
    """Trainer callback handlers that decide when to save (every `steps`, every `every_s` seconds of
    training, at a stop request), then mark each saved checkpoint complete and drop the older ones.
    `spent_s`: training seconds of earlier sessions of this run (a resumed run)."""

    def __init__(self, folder: Path, steps: int | None, every_s: float, spent_s: float, stop_request):
        self.folder, self.steps, self.every_s, self.spent_s = Path(folder), steps, every_s, spent_s
        self.stop, self.preempted_at, self.start, self.last_save = stop_request, None, None, None

    def seconds(self) -> float:
        """Training seconds of the whole run so far (every session)."""
        return self.spent_s + (time.perf_counter() - self.start if self.start is not None else 0.0)

    def on_train_begin(self, args, state, control, **_):
        self.start = self.last_save = time.perf_counter()

    def on_step_end(self, args, state, control, **_):
        step = state.global_step
        due = (self.steps and step % self.steps == 0) or time.perf_counter() - self.last_save >= self.every_s
        if self.stop.requested:
            control.should_save = control.should_training_stop = True
            self.preempted_at = step
        elif due and step < state.max_steps:  # the last step needs none: the run is about to finish
            control.should_save = True
        if control.should_save:  # log the loss up to here: a resumed run's train_loss is rebuilt from the log
            control.should_log = True

    def on_save(self, args, state, control, **_):
        if state.is_world_process_zero:
            saved = self.folder / f"checkpoint-{state.global_step}"
            write_marker(saved, state.global_step, self.seconds())
            for older in self.folder.glob("checkpoint-*"):
                if older != saved:
                    shutil.rmtree(older, ignore_errors=True)
        self.last_save = time.perf_counter()


def whole_run_loss(log_history: list[dict], resumed_from: int, loss_since: float, steps: int) -> float:
    """The mean training loss over every step of a resumed run. The Trainer's own figure covers only
    the steps of this session; the earlier ones come from the logged losses (each the mean since the
    previous log) that the checkpoint's trainer state carried over."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry["step"] <= resumed_from:
            total, last = total + entry["loss"] * (entry["step"] - last), entry["step"]
    if last != resumed_from or steps <= 0:  # an older checkpoint without its loss logged: this session only
        return loss_since
    return (total + loss_since * (steps - resumed_from)) / steps
