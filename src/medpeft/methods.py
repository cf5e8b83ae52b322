"""Adaptation methods: each is a peft config (never a re-implementation), or None for full fine-tuning.

A method's builder gets the peft task type of the model (`SEQ_2_SEQ_LM`, `CAUSAL_LM`, `SEQ_CLS`,
`TOKEN_CLS`: each model kind names its own, see run/kinds.py), the user's `method_args` and the run
context, and returns a peft config. Defaults follow the
studies in the brief: LoRA r=16, alpha=32 on the attention query/value projections
(peft's per-architecture default targets), 20 prompt tokens initialised from text.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass
from typing import Callable

from medpeft.errors import ConfigError
from medpeft.registry import METHODS

PEFT_TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS")
FULL = "full"  # the method name of full fine-tuning
BASELINE = "untrained"  # the method name of the untrained baseline (one per model and task in every grid)


class Role(str, enum.Enum):
    """What a method is to the comparison: the untrained baseline, full fine-tuning, or a peft method."""

    BASELINE = "baseline"
    FULL = "full"
    PEFT = "peft"


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: how to build its peft config and its default learning rate."""

    name: str
    description: str
    default_lr: float  # used when train.lr is not set
    peft_class: str | None  # name of the peft config class; None = no adapter
    build: Callable[..., object]
    trains: bool = True  # False for the untrained baseline
    quantize_4bit: bool = False  # load the frozen base in 4-bit (QLoRA): needs CUDA and bitsandbytes
    # `tune: auto` learning rates: half-decade steps spanning the short CPU runs (higher) and the studies'
    # long GPU runs (LoRA 3e-4, prompt tuning 3e-2, full 2e-5..5e-5 at the lower end)
    lr_candidates: tuple[float, ...] = ()

    @property
    def role(self) -> Role:
        if not self.trains:
            return Role.BASELINE
        return Role.FULL if self.peft_class is None else Role.PEFT


def method_role(name: str) -> Role:
    """The role of the method called `name` (as a result.json records it); a name no longer registered is a
    peft method unless it is the baseline's or full fine-tuning's."""
    if name in METHODS:
        return METHODS[name].role
    return {BASELINE: Role.BASELINE, FULL: Role.FULL}.get(name, Role.PEFT)


def register_method(name, description, default_lr, peft_class, trains=True, quantize_4bit=False, lr_candidates=()):
    def decorator(fn):
        spec = MethodSpec(name, description, default_lr, peft_class, fn, trains, quantize_4bit, tuple(lr_candidates))
        METHODS.register(name)(spec)
        return fn

    return decorator


# Fields of a peft config that medpeft sets itself (from the model kind and the run), never method_args.
SET_BY_MEDPEFT = {"task_type", "peft_type", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "peft_version"}


def validate_method_args(method: str, args: dict) -> None:
    """Fail before training on a method argument its peft config does not have, on a value of the wrong
    type or out of range (see `arg_problem`), and on any combination peft's own config refuses."""
    spec = METHODS[method]
    if not isinstance(args, dict):
        raise ConfigError(f"method_args must be a mapping, got {args!r}")
    if spec.peft_class is None:
        if args:
            raise ConfigError(f"method {method!r} takes no method_args, got {sorted(args)}")
        return
    import peft

    peft_class = getattr(peft, spec.peft_class)
    valid = {f.name for f in dataclasses.fields(peft_class)} - SET_BY_MEDPEFT
    for key in args:
        if key not in valid:
            raise ConfigError(
                f"unknown method_args key {key!r} for {method} ({spec.peft_class}); valid keys: {', '.join(sorted(valid))}"
            )
    hints = typing.get_type_hints(peft_class)
    for key, value in args.items():
        if problem := arg_problem(key, value, hints[key]):
            raise ConfigError(f"method_args.{key} for {method} ({spec.peft_class}) must be {problem}")
    try:  # peft's own checks of how the arguments combine (task type and model are the run's: any will do here)
        spec.build(PEFT_TASK_TYPES[0], dict(args), model_path="<model>", instruction="<instruction>")
    except (ValueError, TypeError) as err:
        raise ConfigError(f"method_args for {method} ({spec.peft_class}): {err}") from None


def arg_problem(key: str, value, hint) -> str | None:
    """What `value` should be, when it does not fit the peft field `key` of type `hint`, else None. From the
    type alone: an int field (r, lora_alpha, num_virtual_tokens, ...) is a size or count, >= 1; ints inside
    a list or a union with one (layers_to_transform, token indices) are indices, >= 0; floats are finite;
    a *dropout is a probability in [0, 1)."""
    size = hint is int or set(typing.get_args(hint)) == {int, type(None)}
    lowest = 1 if size else 0
    got = f"got {value!r}" + (f" ({type(value).__name__})" if isinstance(value, str) else "")
    if isinstance(value, float) and not math.isfinite(value):
        return f"a finite number, {got}"
    if not fits(value, hint, lowest):
        wanted = "an int >= 1 (a size or count)" if size else type_name(hint) + (" (ints >= 0)" if "int" in type_name(hint) else "")
        hint_text = "; YAML reads an exponent without a dot as text: write e.g. 5.0e-2" if isinstance(value, str) and is_number(value) else ""
        return f"{wanted}, {got}{hint_text}"
    if key.endswith("dropout") and isinstance(value, (int, float)) and not 0 <= value < 1:
        return f"a probability in [0, 1), {got}"
    return None


def fits(value, hint, lowest: int) -> bool:
    """Whether `value` (plain YAML data) has the type `hint` (a peft config field's annotation)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a, lowest) for a in args)
    if origin is typing.Literal:  # 'pissa_niter_[number of iters]' stands for pissa_niter_16 and the like
        return any(value == a or (isinstance(a, str) and "[" in a and str(value).startswith(a.split("[")[0])) for a in args)
    if hint in (bool, str, type(None)):
        return type(value) is hint
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= lowest
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a, 0) for v, a in zip(value, args))
        return all(fits(v, args[0], 0) for v in value) if args else True
    if origin is dict or hint is dict:
        key_type, value_type = args or (typing.Any, typing.Any)
        return isinstance(value, dict) and all(fits(k, key_type, 0) and fits(v, value_type, 0) for k, v in value.items())
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in [e.value for e in hint]
    return True  # typing.Any, or a nested settings class (LoftQConfig, EvaConfig ...): peft checks it when the config is built


def type_name(hint) -> str:
    """A peft field's annotation as the error shows it: `list[str] | str | null`, `one of 'none', 'all'`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(e.value) for e in hint)
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_hardware(method: str, precision: str, fused_kernels: bool = False) -> None:
    """Fail before training when this machine cannot run the method, precision or kernels asked for."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if METHODS[method].quantize_4bit:
        if not cuda:
            raise ConfigError(f"method {method!r} quantises the base model to 4 bits with bitsandbytes, which needs a CUDA GPU; "
                              "this machine has none. Use method: lora (the same adapter on a full-precision base).")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"method {method!r} needs the bitsandbytes package: .venv/bin/pip install bitsandbytes")
    check_precision(precision)
    if fused_kernels and not cuda:
        raise ConfigError("train.fused_kernels: Liger's kernels are Triton kernels for CUDA GPUs; this machine has none. "
                          "Remove train.fused_kernels on CPU")
    if fused_kernels and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.fused_kernels needs the liger-kernel package: .venv/bin/pip install liger-kernel")


def check_precision(precision: str, key: str = "train.precision") -> None:
    """Fail before training when `precision` (already resolved from auto) needs a GPU this machine lacks."""
    import torch

    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: fp16 needs a CUDA GPU; on CPU use fp32 (or bf16 where the CPU supports it)")


def build_peft_config(method: str, task_type: str, args: dict, *, model_path: str, instruction: str, new_modules: list[str]):
    """The peft config of `method` for a model of peft `task_type`, or None for full fine-tuning.

    `new_modules`: modules the checkpoint did not have (a new head), to train and save with the adapter."""
    spec = METHODS[method]
    if task_type not in PEFT_TASK_TYPES:
        raise ValueError(f"unknown peft task type {task_type!r}; types: {', '.join(PEFT_TASK_TYPES)}")
    config = spec.build(task_type, dict(args), model_path=model_path, instruction=instruction)
    if config is not None and new_modules:
        # Freshly initialised modules (the classifier head, a missing pooler) must be trained
        # and saved with the adapter, or the adapter reloads with a different random head.
        config.modules_to_save = sorted(set(config.modules_to_save or []) | set(new_modules))
    return config


def output_prefix_tokens(peft_config) -> int:
    """Soft prompts peft puts before the input (prompt tuning, P-tuning) also come first in a token
    classifier's output, while peft passes the token labels through unshifted: they need this many
    -100s in front. Prefix tuning adds keys/values only, not positions."""
    if peft_config is None or not peft_config.is_prompt_learning or peft_config.peft_type.value == "PREFIX_TUNING":
        return 0
    return peft_config.num_virtual_tokens


def encoder_only(task_type: str) -> dict:
    """Soft prompts go before the encoder input only (as in Lester et al.): peft's seq2seq default
    also allocates decoder prompts that never receive a gradient, doubling the reported count."""
    return {"num_transformer_submodules": 1} if task_type == "SEQ_2_SEQ_LM" else {}


@register_method(BASELINE, "no training: the base model as it is (zero-shot generation; majority class for classification)", 0.0, None, trains=False)
def build_untrained(task_type, args, **_):
    return None


@register_method(FULL, "full fine-tuning: every weight is trained and stored", 5e-5, None,
                 lr_candidates=(3e-5, 1e-4, 3e-4))
def build_full(task_type, args, **_):
    return None


@register_method("lora", "LoRA: low-rank updates of the attention projections (r=16, alpha=32)", 3e-4, "LoraConfig",
                 lr_candidates=(3e-4, 1e-3, 3e-3))
def build_lora(task_type, args, **_):
    from peft import LoraConfig

    args = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, **args}
    return LoraConfig(task_type=task_type, **args)


@register_method("qlora", "QLoRA: LoRA (r=16, alpha=32) on a 4-bit NF4-quantised frozen base (needs a CUDA GPU and bitsandbytes)",
                 2e-4, "LoraConfig", quantize_4bit=True, lr_candidates=(3e-4, 1e-3, 3e-3))
def build_qlora(task_type, args, **_):
    return build_lora(task_type, args)


@register_method("dora", "DoRA: LoRA with a learned per-column magnitude (weight-decomposed)", 3e-4, "LoraConfig",
                 lr_candidates=(3e-4, 1e-3, 3e-3))
def build_dora(task_type, args, **_):
    from peft import LoraConfig

    args = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_dora": True, **args}
    return LoraConfig(task_type=task_type, **args)


@register_method("ia3", "IA3: learned rescaling vectors on keys, values and feed-forward activations", 3e-3, "IA3Config",
                 lr_candidates=(1e-3, 3e-3, 1e-2))
def build_ia3(task_type, args, **_):
    from peft import IA3Config

    return IA3Config(task_type=task_type, **args)


@register_method("prompt_tuning", "prompt tuning: 20 trainable soft tokens before the input, initialised from the task instruction", 3e-2, "PromptTuningConfig",
                 lr_candidates=(3e-3, 1e-2, 3e-2))
def build_prompt_tuning(task_type, args, *, model_path, instruction, **_):
    from peft import PromptTuningConfig, PromptTuningInit

    args = {"num_virtual_tokens": 20, **encoder_only(task_type), **args}
    if "prompt_tuning_init" not in args:
        args.update(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=instruction,
            tokenizer_name_or_path=model_path,
        )
    return PromptTuningConfig(task_type=task_type, **args)


@register_method("prefix_tuning", "prefix tuning: trainable key/value prefixes in every attention layer", 1e-2, "PrefixTuningConfig",
                 lr_candidates=(1e-3, 3e-3, 1e-2))
def build_prefix_tuning(task_type, args, **_):
    from peft import PrefixTuningConfig

    args = {"num_virtual_tokens": 20, **args}
    return PrefixTuningConfig(task_type=task_type, **args)


@register_method("p_tuning", "P-tuning: soft tokens produced by a small trainable MLP prompt encoder", 1e-2, "PromptEncoderConfig",
                 lr_candidates=(1e-3, 3e-3, 1e-2))
def build_p_tuning(task_type, args, **_):
    from peft import PromptEncoderConfig

    args = {"num_virtual_tokens": 20, "encoder_hidden_size": 128, **encoder_only(task_type), **args}
    return PromptEncoderConfig(task_type=task_type, **args)
