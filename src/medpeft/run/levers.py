"""The GPU levers of a training run (issue 28): what a CUDA GPU runs faster, each behind a `train.*`
switch so the benchmark can turn them off one at a time (`python -m medpeft.bench --gpu --ablate`).

`choose_levers` is a pure function of (device type, model kind, method, train config): None in the config
means "chosen for the device". On CPU every lever but bf16_base stays off (the CPU path's slices,
cut-to-longest and length-sorted batches are its own levers, run/loss.py).

- pad_to_multiple_of: batches padded to a multiple of 64 tokens, so the kernels see a few shapes, not one
  per batch (on an H200 a plain pipeline padding to 512 ran faster than with dynamic padding);
- packing (opt-in): a decoder-only batch as one row without padding, position ids restarting at each
  example; transformers 5 finds the examples from the position ids (masking_utils.find_packed_sequence_indices)
  and builds a block-diagonal causal mask for sdpa/eager/flex, or passes sequence bounds to flash
  attention. Off unless asked: with sdpa (no flash-attn package offline) the masked attention still runs
  over the whole row, (8 x ~350)^2 scores for a batch of 8 against 8 x 512^2 padded, and length-grouped
  batches padded to 64 waste little. Never for soft prompts or prefixes (peft puts one per row, not per example);
- bf16_base: under bf16 precision the frozen weights of a generative model adapted by LoRA or DoRA are
  held in bf16, half the memory and no cast per matmul; the trained weights stay fp32 (as peft keeps them).
  On by default wherever the precision is bf16: on a GPU, and on a CPU with bf16 instructions, where
  `train.precision: auto` is bf16 too (dist.cpu_has_bf16; `make bench`: SmolLM2 LoRA 260 -> 340 tokens/s
  under bf16 autocast, 363 with the base held in bf16);
- fused_optimizer: AdamW as one fused kernel (transformers' default on torch >= 2.8 already);
- dataloader_workers: batches built in worker processes into pinned memory, copied without blocking;
- host counts (always on CUDA): the collator counts the batch's tokens and finds the labelled positions
  on the CPU, so no training step waits for the GPU to tell the host a number (`.item()`);
- compile: torch.compile, opt-in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CUDA_PAD_MULTIPLE = 64  # tokens; tensor-core tiles and the attention kernels' blocks divide it
CUDA_WORKERS = 2  # batch-building processes: collation of 8 rows takes about a millisecond, two keep ahead
# peft classes whose frozen base may be held in bf16: LoRA and DoRA cast their input to the adapter's dtype and
# back; IA3's vectors and new heads (classification) would meet bf16 activations outside autocast (prediction)
LORA_FAMILY = ("LoraConfig",)
SOFT_PROMPTS = ("PromptTuningConfig", "PrefixTuningConfig", "PromptEncoderConfig")  # one prompt per row: no packing
# keys the collator adds to a batch for the Trainer (never for the model): counted on the CPU
TOKENS = "medpeft_tokens"  # non-pad input tokens of the batch (an int)
LOGITS_FROM_END = "medpeft_logits_from_end"  # padded decoder batch: logits for the last N positions (an int)
LOGIT_POSITIONS = "medpeft_logit_positions"  # packed batch: positions whose next token is labelled (a LongTensor)
HOST_KEYS = (TOKENS, LOGITS_FROM_END, LOGIT_POSITIONS)


@dataclass(frozen=True)
class Levers:
    """The levers one run trains with (see the module's doc)."""

    pad_to_multiple_of: int  # 1: off
    packing: bool
    bf16_base: bool
    fused_optimizer: bool | None  # None: transformers' default optimizer
    dataloader_workers: int
    host_counts: bool
    compile: bool

    def describe(self) -> dict:
        return dict(self.__dict__)


def choose_levers(device_type: str, kind, peft_class: str | None, quantized: bool, train) -> Levers:
    """The levers of a run on `device_type` ("cuda", "cpu", ...) for a model of `kind` (a run/kinds.py
    ModelKind) trained with a method whose peft config class is `peft_class` (None: full fine-tuning), from
    its `train` config (a TrainConfig, precision already resolved): its own settings where given, else
    on for a CUDA GPU where they apply, off elsewhere."""
    cuda = device_type == "cuda"

    def pick(value, default):
        return default if value is None else value

    packable = kind.decoder_only and peft_class not in SOFT_PROMPTS
    frozen_base = peft_class in LORA_FAMILY and not kind.new_head and not quantized and train.precision == "bf16"
    return Levers(
        pad_to_multiple_of=pick(train.pad_to_multiple_of, CUDA_PAD_MULTIPLE if cuda else 1),
        packing=packable and bool(train.packing),
        bf16_base=frozen_base and bool(pick(train.bf16_base, True)),
        fused_optimizer=train.fused_optimizer,
        dataloader_workers=pick(train.dataloader_workers, CUDA_WORKERS if cuda else 0),
        host_counts=cuda,
        compile=bool(train.compile))


def hold_frozen_in_bf16(model) -> int:
    """Cast the frozen floating-point weights of `model` to bf16 in place (the trained ones stay as they
    are); -> how many tensors were cast. Call it before the model moves to the GPU."""
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)
            cast += 1
    return cast  # buffers (rotary frequencies) stay as they are: they are not weights


class BatchCollator:
    """The kind's collator with the levers applied: padded to a multiple of `multiple` tokens (or packed
    into one row), and, with `host_counts` or packing, the batch's token count and labelled positions
    computed here, on the CPU (HOST_KEYS). Not on CPU for a padded batch: run/loss.cpu_slices re-cuts it."""

    def __init__(self, collate, pad_id: int, levers: Levers, labelled_loss: bool, encoder_decoder: bool):
        self.collate, self.pad_id, self.levers = collate, pad_id, levers
        self.labelled_loss, self.encoder_decoder = labelled_loss, encoder_decoder

    def __call__(self, features: list[dict]) -> dict:
        multiple = self.levers.pad_to_multiple_of
        if self.levers.packing and "labels" in features[0]:
            batch, tokens = pack_rows(features, self.pad_id, multiple)
            batch[TOKENS] = tokens  # without a mask the Trainer would count pad-id tokens (often EOS) as padding
            if self.labelled_loss:
                batch[LOGIT_POSITIONS] = labelled_positions(batch["labels"])
            return batch
        batch = self.collate(features)
        if multiple > 1:
            batch = pad_to_multiple(batch, multiple, self.pad_id, self.encoder_decoder)
        if self.levers.host_counts:
            mask = batch.get("attention_mask")
            batch[TOKENS] = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
            if self.labelled_loss and "labels" in batch:
                batch[LOGITS_FROM_END] = logits_from_end(batch["labels"])
        return batch


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions of a one-row batch whose next token is labelled (the positions whose logits the loss needs)."""
    return (labels[0, 1:] != -100).nonzero()[:, 0]


def logits_from_end(labels: torch.Tensor) -> int:
    """How many last positions of a padded batch the loss needs logits for: from the position before the
    earliest labelled token on (run/loss.labelled_positions_loss)."""
    targets = labels[:, 1:]
    labelled = (targets != -100).any(dim=0).nonzero()
    first = int(labelled[0]) if len(labelled) else targets.shape[1] - 1
    return labels.shape[1] - first


def pack_rows(features: list[dict], pad_id: int, multiple: int = 1) -> tuple[dict, int]:
    """Training rows (input_ids, labels) as one row without padding: input_ids and labels concatenated, each
    example's first label -100 (nothing before it in its own example predicts it), position ids from 0 in
    each example; then, to a multiple of `multiple` tokens, a filler example of pad tokens labelled -100.
    -> (batch of (1, length) tensors and use_cache=False, the real tokens)."""
    from transformers import DataCollatorWithFlattening

    batch = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)(
        [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features], return_tensors="pt")
    tokens = batch["input_ids"].shape[1]
    filler = -tokens % multiple
    if filler:
        batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((1, filler), pad_id)], dim=1)
        batch["labels"] = torch.cat([batch["labels"], torch.full((1, filler), -100)], dim=1)
        batch["position_ids"] = torch.cat([batch["position_ids"], torch.arange(filler)[None]], dim=1)
    # transformers looks for packed examples in the position ids only without a key/value cache, which a
    # decoder makes for itself (use_cache defaults to true, in training too): without this, examples attend
    # to the ones before them
    batch["use_cache"] = False
    return batch, tokens


def pad_to_multiple(batch: dict, multiple: int, pad_id: int, encoder_decoder: bool = False) -> dict:
    """A right-padded batch widened with padding to a multiple of `multiple` columns: input ids with
    `pad_id`, token labels with -100, masks and segment ids with 0. Token labels wider than the input
    (a soft prompt's -100s in front) grow by the same columns; an encoder-decoder's labels (the target
    side) are padded to a multiple of their own. Row labels and multi-label vectors stay."""
    width = batch["input_ids"].shape[1]
    extra = -width % multiple
    out = {}
    for key, value in batch.items():
        if not torch.is_tensor(value) or value.dim() != 2:
            out[key] = value
            continue
        if key == "labels" or key.startswith("decoder_"):
            if value.is_floating_point():  # multi-label vectors
                out[key] = value
                continue
            grow = -value.shape[1] % multiple if encoder_decoder else (extra if value.shape[1] >= width else 0)
            fill = -100 if key == "labels" else (pad_id if key == "decoder_input_ids" else 0)
        elif value.shape[1] == width:
            grow, fill = extra, (pad_id if key == "input_ids" else 0)
        else:
            grow, fill = 0, 0
        out[key] = torch.cat([value, value.new_full((value.shape[0], grow), fill)], dim=1) if grow else value
    return out
