"""Runs as Ray tasks: each job one task with the grid's `resources:` (a fraction of a GPU is allowed), on a
local cluster this process starts, or on the cluster `ray.address` names. Ray sets each task's torch
threads to its cpus_per_run. Ray's own task retries are off: map_jobs retries a lost worker's run, the same
way for every engine. Ray's usage statistics stay off (RAY_USAGE_STATS_ENABLED=0) unless you set it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading

from medpeft.config.engine import RayOptions, Resources
from medpeft.engines.base import Engine, Outcome
from medpeft.errors import ConfigError


class RayEngine(Engine):
    name = "ray"

    def __init__(self, options: RayOptions, resources: Resources, log):
        import ray

        super().__init__()
        self.ray, self.remotes = ray, {}
        self.started = not ray.is_initialized()
        settings = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        # ray.init sets its own SIGTERM handler and shutdown leaves it: given back in close()
        self.handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.started:
            # Ray reports usage statistics over the network by default; nothing leaves the machine unless asked
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                if options.address:
                    ray.init(address=options.address, **settings)
                else:
                    # "local": a new cluster even when `ray start` left one running (unset would join that one)
                    ray.init(address="local", num_cpus=options.num_cpus, num_gpus=options.num_gpus, **settings)
            except (ConnectionError, RuntimeError, ValueError) as err:
                self.close()
                if options.address:
                    raise ConfigError(f"ray.address {options.address!r}: cannot connect ({err}); start the cluster first "
                                      "(ray start --head), or leave ray.address unset for a local cluster") from None
                raise ConfigError(f"ray: cannot start a local cluster ({err}); check ray.num_cpus and ray.num_gpus, "
                                  "or join a running cluster with ray.address") from None
        total = ray.cluster_resources()
        if resources.gpus_per_run is None:  # Ray hides every GPU from a task that asks for none
            resources = dataclasses.replace(resources, gpus_per_run=1.0 if total.get("GPU") else 0.0)
        self.resources = resources
        try:
            self.slots = fitting_runs(total, resources)
        except ConfigError:
            self.close()  # the cluster started for nothing, and Ray's signal handler with it
            raise
        where = options.address or "a local cluster"
        log(f"ray: {where}, {describe(total)}; {self.slots} run(s) at once "
            f"({resources.cpus_per_run:g} CPU, {resources.gpus_per_run:g} GPU each)")

    def start(self, fn, jobs):
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(fn).options(num_cpus=self.resources.cpus_per_run,
                                                           num_gpus=self.resources.gpus_per_run, max_retries=0)
        return [self.remotes[fn].remote(job) for job in jobs]

    def finished(self, handles):
        ready, rest = [], handles
        while not ready:  # in short waits, so that close() from the main thread ends a tuning thread's wait
            if self.stopping.is_set():
                raise RuntimeError("stopped: the grid is ending")
            ready, rest = self.ray.wait(handles, num_returns=1, timeout=1.0)
        if rest:  # every other job that has ended too, without waiting
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [(ref, self.outcome(ref)) for ref in ready]

    def outcome(self, ref) -> Outcome:
        exceptions = self.ray.exceptions
        try:
            return Outcome(value=self.ray.get(ref))
        except exceptions.RayTaskError as err:  # the job's own exception
            cause = getattr(err, "cause", None) or err
            return Outcome(error=f"{type(cause).__name__}: {cause}")
        except exceptions.RayError as err:  # a worker crash, an out-of-memory kill, a lost node
            return Outcome(error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", lost=True)

    def close(self):
        self.stopping.set()
        if self.started:
            self.ray.shutdown()
            if threading.current_thread() is threading.main_thread():
                for sig, handler in self.handlers.items():
                    signal.signal(sig, handler)


def fitting_runs(total: dict, resources: Resources) -> int:
    """How many runs the cluster holds at once; a run that fits nowhere is an error now, not a task that waits forever."""
    counts = []
    for key, need in (("CPU", resources.cpus_per_run), ("GPU", resources.gpus_per_run)):
        if need:
            have = total.get(key, 0)
            if have < need:
                raise ConfigError(f"resources: each run asks for {need:g} {key}, but the Ray cluster has {have:g}; "
                                  f"lower resources.{key.lower()}s_per_run or add nodes")
            counts.append(math.floor(have / need + 1e-9))
    return max(1, min(counts))


def describe(total: dict) -> str:
    return ", ".join(f"{total[k]:g} {k}" for k in ("CPU", "GPU") if total.get(k))
