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
    """What `train.precision: auto` means here: bf16 where the hardware multiplies bf16 natively, a CUDA GPU
    that supports it (Ampere and newer) or, without one, a CPU with bf16 instructions (cpu_has_bf16); else
    fp32 (other CPUs, where bf16 is emulated and slower, and GPUs with fp16 only, where fp16 stays a choice:
    it can overflow). torch's own check counts emulation as support (a T4 or V100 says yes), so it is asked
    for native support alone."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_precision(precision: str) -> str:
    """A `train.precision` (or `--precision`) as it runs here: auto becomes default_precision()."""
    return default_precision() if precision == "auto" else precision


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX: AMD Zen 4 and newer, Intel Xeon
    Cooper Lake / Sapphire Rapids and newer). There a bf16 matrix product runs at about twice the fp32 rate
    (2.2x measured on this project's 2-core Zen 4 machine); elsewhere oneDNN emulates it, slower than fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, as its compiler reads them
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
