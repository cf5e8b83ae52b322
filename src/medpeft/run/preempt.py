"""Stop signals (SIGTERM from a scheduler about to preempt the job, SIGINT from Ctrl-C).

During training (fit.py) the first signal asks for a checkpoint at the end of the current step and a
clean stop; the run then ends with `Preempted`, and the next `medpeft run` resumes it. Signals within
SAME_STOP_S of the first are the same request (a batch system signals every process of a job at once). Anywhere else
in a grid (grid.py), or at a second signal, the grid stops at once with `Preempted`: finished runs are
kept, an unfinished one runs again (from its last checkpoint, if it had one). Either way the message
says how to go on. Handlers can only be installed from the main thread; elsewhere nothing changes.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager

from medpeft.errors import SAME_STOP_S, Preempted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Set by the first stop signal during training; read by the checkpoint callback at each step end."""

    def __init__(self):
        self.signum: int | None = None
        self.at = 0.0  # time.monotonic() of the first signal

    @property
    def requested(self) -> bool:
        return self.signum is not None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def handlers_installed(handler):
    """`handler` for SIGTERM and SIGINT inside the block, the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def checkpoint_on_signal():
    """While training: the first signal sets the yielded StopRequest (a checkpoint, then a stop at the
    end of the step); a second one stops at once."""
    request = StopRequest()

    def handler(signum, frame):
        if request.requested and time.monotonic() - request.at < SAME_STOP_S:
            print(f"medpeft: {signal_name(signum)} received again within {SAME_STOP_S:g} s: taken as the same request "
                  "(a checkpoint, then a stop)", file=sys.stderr, flush=True)
            return
        if request.requested:
            raise Preempted(f"{signal_name(signum)} received again: stopped at once, without a checkpoint; "
                            "run the same command again to go on (finished runs are kept)", signum)
        request.signum, request.at = signum, time.monotonic()
        print(f"medpeft: {signal_name(signum)} received: saving a checkpoint after this training step, then "
              "stopping (send it again to stop at once)", file=sys.stderr, flush=True)

    with handlers_installed(handler):
        yield request


@contextmanager
def stop_on_signal():
    """Outside training: a signal stops the grid at once, with a message instead of a traceback."""

    def handler(signum, frame):
        raise Preempted(f"stopped by {signal_name(signum)}: finished runs are kept; run the same command again "
                        "to go on", signum)

    with handlers_installed(handler):
        yield
