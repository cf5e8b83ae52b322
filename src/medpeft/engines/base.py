"""An engine's interface and the loop that maps jobs over one, retrying jobs whose worker was lost."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

RAY_HINT = "--backend ray needs Ray: .venv/bin/pip install 'medpeft[ray]' (or pip install 'ray>=2.40')"
SLURM_HINT = "--backend slurm needs submitit: .venv/bin/pip install 'medpeft[slurm]' (or pip install submitit)"

@dataclass
class Outcome:
    """What became of one job: its `value`, or the `error` its function raised, or its worker was `lost`."""

    value: Any = None
    error: str | None = None  # the exception the job raised, as text
    lost: bool = False  # the worker died under it (killed, out of memory, node lost); `error` says how

    @property
    def ok(self) -> bool:
        return self.error is None

class Engine:
    """A place to run jobs: `start` submits, `finished` blocks until at least one submitted job ended."""

    name = "engine"
    slots = 1  # jobs it runs at once: how many tuning trials to keep in flight

    def __init__(self):
        self.stopping = threading.Event()  # set by close(): a thread waiting in finished() stops waiting

    def start(self, fn: Callable, jobs: list) -> list:
        """Submit fn(job) for each job; one handle per job, in order."""
        raise NotImplementedError

    def finished(self, handles: list) -> list[tuple[Any, Outcome]]:
        """(handle, outcome) of at least one ended job of `handles`, waiting until one ends."""
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the engine started (a local Ray cluster); jobs submitted elsewhere are left running."""

def map_jobs(engine: Engine, fn: Callable, jobs: list, retries: int, on_end: Callable[[int, Outcome], None],
             on_retry: Callable[[int, Outcome, int], None], again: Callable[[Any], Any] = lambda job: job) -> list[Outcome]:
    """fn(job) for every job on `engine`; each job's outcome, in order. A job whose worker was lost is
    submitted again, as again(job), up to `retries` times (on_retry(index, outcome, attempt) first);
    on_end(index, outcome) as each job ends for good."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    attempts = [0] * len(jobs)
    pending = dict(zip(engine.start(fn, jobs), range(len(jobs)))) if jobs else {}
    while pending:
        for handle, outcome in engine.finished(list(pending)):
            index = pending.pop(handle)
            if outcome.lost and attempts[index] < retries:
                attempts[index] += 1
                on_retry(index, outcome, attempts[index])
                jobs[index] = again(jobs[index])
                pending[engine.start(fn, [jobs[index]])[0]] = index
                continue
            outcomes[index] = outcome
            on_end(index, outcome)
    return outcomes
