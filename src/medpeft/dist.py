"""Multi-process awareness for `accelerate launch` (DDP, FSDP, DeepSpeed): every process trains, only
the main process writes files. Without a launcher (WORLD_SIZE unset) nothing is initialised."""
from __future__ import annotations

import os


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a launched job."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the launched processes (no-op in a single process)."""
    if is_distributed():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def local_device():
    """This process's device: its own GPU under a launcher (LOCAL_RANK), else cuda or cpu."""
    import torch

    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def default_precision() -> str:
    """What `train.precision: auto` means here: bf16 on a CUDA GPU that supports it (Ampere and newer),
    else fp32 (CPU, and GPUs with fp16 only, where fp16 stays a choice: it can overflow)."""
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
