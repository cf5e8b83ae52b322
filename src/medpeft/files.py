"""Atomic file writes: a unique temporary name beside the target, then one rename.

Unique per host, process and call, so grid shards on several nodes that share a runs directory
(or a model cache) never write into each other's temporary files, and a reader never sees half a file.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """A hidden, unique sibling of `path` to write into before renaming it over `path`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that `path` is either the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
