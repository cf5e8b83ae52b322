"""`medpeft export`: a run's model as a folder to ship, with its model card.

- LoRA, DoRA and IA3 with `merge`: the adapter merged into its base (peft's merge_and_unload), saved
  as a standalone transformers folder with the tokenizer; it loads without peft.
- Prompt-learning methods (prompt tuning, prefix tuning, P-tuning) add soft tokens to every input
  rather than changing weights, so they cannot merge: the adapter, the tokenizer and a pinned
  reference to the base (base_model.json) are exported, and the result says so.
- A `full` run is already a whole model: its folder as it is (re-saved only for another dtype).

The folder is built under a temporary name and renamed into place, so a failed export leaves nothing half-written.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.errors import ConfigError, ModelError, OutputError
from medpeft.files import folder_fingerprint, folder_written_whole, write_atomic
from medpeft.models import is_hub_id, load_model
from medpeft.use.card import write_card
from medpeft.use.runs import FinishedRun, base_model_path, check_output_place, open_run

DTYPES = ("fp32", "bf16", "fp16")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # open_run refuses a pickled adapter_model.bin
BASE_REFERENCE = "base_model.json"


@dataclass
class Export:
    """What `export_run` wrote."""

    out: Path
    kind: str  # "merged", "adapter" (with a reference to its base) or "full"
    notes: list[str] = field(default_factory=list)  # what the user must know (e.g. why nothing was merged)


def torch_dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def export_run(run_dir, out, *, merge: bool = False, dtype: str | None = None, online: bool = False) -> Export:
    """Export the run in `run_dir` to the new folder `out` (see the module docstring), card included."""
    run = open_run(run_dir)
    out = Path(out)
    dtype_value = torch_dtype(dtype)
    if not run.method.trains:
        raise ModelError(f"run {run.name} is the untrained baseline: nothing was trained, so there is nothing to export; "
                         f"its base model is {run.result.model_path}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; export into a new folder")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty; export into a new folder (or remove it first)")
    check_output_place(out, "--out")
    with folder_written_whole(out) as tmp:  # renamed over `out` (or the empty folder the user made) at the end
        if run.is_full:
            export = export_full(run, tmp, dtype_value, merge)
        elif merge and not adapter_config(run).is_prompt_learning:
            export = export_merged(run, tmp, dtype_value, online)
        else:
            export = export_adapter(run, tmp, dtype_value, merge, online)
        write_card(run.run_dir, grid_results_of(run), folder=tmp, export={"kind": export.kind, "dtype": dtype, "path": str(out)})
    export.out = out
    return export


def adapter_config(run: FinishedRun):
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(run.adapter_dir))


def grid_results_of(run: FinishedRun):
    """The results of the run's grid (its folder's siblings), for the card's comparisons."""
    from medpeft.run.record import load_results

    return load_results(run.run_dir.parent)


def export_full(run: FinishedRun, tmp: Path, dtype, merge: bool) -> Export:
    """A full fine-tuning run's whole model: copied as it is, or re-saved in `dtype`."""
    notes = ["full fine-tuning trains every weight: the model is already whole, there is nothing to merge"] if merge else []
    if dtype is None:
        for f in run.adapter_dir.iterdir():
            if f.is_file() and f.name != "README.md":  # the card is written fresh
                shutil.copy2(f, tmp / f.name)
        return Export(tmp, "full", notes)
    model, tokenizer, _ = load_model(str(run.adapter_dir), run.kind.auto_class, run.head_labels, run.kind.problem_type)
    model.to(dtype).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return Export(tmp, "full", notes)


def export_merged(run: FinishedRun, tmp: Path, dtype, online: bool) -> Export:
    """The adapter merged into its full-precision base, saved as a plain transformers folder with the tokenizer."""
    from peft import PeftModel

    base, tokenizer, _ = load_model(base_model_path(run, online), run.kind.auto_class, run.head_labels, run.kind.problem_type)
    merged = PeftModel.from_pretrained(base, run.adapter_dir).merge_and_unload()
    if dtype is not None:
        merged = merged.to(dtype)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    notes = []
    if run.method.quantize_4bit:
        notes.append("QLoRA trained this adapter on a 4-bit base; it is merged into the full-precision base, so outputs "
                     "differ slightly from the 4-bit base + adapter the run evaluated")
    return Export(tmp, "merged", notes)


def export_adapter(run: FinishedRun, tmp: Path, dtype, merge: bool, online: bool) -> Export:
    """The adapter files (cast to `dtype`), the tokenizer, and a pinned reference to the base model."""
    from transformers import AutoTokenizer

    for name in ADAPTER_FILES:
        if (run.adapter_dir / name).is_file():
            shutil.copy2(run.adapter_dir / name, tmp / name)
    if dtype is not None:
        cast_adapter(tmp / "adapter_model.safetensors", dtype)
    base = base_model_path(run, online)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:  # as the run padded its batches (models.load_model)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp)
    write_atomic(tmp / BASE_REFERENCE, json.dumps(base_reference(run, base), indent=2) + "\n")
    notes = []
    if merge:
        notes.append(f"{run.config.method} learns soft prompt tokens that are fed to the model with every input, not a "
                     f"change of its weights, so it cannot be merged into the base model. Exported the adapter, the "
                     f"tokenizer and a pinned reference to the base ({BASE_REFERENCE}); load it with peft on that base")
    return Export(tmp, "adapter", notes)


def cast_adapter(path: Path, dtype) -> None:
    """Cast the floating-point tensors of a safetensors file to `dtype`, in place."""
    from safetensors.torch import load_file, save_file

    if not path.is_file():
        return
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def base_reference(run: FinishedRun, base: str) -> dict:
    """Which base model the adapter needs: name, where it was, and a fingerprint of a local folder's files."""
    local = Path(base).expanduser().is_dir()
    return {"model": run.config.model, "path": base, "hub_id": base if is_hub_id(base) else None,
            "fingerprint": folder_fingerprint(Path(base).expanduser()) if local else None,
            "fingerprint_of": "medpeft.files.folder_fingerprint: every file's name and size, small files whole, "
                              "large ones by their first and last MiB" if local else None}
