"""The Optuna study's storage, shared by every worker of a tuned grid (shards, machines, Ray or Slurm jobs):
opening it (tune.storage: a database URL or a journal file, by default runs/<grid>/tuning.journal), claiming
trials so that concurrent workers never train more than `trials`, failing the trials of workers that died,
waiting for live ones before a choice, and reporting a trial's mid-training validation loss to the study
from whichever process trains it (StudyPruner).
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medpeft.config.tuning import mask_storage
from medpeft.errors import ConfigError
from medpeft.run.lock import LOCK_NAME, STALE_AFTER_S, is_stale, process_alive


JOURNAL = "tuning.journal"  # the default storage: Optuna's journal file, appended under a lock (NFS-safe)
LEGACY_DB = "tuning.db"  # the SQLite storage of grid folders tuned before the journal became the default
ASK_GRACE_S = 60.0  # a trial just asked has no worker record yet: not stale for this long
WAIT_POLL_S = 2.0
LIVE_TRIALS: set[str] = set()  # tokens of the trials this process is running now (one per tuning thread)


def median_pruner():
    """The study's pruner: a trial stops when its validation loss is below the median of earlier trials at that step."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


@dataclass
class StudyPruner:
    """A trial's on_validation callback, picklable, so that the process training the trial (this one, a Ray task
    or a Slurm job) reports each mid-training validation loss to the study and stops the trial (optuna.TrialPruned)
    when the study's median rule says so."""

    storage: str | None  # the group's tune.storage (None: the grid folder's journal)
    grid_dir: str
    study_name: str
    trial_id: int

    def __call__(self, step: int, loss: float) -> None:
        import optuna

        trial = self.trial()
        trial.report(-loss, step)  # higher is better, as for the study's objective
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: validation loss {loss:.4f} below the median of earlier trials")

    def trial(self):
        if "_trial" not in self.__dict__:  # opened once, in the process that trains
            import optuna

            storage = open_storage(self.storage, Path(self.grid_dir), log=lambda *_: None)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=median_pruner())
            self.__dict__["_trial"] = optuna.trial.Trial(study, self.trial_id)
        return self.__dict__["_trial"]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_trial"}


def open_storage(storage: str | None, grid_dir: Path, log):
    """The Optuna storage `tune.storage` names (None: the grid folder's journal, or its older tuning.db)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid_dir.mkdir(parents=True, exist_ok=True)
    if storage is None and (grid_dir / LEGACY_DB).exists():  # its studies (the user's trials) resume there
        log(f"tuning: resuming the studies in {grid_dir / LEGACY_DB} (SQLite: not safe with several workers on NFS; "
            f"tune.storage: {JOURNAL} starts a shared journal)")
        storage = f"sqlite:///{grid_dir / LEGACY_DB}"
    try:
        if storage is not None and "://" in storage:
            return optuna.storages.RDBStorage(storage)
        path = grid_dir / (storage or JOURNAL)  # an absolute path stays itself
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except Exception as err:  # a missing driver, a refused connection, an unwritable folder
        password = storage.partition("://")[2].rpartition("@")[0].partition(":")[2] if storage else ""
        detail = str(err).replace(password, "***") if password else str(err)
        raise ConfigError(f"tune.storage: cannot open {mask_storage(storage or str(grid_dir / JOURNAL))}: "
                          f"{type(err).__name__}: {detail}") from None


@contextlib.contextmanager
def claimed_trial(study, wanted: int, dists: dict, seed: int, grid_dir: Path):
    """The next trial of the study with its values sampled, or None once `wanted` trials are finished or
    running (counted in trial-number order, so concurrent workers agree which claims are surplus)."""
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState

    def claims(below: float) -> int:
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.number < below and (t.user_attrs.get("finished") or t.state == TrialState.RUNNING))

    fail_stale_trials(study, grid_dir)
    if claims(math.inf) >= wanted:  # nothing left to claim (alone, a worker never asks a surplus trial)
        yield None
        return
    token = uuid.uuid4().hex
    LIVE_TRIALS.add(token)
    try:
        trial = study.ask()
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "token": token})
        if claims(trial.number) >= wanted:  # another worker claimed the last trial between the two looks
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            yield None
            return
        # Seeded by the trial's number: workers sampling at once draw different values, and a resumed
        # search continues the sequence instead of drawing its first candidates again.
        study.sampler = TPESampler(seed=seed + trial.number)
        for axis, dist in dists.items():
            suggest(trial, axis, dist)
        yield trial
    finally:
        LIVE_TRIALS.discard(token)


def suggest(trial, axis: str, dist) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(axis, dist.choices)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(axis, dist.low, dist.high, log=dist.log)
    else:
        trial.suggest_float(axis, dist.low, dist.high, log=dist.log)


def stale_trial(trial, grid_dir: Path) -> bool:
    """A running trial no live worker runs: its process is gone (this host, or this process outside a live
    trial), or, on another host, its run lock is stale and it began over STALE_AFTER_S ago."""
    worker = trial.user_attrs.get("worker")
    age = (datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else math.inf
    if not isinstance(worker, dict):  # asked a moment ago, or by a search from before workers were recorded
        return age > ASK_GRACE_S
    if worker.get("token") in LIVE_TRIALS:
        return False
    if worker.get("host") == socket.gethostname():
        return worker.get("pid") == os.getpid() or not process_alive(worker.get("pid"))
    run_id = trial.user_attrs.get("run_id")
    return age > STALE_AFTER_S and (run_id is None or is_stale(grid_dir / run_id / LOCK_NAME))


def fail_stale_trials(study, grid_dir: Path) -> int:
    """Mark the study's abandoned running trials failed (a killed worker's); how many are still live."""
    from optuna.trial import TrialState

    live = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if stale_trial(trial, grid_dir):
            with contextlib.suppress(RuntimeError, ValueError):  # another worker failed it first
                study.tell(trial.number, state=TrialState.FAIL)
        elif not trial.user_attrs.get("surplus"):
            live += 1
    return live


def wait_for_workers(study, grid_dir: Path, log) -> None:
    """Return once no live worker is running a trial of the study, so every worker chooses from all of them."""
    said = False
    while live := fail_stale_trials(study, grid_dir):
        if not said:
            log(f"tuning {study.study_name}: waiting for {live} trial(s) other workers are running")
            said = True
        time.sleep(WAIT_POLL_S)
