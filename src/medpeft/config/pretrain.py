"""`medpeft pretrain`'s settings: one domain-adaptive pre-training job (pretrain.py runs it). The CLI's
options, their defaults, choices and help are read from these fields (cli.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from medpeft.config.experiment import Precision, check_seed
from medpeft.config.values import check_types
from medpeft.errors import ConfigError

# The fields `medpeft pretrain` offers as --options (the others come from --model, --out, --for-grid, --set).
PRETRAIN_OPTIONS = ("max_docs", "max_tokens", "epochs", "max_steps", "precision", "lr", "batch_size", "mlm_probability",
                    "seed")


@dataclass
class PretrainConfig:
    """One pre-training job (the CLI's `medpeft pretrain` options)."""

    model: str = field(metadata={"help": "registered model, local directory or hub id (with --online)"})
    out: str = field(metadata={"help": "where the adapted model directory goes"})
    exclude_grids: tuple[str, ...] = field(default=(), metadata={"help": "grids whose validation/test text must stay unseen"})
    exclude_overrides: tuple[str, ...] = field(default=(), metadata={
        "help": "`--set KEY=VALUE` applied to exclude_grids, as `medpeft run --set` does"})
    max_docs: int = field(default=0, metadata={"help": "use at most this many abstracts (0: all that remain once the "
                                                       "evaluation text is held out)"})
    max_tokens: int = field(default=128, metadata={"help": "truncate each abstract to this many tokens"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the abstracts"})
    max_steps: int = field(default=-1, metadata={"help": "optimiser steps; overrides --epochs when > 0"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate: 6 % warm-up, then linear decay"})
    batch_size: int = field(default=16, metadata={"help": "abstracts per optimiser step"})
    mlm_probability: float = field(default=0.15, metadata={"help": "share of tokens masked (masked-LM only)"})
    seed: int = field(default=0, metadata={"help": "seeds the masking, data order and initialisation"})
    precision: Precision = field(default="auto", metadata={
        "help": "as train.precision: auto = bf16 mixed precision on a GPU or CPU that multiplies bf16 natively, else fp32"})

    def __post_init__(self):
        self.exclude_grids, self.exclude_overrides = tuple(self.exclude_grids), tuple(self.exclude_overrides)
        check_types(self, "", key_of=lambda name: "--" + name.replace("_", "-"))
        check_seed(self.seed, "--seed")
        for name, low in (("max_tokens", 1), ("batch_size", 1), ("max_docs", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}{' (0: all)' if low == 0 else ''}, "
                                  f"got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"--mlm-probability must be in (0, 1), got {self.mlm_probability}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("--epochs or --max-steps must be > 0")
        if self.exclude_overrides and not self.exclude_grids:
            raise ConfigError("--set (exclude_overrides) overrides settings of the --for-grid grids (exclude_grids), "
                              "and none is given; pass the grid(s) the adapted model will be evaluated in")
