"""Runs each run in a process of its own on this machine, one after another (--backend processes).

Why: on CPU a run's peak memory is its process's resident set, and runs that share one process share it (what an
earlier run left resident counts again in later ones; run/measure.py). In a process of its own, each run's peak is
its own, as if it ran alone, and the report ranks the column. The processes are forked from a server that imported
torch, transformers, peft, datasets and accelerate once (multiprocessing's forkserver), so a run does not pay for
those imports again; where forkserver is missing they are spawned (slower). A forked process counts the library
pages only as it touches them, so its peak is about 0.1 GiB below the same run's in a freshly started process
(MiniLM, tiny-bert: 575 against 679 MiB untrained), the same for every run of the grid.

Each run's process leaves the terminal's process group, so Ctrl-C reaches this process alone; close() passes
the stop on as SIGTERM (the run saves a checkpoint after its current step and stops; the same command resumes it)
and a second Ctrl-C stops it at once. A run's process also stops so when this process ends without close()
(killed with SIGKILL): it holds the read end of a lifeline pipe whose only write end is here. A run's process
that dies (killed, out of memory), or that a SIGTERM of its own stopped at a checkpoint, is a lost worker:
map_jobs submits its run again, and it resumes from its last checkpoint. What a run's process prints goes to
runs/<grid>/processes/<pid>.log (its run's own lines are also in the run's train.log).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait
from pathlib import Path

from medpeft.engines.base import Engine, Outcome

# What the forkserver imports once, before it forks any run's process (run/measure.import_run_libraries's list).
PRELOAD = ("torch", "accelerate", "datasets", "peft", "transformers.trainer", "medpeft.grid")
STOP_WAIT_S = 600.0  # seconds close() waits for a run to checkpoint and stop before it stops it at once
EXIT_WAIT_S = 60.0  # seconds a run's process may take to exit once it sent its result


class Handle:
    """One job: fn(job) in a process once started; its process, the read end of its result pipe and the write
    end of its lifeline (closed: the run's process stops at its next checkpoint)."""

    def __init__(self, fn, job):
        self.fn, self.job, self.process, self.reader, self.lifeline, self.outcome = fn, job, None, None, None, None

    def release(self) -> None:
        for end in (self.reader, self.lifeline):
            if end is not None:
                end.close()


class ProcessEngine(Engine):
    name = "processes"
    slots = 1  # one run at a time: two trainings side by side halve each other's speed and share the memory

    def __init__(self, folder: Path, log):
        super().__init__()
        self.folder = Path(folder)
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self.context.get_start_method() == "forkserver":
            self.context.set_forkserver_preload(list(PRELOAD))
        self.waiting: list[Handle] = []
        self.live: list[Handle] = []
        log(f"processes: each run in a process of its own ({self.context.get_start_method()}), one at a time")

    def start(self, fn, jobs):
        handles = [Handle(fn, job) for job in jobs]
        self.waiting += handles
        return handles

    def launch(self) -> None:
        while self.waiting and len(self.live) < self.slots:
            handle = self.waiting.pop(0)
            handle.reader, writer = self.context.Pipe(duplex=False)
            alive, handle.lifeline = self.context.Pipe(duplex=False)
            self.folder.mkdir(parents=True, exist_ok=True)
            handle.process = self.context.Process(target=work, args=(handle.fn, handle.job, writer, alive, str(self.folder)),
                                                  daemon=False, name="medpeft-run")
            self.live.append(handle)  # before it starts: a stop signal during start() still reaches close()
            try:
                handle.process.start()
            except Exception as err:  # noqa: BLE001 - no fork (out of memory), a job that does not pickle, no forkserver
                self.live.remove(handle)
                handle.release()
                handle.outcome = Outcome(error=f"its process could not start ({type(err).__name__}: {err})")
            finally:
                writer.close()  # the child holds these ends now: its end closes the result pipe
                alive.close()

    def finished(self, handles):
        while True:
            self.launch()
            if self.stopping.is_set():
                raise RuntimeError("stopped: the grid is ending")
            # the result pipe, not the process's sentinel: its end is the process's end (the child holds its only write
            # end), while the sentinel also fires when the forkserver dies under a running child
            ready = wait([h.reader for h in self.live], timeout=1.0)
            for handle in [h for h in self.live if h.reader in ready]:
                self.collect(handle)
            ended = [h for h in handles if h.outcome is not None]
            if ended:
                return [(h, h.outcome) for h in ended]

    def collect(self, handle: Handle) -> None:
        """Read what the run's process sent (its result, or what it raised) and wait for it to end; a process that
        ended without sending anything was lost (killed, out of memory)."""
        try:  # called once the pipe is readable: a message, or its end
            kind, value = handle.reader.recv()
        except (EOFError, OSError):  # nothing sent: the process died
            kind, value = None, None
        except Exception as err:  # noqa: BLE001 - sent, but it does not unpickle here
            kind, value = "error", f"its result could not be read back ({type(err).__name__}: {err})"
        handle.process.join(EXIT_WAIT_S)
        if handle.process.is_alive():  # a thread a library left behind keeps it from exiting; its work is done
            handle.process.kill()
            handle.process.join()
        handle.release()
        self.live.remove(handle)
        if kind == "value":
            handle.outcome = Outcome(value=value)
        elif kind == "error":
            handle.outcome = Outcome(error=value)
        elif kind == "stopped":  # a SIGTERM of its own (a scheduler, a user): checkpointed, so submitted again it resumes
            handle.outcome = Outcome(error=value, lost=True)
        else:
            pid = handle.process.pid
            handle.outcome = Outcome(error=f"its process (pid {pid}) {ended_how(handle.process.exitcode)}; its log: "
                                           f"{self.folder / f'{pid}.log'}", lost=True)

    def close(self):
        """Stop the run in flight as a scheduler would: SIGTERM (a checkpoint after this step, then it stops), and
        wait until its process has ended (the end of its result pipe: join() is told of the end by the forkserver,
        which a signal to this process group may already have stopped). A second stop signal meanwhile, or
        STOP_WAIT_S, stops it at once; the lifeline closes only once the process has ended."""
        self.stopping.set()
        self.waiting.clear()
        live = [h for h in self.live if h.process.pid is not None]
        for handle in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.process.pid, signal.SIGTERM)
        try:
            with stop_signals_raised():
                for handle in live:
                    if wait_for_end(handle, time.monotonic() + STOP_WAIT_S):
                        handle.process.join(EXIT_WAIT_S)  # its pipe ends just before the process: wait for that too
        except KeyboardInterrupt as err:  # a second Ctrl-C or SIGTERM (a Preempted): the run stops at once
            for handle in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(handle.process.pid, signal.SIGTERM)
            for handle in live:
                wait_for_end(handle, time.monotonic() + 10)
            from medpeft.errors import SAME_STOP_S, Preempted

            signum = getattr(err, "signum", signal.SIGINT)
            raise Preempted(f"{signal.Signals(signum).name} received again: the run in flight was told to stop at once (within "
                            f"{SAME_STOP_S:g} s of the first signal it still saved its checkpoint); run the same command again "
                            "to go on (finished runs are kept)", signum) from None
        finally:
            for handle in self.live:
                if handle.process.pid is not None and not handle.reader.closed and not wait_for_end(handle, time.monotonic()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(handle.process.pid, signal.SIGKILL)
                handle.release()  # a process whose start() a signal cut short stops at its lifeline's end
            self.live.clear()


def wait_for_end(handle: Handle, deadline: float) -> bool:
    """Read the run's result pipe until its end (the process has ended) or the deadline; whether it ended."""
    while not handle.reader.closed:
        if not handle.reader.poll(max(0.0, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return False
            continue
        try:
            handle.reader.recv()  # a result nobody waits for any more
        except (EOFError, OSError):
            return True
        except Exception:  # noqa: BLE001, S112 - a result that does not unpickle: the process may still be ending
            continue
    return True


@contextlib.contextmanager
def stop_signals_raised():
    """SIGTERM and SIGINT raise Preempted inside the block (outside a grid, SIGTERM would end this process silently)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop_now) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def work(fn, job, writer, alive, folder: str) -> None:
    """A run's process: print to its log, leave the terminal's process group (a stop comes from the grid's process),
    stop at a checkpoint when the grid's process is gone (its lifeline `alive` ends), send fn(job), what it raised,
    or that a stop signal ended it at a checkpoint."""
    from medpeft.errors import Preempted

    log = os.open(os.path.join(folder, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (1, 2):
        os.dup2(log, stream)
    os.close(log)
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: Windows, which has no process groups
        os.setpgid(0, 0)
    try:  # a stop may come at any point from here on: it lands in one of the excepts below
        for stop in (signal.SIGTERM, signal.SIGINT):  # outside training too, a stop unwinds the run: its lock is given back
            signal.signal(stop, stop_now)
        threading.Thread(target=stop_when_ended, args=(alive,), daemon=True, name="medpeft-lifeline").start()
        message = ("value", fn(job))
    except Preempted as err:
        message = ("stopped", f"{type(err).__name__}: {err}")
    except BaseException as err:  # noqa: BLE001 - sent to the grid's process, which records the run as failed
        message = ("error", f"{type(err).__name__}: {err}")
    for stop in (signal.SIGTERM, signal.SIGINT):  # the run has ended: a stop now would only lose what it sends
        signal.signal(stop, signal.SIG_IGN)
    try:
        writer.send(message)
    except OSError:  # BrokenPipeError: the grid's process is gone, and nobody waits for it
        pass
    except Exception as err:  # noqa: BLE001 - a result that does not pickle
        with contextlib.suppress(OSError):
            writer.send(("error", f"its result could not be sent back ({type(err).__name__}: {err})"))
    writer.close()


def stop_now(signum, frame):
    """A stop signal outside training (in training, run/preempt.py's handler saves a checkpoint first)."""
    from medpeft.errors import Preempted

    raise Preempted(f"stopped by {signal.Signals(signum).name} outside training", signum)


def stop_when_ended(alive) -> None:
    """Wait for the grid's process to close the lifeline (it never writes to it), then stop this run as a scheduler
    would: SIGTERM, a checkpoint after the current step."""
    with contextlib.suppress(EOFError, OSError):
        alive.recv()
    os.kill(os.getpid(), signal.SIGTERM)


def ended_how(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"was killed by {name}" + (" (out of memory? the kernel's OOM killer sends it)" if name == "SIGKILL" else "")
    return f"exited with code {code} without a result"
