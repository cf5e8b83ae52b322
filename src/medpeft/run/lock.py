"""One run, one worker: a lock file in the run folder, taken before the run starts.

<run_dir>/run.lock holds the worker's host, pid and start time; its modification time is a heartbeat
that a thread renews every HEARTBEAT_S while the worker holds it. The file appears whole and in one
step: it is written under a unique name and then hard-linked to run.lock, which is atomic on local
disks and NFS alike and fails when the lock exists (where hard links are not supported, an O_EXCL
create is used instead). A lock is stale when its process is gone (same host) or its heartbeat is
older than STALE_AFTER_S (any host, so allow for clock skew between machines); a stale lock is taken
over under a short-lived guard file, so two workers never both take it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from medpeft.files import temporary_path

log = logging.getLogger("medpeft")

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0  # seconds between heartbeats
STALE_AFTER_S = 300.0  # a lock whose heartbeat is older than this is abandoned
GUARD_STALE_S = 60.0  # a takeover guard older than this belongs to a worker that died taking over


class RunLock:
    """A held run lock; `release()` (or leaving a `with` block) gives it up."""

    def __init__(self, path: Path, token: str):
        self.path, self.token, self._stop = path, token, threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"medpeft-lock-{path.parent.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if (read_lock(self.path) or {}).get("token") != self.token:
                log.warning("lost the run lock %s (another worker took it over as stale); this run may be trained twice", self.path)
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # a missed beat is harmless; STALE_AFTER_S spans several

    def release(self) -> None:
        self._stop.set()
        if (read_lock(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_run_lock(run_dir: Path) -> RunLock | None:
    """Take the run's lock, or take it over when stale; None when a live worker holds it."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
    if create_exclusive(path, info) or take_over_stale(path, info):
        return RunLock(path, token)
    return None


def read_lock(path: Path) -> dict | None:
    """The lock's content, or None when there is no lock (or it is unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_holder(run_dir: Path) -> str:
    info = read_lock(Path(run_dir) / LOCK_NAME) or {}
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('started', '?')}"


def create_exclusive(path: Path, info: dict) -> bool:
    """Create `path` holding `info`, whole, unless it exists. True when this call created it."""
    tmp = temporary_path(path)
    tmp.write_text(json.dumps(info), encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if tmp.exists() and tmp.stat().st_nlink == 2:  # NFS: the link was made but its reply was lost
            return True
        return create_with_excl(path, info)  # a filesystem without hard links
    finally:
        tmp.unlink(missing_ok=True)


def create_with_excl(path: Path, info: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(info))
    return True


def is_stale(path: Path) -> bool:
    """True when no live worker holds the lock at `path` (including when there is none)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > STALE_AFTER_S:
        return True
    info = read_lock(path) or {}
    return info.get("host") == socket.gethostname() and not process_alive(info.get("pid"))


def process_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # half-written content (the O_EXCL fallback): wait for the heartbeat to age
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def take_over_stale(path: Path, info: dict) -> bool:
    """Replace a stale lock with ours; False when it is live or another worker is taking it over."""
    if not is_stale(path):
        return False
    guard = path.with_name(LOCK_NAME + ".takeover")
    if not create_exclusive(guard, info):
        try:
            if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                guard.unlink(missing_ok=True)  # its worker died mid-takeover; the next attempt may go
        except FileNotFoundError:
            pass
        return False
    try:
        if not is_stale(path):  # checked again under the guard: another worker may just have taken it
            return False
        log.warning("taking over the stale run lock %s (%s)", path, describe_holder(path.parent))
        path.unlink(missing_ok=True)
        return create_exclusive(path, info)
    finally:
        guard.unlink(missing_ok=True)
