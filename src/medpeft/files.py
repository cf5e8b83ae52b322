"""Atomic file writes: a unique temporary name beside the target, then one rename.

Unique per host, process and call, so grid shards on several nodes that share a runs directory
(or a model cache) never write into each other's temporary files, and a reader never sees half a file.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

from medpeft.errors import OutputError


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
    except OSError as err:  # a full disk: leave no temporary file, and say which file (the OS does not)
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask_modes(folder: Path) -> None:
    """Give the files in `folder` (not below) that were made owner-only the mode an ordinary new file gets
    (0o666 without the umask's bits). safetensors >= 0.8.1 writes through a 0o600 temporary file, so an
    adapter's weights were unreadable to the colleagues its README.md and config were readable to."""
    mask = current_umask()
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600:
            path.chmod(0o666 & ~mask)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and put back."""
    umask = process_status("Umask")
    if umask is not None:
        return int(umask, 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def process_status(field: str) -> str | None:
    """A field of Linux's /proc/self/status (Umask, VmRSS, VmHWM), its first word as written; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split()[1]
    except OSError:
        pass
    return None


@contextmanager
def folder_written_whole(path: Path):
    """Yield a new hidden sibling folder to write into; renamed to `path` when the block succeeds, removed
    when it fails. A full disk (however the library writing reports it) becomes an OSError naming `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        umask_modes(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and is_disk_full(err) and getattr(err, "filename", None) is None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise


DISK_FULL_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded", "file write failed")


def check_writable_folder(folder: Path, what: str, fix: str) -> None:
    """Write (then remove) a probe file in `folder`, or in its nearest existing parent when it does not
    exist yet (nothing is created), so a read-only or full place, or a file where a folder goes, is an
    OutputError naming it now rather than a traceback after the work. `what` names the folder for the
    user; `fix` says what to do instead."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
        probe = temporary_path(existing / "write-check")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to {what} {folder} ({err.strerror or err}); {fix}") from None


def is_disk_full(err: BaseException) -> bool:
    """A write that failed for lack of space: an OSError's errno, or the text that torch ("file write
    failed") and safetensors ("StorageFull") put in their own error types."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(err) for text in DISK_FULL_TEXT)


SMALL_FILE = 1 << 20  # bytes: files up to this size are hashed whole, larger ones by their head and tail


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (16 hex digits): edited in place, it gets a new fingerprint."""
    stat = Path(path).stat()
    return hash_file(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def hash_file(path: str, mtime_ns: int, ctime_ns: int, size: int) -> str:
    """Hash once per (file, modification time, size): a grid of many runs reads a large file once."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def folder_fingerprint(path: Path) -> str:
    """A fingerprint of a model folder that changes when it is rebuilt or re-trained, in well under a
    second for a multi-GB model: every file's name and size, small files whole (configs, pretrain.json),
    large ones (weights) by their first and last MiB."""
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path)}:{size}\n".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(SMALL_FILE))
            if size > 2 * SMALL_FILE:
                fh.seek(-SMALL_FILE, os.SEEK_END)
                digest.update(fh.read(SMALL_FILE))
    return digest.hexdigest()[:16]
