"""Fit a model with the transformers Trainer (Seq2SeqTrainer for encoder-decoders): dynamic padding on CPU,
the GPU levers of run/levers.py on CUDA."""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import closing
from pathlib import Path

import torch

from medpeft.config import ExperimentConfig
from medpeft.errors import Preempted
from medpeft.methods import METHODS, output_prefix_tokens
from medpeft.run.checkpoint import CHECKPOINT_EVERY_S, Checkpointer, checkpoint_folder, find_resumable, whole_run_loss
from medpeft.run.levers import HOST_KEYS, TOKENS, BatchCollator, Levers, choose_levers
from medpeft.run.loss import cpu_slices, labelled_positions_loss, needs_checkpointing, rows_per_forward
from medpeft.run.preempt import checkpoint_on_signal, signal_name
from medpeft.run.progress import TrainProgress

NOT_TRAINED = {"train_seconds": 0.0, "train_tokens": 0, "train_loss": None, "val_loss": None, "steps": 0}
log = logging.getLogger("medpeft")
VALIDATIONS_PER_RUN = 4  # validation-loss checks during training when a tuner watches (pruning)


class TimeBudget:
    """Stops training once `seconds` of wall-clock training time have passed (the clinical study's
    time-budget runs): methods compared at equal time, not equal steps. The schedule is the full run's.
    `spent`: seconds an interrupted earlier session of this run already trained."""

    def __init__(self, seconds: float, spent: float = 0.0):
        self.seconds, self.spent, self.start, self.stopped_at = seconds, spent, None, None

    def on_train_begin(self, args, state, control, **_):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **_):
        if self.spent + time.perf_counter() - self.start >= self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at = state.global_step


class ValidationWatch:
    """Hands each mid-training validation loss to `on_validation(step, loss)` (a tuner's pruner)."""

    def __init__(self, on_validation):
        self.on_validation, self.steps = on_validation, set()

    def on_evaluate(self, args, state, control, metrics=None, **_):
        # once per step: the end's validation falls on the last mid-training one's step when the steps divide
        # evenly, and Optuna warned at every such trial ('this step=10 is already reported')
        if metrics and "eval_loss" in metrics and state.global_step not in self.steps:
            self.steps.add(state.global_step)
            self.on_validation(state.global_step, float(metrics["eval_loss"]))


class NanGuard:
    """Fails the run at the first logged loss that is NaN or infinite, rather than after the last step."""

    def __init__(self, lr: float):
        self.lr = lr

    def on_log(self, args, state, control, logs=None, **_):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(nan_message(loss, state.global_step, self.lr))


def nan_message(loss: float, step: int, lr: float | None) -> str:
    return f"training loss is {loss} at step {step}; lower train.lr (now {lr}) or check the data"


HANDLERS = ("on_train_begin", "on_step_end", "on_evaluate", "on_log", "on_save", "on_train_end")


def as_callback(obj):
    """A TrainerCallback that forwards to `obj`'s handlers (keeps transformers out of import time)."""
    from transformers import TrainerCallback

    return type(f"{type(obj).__name__}Callback", (TrainerCallback,), {
        name: getattr(obj, name) for name in HANDLERS if hasattr(obj, name)})()


def run_levers(cfg: ExperimentConfig, kind) -> Levers:
    """The GPU levers (run/levers.py) of a run of `cfg` with a model of `kind` on this process's device."""
    from medpeft.dist import local_device

    spec = METHODS[cfg.method]
    return choose_levers(local_device().type, kind, spec.peft_class, spec.quantize_4bit, cfg.train)


def lever_arguments(levers: Levers) -> dict:
    """TrainingArguments of the levers the Trainer itself applies."""
    workers = levers.dataloader_workers
    args = {"dataloader_num_workers": workers, "dataloader_persistent_workers": workers > 0, "torch_compile": levers.compile}
    if workers:  # pinned batches (the Trainer pins by default) copied to the GPU without blocking
        args["accelerator_config"] = {"non_blocking": True}
    if levers.fused_optimizer is not None:
        args["optim"] = "adamw_torch_fused" if levers.fused_optimizer else "adamw_torch"
    return args


def training_arguments(kind, cfg: ExperimentConfig, n_train: int, output_dir: Path, watch: bool = False,
                       checkpointing: bool = False, levers: Levers | None = None):
    """TrainingArguments from the run's train settings; logging about 5 times per run; with `watch`, a
    validation loss VALIDATIONS_PER_RUN times per run. Checkpoints go to `output_dir` when the
    Checkpointer callback asks (save_strategy stays "no"), and it alone removes old ones."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    t = cfg.train
    steps_per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum))
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    args_cls = Seq2SeqTrainingArguments if kind.seq2seq_trainer else TrainingArguments
    evaluation = {"eval_strategy": "steps", "eval_steps": max(1, total_steps // VALIDATIONS_PER_RUN)} if watch else {}
    return args_cls(
        **evaluation, **lever_arguments(levers or run_levers(cfg, kind)),
        output_dir=str(output_dir), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr, num_train_epochs=t.epochs, max_steps=t.max_steps, weight_decay=t.weight_decay,
        warmup_steps=t.warmup, lr_scheduler_type=t.scheduler, seed=cfg.seed, data_seed=cfg.seed,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", use_cpu=not torch.cuda.is_available(),
        use_liger_kernel=bool(t.fused_kernels),
        train_sampling_strategy="group_by_length", include_num_input_tokens_seen="non_padding",
        logging_steps=max(1, total_steps // 5), save_strategy="no", report_to="none", logging_nan_inf_filter=False,
        remove_unused_columns=False, disable_tqdm=True,
        prediction_loss_only=True,
        **recomputation_arguments(args_cls, t.gradient_checkpointing or checkpointing),
    )


def recomputation_arguments(args_cls, on: bool) -> dict:
    """Activation recomputation under the name this transformers takes: `activation_checkpointing` where it
    exists (its `gradient_checkpointing` alias warns, and goes in v6), else `gradient_checkpointing`.
    Non-reentrant: it works with a frozen embedding (peft)."""
    import dataclasses

    name = next((n for n in ("activation_checkpointing", "gradient_checkpointing")
                 if n in {f.name for f in dataclasses.fields(args_cls)}))
    return {name: on, f"{name}_kwargs": {"use_reentrant": False}}


def train_model(model, tokenizer, kind, cfg: ExperimentConfig, train_rows, val_rows, run_dir: Path,
                on_validation=None, callbacks=()) -> dict:
    """Train on `train_rows`, resuming from the run's last complete checkpoint if an earlier session left
    one; the validation loss at the end; seconds, tokens seen, losses and steps over the whole run.
    `on_validation(step, loss)`, when given, is called at each mid-training validation (it may raise to
    stop); `callbacks` are extra TrainerCallbacks (a tracker's). A stop signal ends it with `Preempted`."""
    resume = find_resumable(run_dir)
    resumed_from, spent = (resume[1]["step"], resume[1]["train_seconds"]) if resume else (0, 0.0)
    budget = TimeBudget(cfg.train.time_budget_s, spent) if cfg.train.time_budget_s else None
    shown = TrainProgress(run_dir)  # the run's bar and its train.log (run/progress.py)
    with checkpoint_on_signal() as stop, closing(shown):
        saver = Checkpointer(checkpoint_folder(run_dir), cfg.train.checkpoint_steps, CHECKPOINT_EVERY_S, spent, stop)
        trainer = build_trainer(model, tokenizer, kind, cfg, train_rows, val_rows, checkpoint_folder(run_dir),
                                [budget, saver, NanGuard(cfg.train.lr), shown], on_validation, callbacks)
        start = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    if saver.preempted_at is not None:
        raise Preempted(f"stopped by {signal_name(stop.signum)} in training: checkpoint at step {saver.preempted_at} in "
                        f"{checkpoint_folder(run_dir)}; run the same command again to resume from it", stop.signum)
    seconds, steps = spent + time.perf_counter() - start, int(trainer.state.global_step)
    loss = whole_run_loss(trainer.state.log_history, resumed_from, output.training_loss, steps) if resume else output.training_loss
    if not math.isfinite(loss):
        raise FloatingPointError(nan_message(loss, steps, cfg.train.lr))
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None
    # Mixed precision wrapped the model's forward in autocast for good (accelerate's prepare_model): without
    # it again, the run evaluates as the saved adapter predicts when loaded (`medpeft predict`, plain peft)
    trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    done = {"train_seconds": seconds, "train_tokens": int(trainer.state.num_input_tokens_seen),
            "train_loss": float(loss), "val_loss": val_loss, "steps": steps, "planned_steps": int(trainer.state.max_steps),
            "resumed_from_step": resumed_from, "gradient_checkpointing": trainer.args.gradient_checkpointing,
            "levers": run_levers(cfg, kind).describe()}  # what ran, so a GPU figure can be traced to its levers
    if budget is not None:
        done["time_budget_s"], done["stopped_by_time_budget"] = budget.seconds, budget.stopped_at is not None
    return done


def build_trainer(model, tokenizer, kind, cfg: ExperimentConfig, train_rows, val_rows, output_dir: Path,
                  handlers: list, on_validation, callbacks):
    """The Trainer (Seq2SeqTrainer for encoder-decoders) with medpeft's handlers as callbacks, the kind's
    own loss and CPU micro-batches (run/loss.py), and gradient checkpointing if it would not fit without."""
    from datasets import Dataset
    from transformers import PrinterCallback, Seq2SeqTrainer, Trainer

    watch = on_validation is not None and bool(val_rows)
    levers = run_levers(cfg, kind)
    if levers.dataloader_workers:  # forked workers: the tokenizers library would warn, then turn its threads off itself
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = training_arguments(kind, cfg, len(train_rows), output_dir, watch, auto_checkpointing(model, kind, cfg, train_rows), levers)
    handlers = handlers + ([ValidationWatch(on_validation)] if watch else [])
    # Liger's fused linear cross-entropy takes the labels into the model and never builds the logits: it does
    # what the labelled-position loss does, and fails when that loss keeps the labels from it
    loss = None if cfg.train.fused_kernels else kind.loss
    collator = BatchCollator(kind.collator(tokenizer, output_prefix_tokens(getattr(model, "peft_config", {}).get("default"))),
                             tokenizer.pad_token_id, levers, loss is labelled_positions_loss, kind.seq2seq_trainer)
    trainer_cls = trainer_class(Seq2SeqTrainer if kind.seq2seq_trainer else Trainer, loss, kind.seq2seq_trainer)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                          eval_dataset=Dataset.from_list(val_rows) if val_rows else None, data_collator=collator,
                          processing_class=tokenizer, callbacks=[as_callback(h) for h in handlers if h] + list(callbacks))
    trainer.model_accepts_loss_kwargs = kind.loss_kwargs
    trainer.remove_callback(PrinterCallback)  # its raw log dicts: TrainProgress shows and files them instead
    return trainer


def trainer_class(base, loss=None, encoder_decoder: bool = False):
    """`base` (Trainer or Seq2SeqTrainer) computing the loss with `loss` (model, inputs, num_items_in_batch)
    -> (loss, outputs) when given (a model kind's own, or pre-training's), else the model's, and running
    each batch on CPU in slices of rows of similar length (run/loss.cpu_slices) whose weighted losses add
    up to the batch's."""

    class MedpeftTrainer(base):
        slice_weight = 1.0  # the running slice's share of the batch's labelled items (1: the whole batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # the collator's host counts are for the Trainer and a kind's own loss, never for the model
            inputs = {k: v for k, v in inputs.items() if k != TOKENS and (loss is not None or k not in HOST_KEYS)}
            if loss is None:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            else:
                value, outputs = loss(model, inputs, num_items_in_batch)
                result = (value, outputs) if return_outputs else value
            if self.slice_weight == 1.0:
                return result
            return (result[0] * self.slice_weight, result[1]) if return_outputs else result * self.slice_weight

        def _track_num_input_tokens(self, inputs):
            # the collator counted the batch's tokens on the CPU: no .item() that makes the host wait each step
            if TOKENS in inputs and self.args.world_size == 1 and self.args.include_num_input_tokens_seen != "no":
                self.state.num_input_tokens_seen += inputs[TOKENS]
            else:
                super()._track_num_input_tokens(inputs)

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededSampler(sampler, seed) if hasattr(sampler, "generator") else sampler

        def training_step(self, model, inputs, num_items_in_batch=None):
            # a GPU keeps the batch whole (faster there); under DDP every backward synchronises
            on_cpu = self.args.world_size == 1 and torch.device(self.args.device).type == "cpu"
            slices = cpu_slices(inputs, model.config, encoder_decoder) if on_cpu else [(inputs, 1.0)]
            if len(slices) == 1:
                return super().training_step(model, slices[0][0], num_items_in_batch)
            summed = self.model_accepts_loss_kwargs and num_items_in_batch is not None  # each slice already / all items
            total = 0.0
            try:
                for part, weight in slices:
                    self.slice_weight = 1.0 if summed else weight
                    total = total + super().training_step(model, part, num_items_in_batch)
            finally:
                self.slice_weight = 1.0
            return total

    return MedpeftTrainer


class EpochSeededSampler(torch.utils.data.Sampler):
    """The Trainer's sampler (length-grouped or random), its order in each epoch drawn from the run's seed
    and the epoch alone. Left to itself it draws from the global random state as the epoch begins, which a
    run resumed from a checkpoint in a later epoch cannot reproduce (the Trainer restores that state only
    after fast-forwarding the data): it trained on another order than the uninterrupted run."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer (through accelerate) calls it at every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.sampler.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(self.sampler)


def auto_checkpointing(model, kind, cfg: ExperimentConfig, train_rows) -> bool:
    """Gradient checkpointing turned on when one forward of the longest training batch would not fit in
    free memory (run/loss.needs_checkpointing); said in the log. Off when the config already asks for it."""
    from medpeft.dist import local_device

    if cfg.train.gradient_checkpointing or not train_rows or not hasattr(model, "config"):
        return False
    longest = max(padded_tokens(kind, r["input_ids"], r["labels"]) for r in train_rows)
    device = local_device()
    tokens = rows_per_forward(cfg.train.batch_size, longest, device, model.config) * longest
    needed, estimate, free = needs_checkpointing(model, tokens, device, 4 if cfg.train.precision == "fp32" else 2)
    if needed:
        log.warning(f"gradient checkpointing turned on: one forward of {tokens} tokens needs about {estimate / 2**30:.1f} GiB "
                    f"of activations, {free / 2**30:.1f} GiB are free (about 30 % slower; lower train.batch_size or "
                    f"data.max_source_tokens to train without it)")
    return needed


def padded_tokens(kind, input_ids, labels) -> int:
    """Tokens one row (a list, or a padded batch tensor) runs through the model: its input, plus its
    labels for an encoder-decoder, whose decoder runs over them."""
    length = input_ids.shape[-1] if torch.is_tensor(input_ids) else len(input_ids)
    if not kind.seq2seq_trainer:
        return length
    return length + (labels.shape[-1] if torch.is_tensor(labels) else len(labels))
