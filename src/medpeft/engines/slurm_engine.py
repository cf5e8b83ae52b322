"""Runs as a Slurm job array through submitit: one array task per run, `slurm:` options as #SBATCH lines,
at most slurm.array_parallelism at once. Without Slurm (slurm.cluster: local) submitit starts each job as a
process on this machine, and this engine keeps at most array_parallelism of them running. Job files and
logs go to runs/<grid>/slurm/<job id>/.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from pathlib import Path

from medpeft.config.engine import Resources, SlurmOptions
from medpeft.engines.base import Engine, Outcome
from medpeft.errors import ConfigError


class Submission:
    """One job: what to call, and its submitit job once submitted (a local cluster submits as slots free up)."""

    def __init__(self, fn, job):
        self.fn, self.job, self.submitted = fn, job, None
        self.ended, self.error = False, None  # once ended, it stays so: the scheduler is not asked again

    def check(self) -> bool:
        """Whether the job has ended (one look at the scheduler); the debug executor runs the job in done() and
        re-raises its exception, which becomes the job's `error`."""
        if not self.ended and self.submitted is not None:
            try:
                self.ended = self.submitted.done()
            except Exception as err:  # noqa: BLE001 - the debug executor's re-raised job exception
                self.ended, self.error = True, f"{type(err).__name__}: {err}"
        return self.ended


class SlurmEngine(Engine):
    name = "slurm"

    def __init__(self, options: SlurmOptions, resources: Resources, folder: Path, log):
        import submitit

        super().__init__()
        self.submitit, self.options, self.lock = submitit, options, threading.Lock()
        self.live: set[Submission] = set()  # submitted and not yet ended, over every caller (tuning runs groups in threads)
        self.unformatted = Path(folder) / "%j"  # submitit names each job's folder from this; it also leaves it, empty
        try:
            self.executor = submitit.AutoExecutor(folder=str(self.unformatted),
                                                  cluster=None if options.cluster == "auto" else options.cluster)
        except RuntimeError as err:  # no executor available
            raise ConfigError(f"slurm.cluster {options.cluster}: {err}") from None
        self.executor.update_parameters(**executor_parameters(options, resources))
        self.cluster = self.executor.cluster
        self.slots = options.array_parallelism
        log(f"slurm: {'Slurm job arrays' if self.cluster == 'slurm' else f'submitit {self.cluster} executor (no Slurm)'}"
            f", {self.slots} run(s) at once; job logs in {folder}")

    def start(self, fn, jobs):
        handles = [Submission(fn, job) for job in jobs]
        if self.cluster == "slurm":  # one array; Slurm holds all but array_parallelism back
            with self.lock:
                self.submit(handles)
        return handles

    def submit(self, handles: list[Submission]) -> None:
        """Submit as one array (call under self.lock: several tuning threads share the folder and the slots)."""
        jobs = refused_as_config_error(self.executor.map_array, handles[0].fn, [h.job for h in handles])
        for handle, job in zip(handles, jobs):
            handle.submitted = job
        self.live.update(handles)

    def finished(self, handles):
        while True:
            with self.lock:  # one look per job: live ones of every caller, and this caller's
                for handle in self.live | {h for h in handles if h.submitted is not None}:
                    handle.check()
                self.live = {h for h in self.live if not h.ended}
                waiting = [h for h in handles if h.submitted is None]
                if waiting and len(self.live) < self.slots:
                    self.submit(waiting[:self.slots - len(self.live)])
            if self.stopping.is_set():
                raise RuntimeError("stopped: the grid is ending")
            ended = [h for h in handles if h.ended]
            if ended:
                return [(h, Outcome(error=h.error) if h.error else self.outcome(h.submitted)) for h in ended]
            time.sleep(self.options.poll_s)

    def submit_detached(self, fn, jobs: list, then, then_job) -> tuple[str | None, str]:
        """Submit `jobs` as one array, and then(then_job) as a small job that starts once the array has ended
        (afterany: also when some runs failed); their job ids. Nothing here waits for them."""
        if self.cluster != "slurm":
            raise ConfigError(f"--no-wait needs Slurm; submitit's {self.cluster} executor ends its jobs with this process")
        array_id = None
        with self.lock:
            if jobs:
                array_id = str(refused_as_config_error(self.executor.map_array, fn, jobs)[0].job_id).split("_")[0]
            after = {**dict(self.options.additional), **({"dependency": f"afterany:{array_id}"} if array_id else {})}
            self.executor.update_parameters(gpus_per_node=0, cpus_per_task=1, timeout_min=60, slurm_additional_parameters=after)
            report = refused_as_config_error(self.executor.submit, then, then_job)
        return array_id, str(report.job_id)

    def close(self):
        """Stop waiting; jobs already submitted go on (their runs hold their locks; the same command again picks them up)."""
        self.stopping.set()
        with contextlib.suppress(OSError):  # only when empty: a literal '%j' folder beside the jobs' own
            self.unformatted.rmdir()

    def outcome(self, job) -> Outcome:
        errors = self.submitit.core.utils
        try:
            return Outcome(value=job.result())
        except errors.FailedJobError as err:  # the job's own exception: its trace's last line names it
            if "Job not requeued because" in str(err):  # submitit ended a job whose time was up: its worker is lost
                return Outcome(error=f"job {job.job_id} ran out of time (slurm.time {self.options.time} min); its log: "
                                     f"{job.paths.stderr}", lost=True)
            lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("-")]
            cause = next((line for line in reversed(lines) if "Error" in line or "Exception" in line), lines[0] if lines else "")
            return Outcome(error=f"{cause.strip()} (job {job.job_id}: {job.paths.stderr})")
        except errors.UncompletedJobError as err:  # killed, out of time or memory, node lost: no result came back
            lines = str(err).splitlines()
            return Outcome(error=f"job {job.job_id} ended without a result ({lines[1].strip() if len(lines) > 1 else err}); "
                                 f"its log: {job.paths.stderr}", lost=True)
        except Exception as err:  # noqa: BLE001 - the debug executor raises the job's own exception here
            return Outcome(error=f"{type(err).__name__}: {err}")


def poll(handle: Submission) -> str | None:
    """None, or the error the debug executor raised while running the job in done()."""
    handle.check()
    return handle.error


def refused_as_config_error(submit, *args):
    """A submission sbatch refused (a partition, account or QOS it does not know) as a ConfigError naming the settings."""
    try:
        return submit(*args)
    except Exception as err:  # noqa: BLE001 - submitit's FailedJobError / FailedSubmissionError, or sbatch missing
        if isinstance(err, ConfigError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"slurm: the scheduler refused the jobs ({type(err).__name__}: {first}); check slurm.partition, "
                          "slurm.account, slurm.qos, slurm.constraint and slurm.additional (grid file or --slurm KEY=VALUE)") from None


def executor_parameters(options: SlurmOptions, resources: Resources) -> dict:
    """submitit's parameters: the shared ones, then Slurm's own (the local executor ignores those)."""
    shared = {"name": "medpeft", "timeout_min": options.time, "cpus_per_task": resources.threads or 1,
              "gpus_per_node": math.ceil(resources.gpus_per_run or 0)}
    if options.mem_gb is not None:
        shared["mem_gb"] = options.mem_gb
    own = {"partition": options.partition, "account": options.account, "qos": options.qos,
           "constraint": options.constraint, "array_parallelism": options.array_parallelism,
           "setup": list(options.setup) or None, "additional_parameters": dict(options.additional) or None}
    return {**shared, **{f"slurm_{k}": v for k, v in own.items() if v is not None},
            **({"local_setup": list(options.setup)} if options.setup else {})}
