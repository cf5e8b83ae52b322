"""Cost measurements of one run: parameters, peak memory, bytes on disk, environment."""
from __future__ import annotations

import ctypes
import functools
import gc
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from medpeft.files import process_status

PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "rouge-score", "scikit-learn", "numpy")


def parameter_count(param) -> int:
    """Weights in one tensor, as peft counts them: bitsandbytes packs two 4-bit weights per byte of
    its storage dtype, so a `Params4bit` holds 2 x itemsize weights per element."""
    n = param.numel()
    if type(param).__name__ == "Params4bit":
        storage = getattr(param, "quant_storage", None)
        n *= 2 * (storage.itemsize if storage is not None else param.element_size())
    return n


def count_parameters(model) -> dict:
    """Trainable and total parameters, counted from the tensors themselves (tied weights once, 4-bit
    weights unpacked). Counting the tensors rather than trusting a config gets soft prompts right."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        n = parameter_count(param)
        total += n
        trainable += n if param.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / max(total, 1)}


def reset_peak_memory() -> None:
    """Start a fresh peak for this run: free what earlier runs left, then reset CUDA's allocator peak
    or the process's RSS high-water mark on Linux.

    The Trainer, the model and peft's wrappers hold reference cycles, so an earlier run's model is
    only freed by the cycle collector; without collecting first, its memory counts in this run's peak.
    glibc also keeps freed small blocks in its arenas: `malloc_trim` returns them to the system.
    What stays resident after that (oneDNN's kernel cache, heap pages held by live objects, ~0.2-0.7 GiB
    after a few MiniLM runs in bf16) is what earlier runs of this process left; it is noted here and left
    out of this run's peak (peak_memory_bytes), so the peak no longer grows with the run's place in the grid.
    It is not the peak of the run alone in a fresh process either (the allocator reuses part of what was left:
    the demo's runs were -0.2 to +0.4 GiB off), which is why the report ranks it only when little was left."""
    global _FIRST_START, _LEFT_BY_EARLIER
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    trim_malloc()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        return  # elsewhere the peak is the process's lifetime peak
    first = _FIRST_START is None
    if first:
        import_run_libraries()
    resident = process_status_bytes("VmRSS") or 0
    if first:
        _FIRST_START = resident
    _LEFT_BY_EARLIER = max(0, resident - _FIRST_START)


_FIRST_START: int | None = None  # bytes: the process's RSS at its first run's start, the libraries a run needs loaded
_LEFT_BY_EARLIER = 0  # bytes: the RSS at this run's start above that, left by earlier runs of this process


def import_run_libraries() -> None:
    """Import what every run imports (the Trainer, peft, accelerate, datasets) before the process's first
    start is noted, so its libraries count in every run's peak, not in the first run's alone."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401


def earlier_runs_resident_bytes() -> int | None:
    """What earlier runs of this process left resident at this run's start, left out of its peak (CPU on
    Linux; None where the peak is the allocator's or the process's lifetime peak)."""
    return None if _FIRST_START is None else _LEFT_BY_EARLIER  # never noted on a GPU or off Linux


def process_status_bytes(field: str) -> int | None:
    """A `/proc/self/status` size (VmRSS, VmHWM) in bytes, or None off Linux."""
    kib = process_status(field)
    return None if kib is None else int(kib) * 1024


def trim_malloc() -> None:
    """Give freed heap memory back to the system (glibc only; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_bytes() -> int:
    """CUDA peak allocated bytes on GPU; on CPU the process's peak resident set size since the run's start,
    less what earlier runs of the same process left resident (reset_peak_memory)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    high_water = process_status_bytes("VmHWM")
    if high_water is not None:
        return high_water - _LEFT_BY_EARLIER
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # what a trained run must store; the rest is config and docs


def folder_bytes(path: Path, weights_only: bool = False) -> int:
    """Bytes of the files under `path` (0 when it does not exist); only weight files with `weights_only`.
    A README.md is left out: peft writes its template there, and `medpeft report` replaces it by the model
    card, so the folder's size on disk would no longer be the one recorded."""
    path = Path(path)
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and f.name != "README.md" and (not weights_only or f.suffix in WEIGHT_SUFFIXES))


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The medpeft checkout's commit (with '+dirty' for local edits), or 'unknown' outside git. Read once
    per process, at its first run: a long grid keeps running the code it imported even if the checkout
    moves on meanwhile, and its later runs must not claim the newer commit."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe_env() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("medpeft",) + PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "git_commit": git_commit(), "device": device_name(), "platform": platform.platform()}
