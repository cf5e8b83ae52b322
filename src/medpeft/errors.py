"""Every error medpeft shows a user, in one place (the bottom layer: it imports nothing of medpeft).

Each message names the file, line or key at fault and says how to fix it; the CLI prints it
without a traceback. All of them derive from `MedpeftError`, so one `except` catches them; each is
raised where the problem is found (a task's loader, the config, the model check), never converted on
the way up. `error_text` is the one way an exception becomes text.
"""
from __future__ import annotations


class MedpeftError(Exception):
    """An error whose message is meant for the user, not a bug."""


class ConfigError(MedpeftError, ValueError):
    """A grid or run configuration that cannot be run; the message names the key and the valid choices."""


class ModelError(MedpeftError, ValueError):
    """A model that cannot be used for this run; the message says why and what to do."""


class DataError(MedpeftError, ValueError):
    """Data that cannot be used; the message names the file, the line and the fix."""


class AssetError(MedpeftError, RuntimeError):
    """A pinned offline asset that is missing or does not match its hash; the message says how to get it."""


class OutputError(MedpeftError, OSError):
    """A folder or file medpeft must write that it cannot (read-only, missing, a file where a folder goes);
    raised before any work whose result it would hold. The message names the path and the fix."""


class UnknownNameError(MedpeftError, LookupError):
    """A registry lookup of a name that is not registered (the message lists the valid ones)."""


def error_text(err: BaseException) -> str:
    """An exception as one line of text, wherever medpeft shows one (the CLI, a log line, a warning, a
    failed run's record): a MedpeftError's message as it is, since it is written for the user; any other
    exception's type and message, since a library's message alone may say nothing (a KeyError's is the key)."""
    return str(err) if isinstance(err, MedpeftError) else f"{type(err).__name__}: {err}"


SAME_STOP_S = 2.0  # seconds: a stop signal this soon after the first is the same request (a batch system signals every
# process of a job, and `medpeft run --backend processes` or `accelerate launch` passes its own on as well)


class Preempted(KeyboardInterrupt):
    """A grid stopped by SIGTERM or SIGINT (a scheduler's notice, or Ctrl-C). Not a failure: no run is
    recorded as failed; a run stopped in training left a checkpoint that the next `medpeft run` resumes.
    A KeyboardInterrupt, so `except Exception` (a failed run, the grid goes on) never swallows it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum  # the process exits with 128 + signum, as a shell reports a signal
