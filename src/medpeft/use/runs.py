"""A finished run opened for use: its result, config, model kind, label set, and how to load its model.

Nothing here trains or checks data: a run is rebuilt from its own result.json (config, model kind,
labels, base model path), so it can be used where its training data no longer is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medpeft.config import ExperimentConfig, config_from_dict
from medpeft.dist import local_device
from medpeft.errors import MedpeftError, ModelError, OutputError
from medpeft.files import check_writable_folder, folder_fingerprint
from medpeft.methods import MethodSpec, Role
from medpeft.models import MODELS, load_model, model_architecture, resolve_model
from medpeft.plan import load_data, model_kind, task_spec
from medpeft.registry import METHODS
from medpeft.run.checkpoint import read_safetensors_header
from medpeft.run.kinds import KINDS, ModelKind
from medpeft.run.levers import hold_frozen_in_bf16
from medpeft.run.owner import GRID_MARKER, recorded_grid_file
from medpeft.run.record import RunResult, read_result

TEXT_ONLY = "text"  # prompt_format of an encoder that sees the text alone (no instruction): run/encode.py
# Pickled weight files -> the safetensors file a conversion writes; loading a pickle can run any code it holds.
PICKLED_WEIGHTS = {"adapter_model.bin": "adapter_model.safetensors", "pytorch_model.bin": "model.safetensors"}


@dataclass(frozen=True)
class FinishedRun:
    """A succeeded run and what using it needs."""

    run_dir: Path
    result: RunResult
    config: ExperimentConfig
    kind: ModelKind
    method: MethodSpec

    @property
    def name(self) -> str:
        return self.result.run_id

    @property
    def labels(self) -> list[str] | None:
        return self.result.labels

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def is_full(self) -> bool:
        """Full fine-tuning: adapter/ holds a whole model, not a peft adapter."""
        return self.method.role is Role.FULL

    @property
    def peft_type(self) -> str | None:
        """The saved adapter's peft type (LORA, IA3, PROMPT_TUNING, ...), or None without an adapter."""
        config = self.adapter_dir / "adapter_config.json"
        return json.loads(config.read_text())["peft_type"] if config.is_file() else None

    @property
    def head_labels(self) -> list[str] | None:
        """The labels that size a new classification head, as the run loaded its base."""
        return self.labels if self.kind.new_head else None


def open_run(run_dir) -> FinishedRun:
    """The finished run in `run_dir`; a folder that is not one is an error that says what to point at."""
    import medpeft.methods  # noqa: F401  (fills the method registry)

    run_dir = Path(run_dir)
    if not (run_dir / "result.json").is_file():
        raise ModelError(f"{run_dir} has no result.json: point at a finished run's folder, runs/<grid>/<run_id>")
    result = read_result(run_dir)
    if result is None:
        raise ModelError(f"{run_dir / 'result.json'} is not a readable medpeft result; run the grid again to rewrite it")
    if not result.ok:
        raise ModelError(f"run {result.run_id} failed ({result.error}); pick a run that finished")
    cfg = config_from_dict(run_settings(result.config))
    method = METHODS[cfg.method]
    name = result.model_kind or model_kind(result.task_type, model_architecture(result.model_path), cfg.model)
    run = FinishedRun(run_dir, result, cfg, KINDS[name], method)
    if not method.trains and run.kind.new_head:
        raise ModelError(f"run {result.run_id} is the untrained baseline: its {result.task_type} head was never trained "
                         "(it scored the training split's prior), so it has no model to use; pick a trained run")
    if method.trains:
        check_saved_model(run)
    return run


def run_settings(config: dict) -> dict:
    """A result.json `config` as config_from_dict reads it: a run that never trained has its method's learning
    rate there, the untrained baseline's 0, which no run could be given (train.lr must be > 0): unset."""
    method = METHODS.get(config.get("method"))
    if method is None or method.trains or not config.get("train", {}).get("lr") == 0:
        return config
    return {**config, "train": {**config["train"], "lr": None}}


def grid_command(run_dir: Path) -> str:
    """The `medpeft run` line of the run's grid: its file as the grid folder records it (grid.json), else by name."""
    grid_dir = Path(run_dir).absolute().parent  # runs/<grid name>, whatever folder the run was named from
    grid_file = recorded_grid_file(grid_dir / GRID_MARKER)
    named = "" if grid_file else f" (GRID.yaml: the grid file with name: {grid_dir.name})"
    return f"medpeft run {grid_file or 'GRID.yaml'} --runs-dir {grid_dir.parent}{named}"


def rerun_advice(run_dir: Path) -> str:
    """How to train a finished run again: `medpeft run` skips every run whose result.json says it finished."""
    return (f"`medpeft run` skips a run with a result.json, so remove {run_dir / 'result.json'} and run its grid again: "
            f"{grid_command(run_dir)}")


def check_saved_model(run: FinishedRun) -> None:
    """adapter/ holds the run's config and weights, as safetensors and whole; else an error naming the file.
    (Without its adapter_config.json a peft run would predict with the bare base, silently.)"""
    folder = run.adapter_dir
    if not folder.is_dir():
        raise ModelError(f"run {run.name} has no adapter/ folder ({folder}): it was removed after the run finished. To "
                         f"train it again: {rerun_advice(run.run_dir)}")
    for name, safe in PICKLED_WEIGHTS.items():
        if (folder / name).is_file():
            raise ModelError(pickle_message(folder / name, folder / safe))
    weights = sorted(folder.glob("*.safetensors"))
    config = "config.json" if run.is_full else "adapter_config.json"
    missing = ([] if (folder / config).is_file() else [config]) + ([] if weights else ["its weights (*.safetensors)"])
    if missing:
        raise ModelError(f"{folder} lacks {' and '.join(missing)}: copy the run's adapter/ back whole, or train it "
                         f"again: {rerun_advice(run.run_dir)}")
    for path in weights:
        check_safetensors(path, run.run_dir)


def pickle_message(path: Path, safe: Path) -> str:
    """Why a pickled weight file is refused, and the fix: remove it beside its safetensors twin, else convert it."""
    fix = (f"remove it ({safe.name} beside it holds the weights)" if safe.is_file() else
           f"if you trust the file, convert it: python -c \"import torch; from safetensors.torch import save_file; "
           f"save_file(torch.load('{path}', weights_only=True), '{safe}')\" and then remove {path.name}")
    return (f"{path} is a pickle (PyTorch .bin), and loading a pickle can run any code it holds, so medpeft loads "
            f"safetensors only (its own runs save {safe.name}); {fix}")


def check_safetensors(path: Path, run_dir: Path) -> None:
    """A safetensors file whose header cannot be read (cut short, damaged) is a ModelError naming it."""
    from safetensors import SafetensorError

    try:
        read_safetensors_header(path)
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{path} cannot be read ({err}): it is damaged or cut short, e.g. by a full disk or an "
                         f"interrupted copy. Copy it again from a whole copy, or train the run again: "
                         f"{rerun_advice(run_dir)}") from None


def reads_pairs(run: FinishedRun) -> bool:
    """Whether the run was trained on text pairs (pubmed-rct-context, pubmedqa, a user task.pair_field)."""
    return bool(run.result.inputs.train.text_pairs)


def pair_field_of(run: FinishedRun) -> str:
    """The column a pair run's second text is read from: your own data's task.pair_field, else `pair`."""
    return (run.config.user_data or {}).get("pair_field") or "pair"


def base_model_path(run: FinishedRun, online: bool = False) -> str:
    """The base model the run was trained from: its recorded folder, else its model rebuilt or resolved again."""
    path = run.result.model_path
    if not (path and Path(path).expanduser().is_dir()):
        path = resolve_model(run.config.model, online)  # a packaged model rebuilt into the cache, or a hub id (--online)
    if Path(path).expanduser().is_dir():
        check_base(run, Path(path).expanduser())
    return path


def check_base(run: FinishedRun, folder: Path) -> None:
    """The base folder holds a model, and (for a local model the run fingerprinted) the one the run trained on:
    an adapter on other weights predicts otherwise, silently."""
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        rebuild = (f"; or remove the folder, and medpeft builds model {run.config.model!r} there again"
                   if run.config.model in MODELS else "")
        raise ModelError(f"{folder} (model_path in {run.run_dir / 'result.json'}) is not a model folder: it has no "
                         f"config.json. Put back the base model run {run.name} trained on (a transformers "
                         f"save_pretrained folder){rebuild}")
    recorded = (run.config.fingerprint or {}).get("model")
    if recorded is not None and (now := folder_fingerprint(folder)) != recorded:
        raise ModelError(f"the base model in {folder} changed after run {run.name} trained on it (its fingerprint is "
                         f"{now}, {run.run_dir / 'result.json'} recorded {recorded}), so the adapter would run on other "
                         f"weights. Restore the folder's files as they were when the run trained, or train on the "
                         f"changed base, where the run gets a new run id: {grid_command(run.run_dir)}")


def run_instruction(run: FinishedRun, online: bool = False) -> str:
    """The task instruction the run's prompts start with ("" for an encoder that sees the text alone)."""
    recorded = run.result.inputs
    if recorded.instruction is not None:
        return recorded.instruction
    if recorded.prompt_format == TEXT_ONLY:
        return ""
    if run.config.user_data is not None:  # as tasks/user.py sets it, without reading the data file again
        from medpeft.tasks.user import INSTRUCTIONS

        return run.config.user_data.get("instruction") or INSTRUCTIONS[run.config.user_data["type"]]
    try:
        return load_data(task_spec(run.config), run.config, online).instruction
    except MedpeftError as err:
        raise ModelError(f"run {run.name}: its prompt starts with task {run.config.task!r}'s instruction, which "
                         f"needs the task to load: {err}") from None


def load_run_model(run: FinishedRun, online: bool = False):
    """Model and tokenizer of a full run's saved folder or an untrained run's base, on this device."""
    path = str(run.adapter_dir) if run.is_full else base_model_path(run, online)
    model, tokenizer, _ = load_model(path, run.kind.auto_class, run.head_labels, run.kind.problem_type)
    return model.to(local_device()), tokenizer


def load_adapters(runs: list[FinishedRun], names: list[str], online: bool = False):
    """One base with each run's peft adapter attached under its name (load_adapter), and its tokenizer."""
    from peft import PeftModel

    first = runs[0]
    quantize = first.method.quantize_4bit  # QLoRA adapters were trained on, and predict with, the 4-bit base
    base, tokenizer, _ = load_model(base_model_path(first, online), first.kind.auto_class, first.head_labels,
                                    first.kind.problem_type, quantize)
    if first.result.provenance.bf16_base:  # as the run evaluated: the frozen base in bf16 (peft keeps the adapter fp32)
        hold_frozen_in_bf16(base.requires_grad_(False))
    model = PeftModel.from_pretrained(base, first.adapter_dir, adapter_name=names[0])
    for run, name in zip(runs[1:], names[1:]):
        model.load_adapter(run.adapter_dir, adapter_name=name)
    if not quantize:  # a 4-bit model is already placed and cannot be moved
        model.to(local_device())
    return model, tokenizer


def share_base(run: FinishedRun) -> tuple | None:
    """What runs served by one base with several adapters share; None for a run with its own model (full, untrained)."""
    if run.peft_type is None:
        return None
    return (run.result.model_path, run.config.model, run.kind.name, tuple(run.head_labels or ()), run.peft_type,
            run.method.quantize_4bit, run.result.provenance.bf16_base)


def check_output_place(path: Path, option: str) -> None:
    """What `option` (--output, --out) names can be written: no file stands where one of its folders goes (said
    with the option first), and its nearest existing folder takes a new file (the write makes the missing
    ones). Checked before any model loads."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {path}: {parent} is a file, not a folder; give {option} another place")
            break
    check_writable_folder(Path(path).parent, f"the folder of {option}", f"give {option} a place you can write to")
