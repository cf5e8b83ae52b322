"""How a training batch becomes a loss, cheaply: logits only where there are labels, micro-batches
on CPU, gradient checkpointing when the activations would not fit. Each leaves the loss as it was
(tests/run/test_loss.py: within 1e-4 of the plain path, the same predictions after training).

- `labelled_positions_loss` (decoder-only models): the language-model head runs only over the
  positions from the token before the earliest summary token to the end (`logits_to_keep`), not over
  the prompt. For SmolLM2 (a 49,152-word head) on a 320-token source with a 100-token summary, the
  full logits were a fifth of the training FLOPs and, with their gradient, the largest activation.
- `cpu_slices`: on CPU a batch runs forward and backward in slices of rows, their gradients summed:
  the same step, the same data order. The rows are sorted by length and each slice is cut to its own
  longest row, so short rows stop paying for the batch's longest one (`plan_slices` weighs the padding
  saved against a forward's fixed cost); and no slice's estimated activations exceed SLICE_BYTES. For
  SmolLM2 at batch 8 x 440 tokens: 2.5 instead of 9.2 GiB peak RSS at the same speed (measured on 2
  cores: 171, 175 and 173 tokens/s at 8, 4 and 2 rows a slice). A GPU keeps the whole batch: there
  it is faster.
- `needs_checkpointing`: gradient checkpointing (about 30 % slower) turns itself on when the
  estimated memory of one forward would not fit in what is free.
"""
from __future__ import annotations

import functools
import inspect

import torch

from medpeft.models import model_sizes
from medpeft.run.levers import LOGIT_POSITIONS, LOGITS_FROM_END

SLICE_BYTES = 3 * 2**29  # CPU: estimated activations one forward/backward may hold (1.5 GiB; SmolLM2: ~1100 tokens)
# CPU: a forward/backward's fixed cost in tokens' worth of compute, where a slice is cut off only if it
# saves more padding than this. Measured with LoRA on 1 thread: MiniLM-L6 46 ms + 1.14 ms/token (~40),
# SmolLM2 ~22; on 2 threads the per-token cost halves. The bench's classification ran at 1,120-1,480
# tokens/s for 32 to 160 alike (against 660-725 without slicing), so the choice is not sharp.
SLICE_OVERHEAD_TOKENS = 64
DECODER_KEYS = ("labels", "decoder_input_ids", "decoder_attention_mask")  # an encoder-decoder's target side
FITS_SHARE = 0.8  # of the free memory, what one training step may take before checkpointing turns on
ACTIVATION_FLOATS = (10, 4)  # saved activations per token and layer: ~10 x hidden + 4 x intermediate floats


def accepts_logits_to_keep(model) -> bool:
    """Whether the (base) model's forward computes logits for the last N positions only (transformers >= 4.50)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return forward_takes_logits_to_keep(type(base))


@functools.lru_cache(maxsize=None)
def forward_takes_logits_to_keep(model_class) -> bool:
    """Read once per model class, not at every training step."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None):
    """Next-token cross-entropy of a decoder-only model, with logits computed only from the position
    before the earliest labelled token to the end; -> (loss, outputs).

    The same value as transformers' causal-LM loss over all logits (fp32 logits, labels shifted by one,
    -100 ignored; the sum over `num_items_in_batch` labelled tokens when given, else the mean). Right
    padding, position ids and soft prompts (which peft puts first) are untouched. On a GPU the collator
    has already found, on the CPU, where the logits are needed (run/levers.py: LOGITS_FROM_END for a
    padded batch, LOGIT_POSITIONS for a packed one), so no step waits for the GPU to say it."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    positions, keep = inputs.pop(LOGIT_POSITIONS, None), inputs.pop(LOGITS_FROM_END, None)
    if positions is not None:
        return packed_positions_loss(model, inputs, labels, positions, num_items_in_batch)
    targets = labels[:, 1:]  # the token each position predicts
    if keep is None:
        labelled = (targets != -100).any(dim=0).nonzero()
        keep = labels.shape[1] - (int(labelled[0]) if len(labelled) else targets.shape[1] - 1)
    first = labels.shape[1] - keep  # positions first .. L-1; the last one predicts nothing
    outputs = model(**inputs, **({"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}))
    logits = outputs.logits[:, -keep:][:, :-1].float()
    return summed_cross_entropy(logits, targets[:, first:], num_items_in_batch), outputs


def packed_positions_loss(model, inputs: dict, labels, positions, num_items_in_batch=None):
    """The loss of a packed one-row batch (run/levers.pack_rows): logits only at `positions`, the
    positions whose next token is labelled."""
    positions = positions.to(labels.device)
    if accepts_logits_to_keep(model):
        outputs = model(**inputs, logits_to_keep=positions)
        logits = outputs.logits[0].float()
    else:
        outputs = model(**inputs)
        logits = outputs.logits[0, positions].float()
    return summed_cross_entropy(logits, labels[0, positions + 1], num_items_in_batch), outputs


def summed_cross_entropy(logits, targets, num_items_in_batch=None):
    """Cross-entropy summed over the labelled targets, divided by `num_items_in_batch` (else their count)."""
    targets = targets.to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                             reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    return loss / count


# Masked-LM families whose head takes the encoder's last hidden state alone, position by position (read
# from their ForMaskedLM forward in transformers 5); any other model runs its own forward.
HEAD_ON_HIDDEN_STATES = ("bert", "roberta", "xlm-roberta", "camembert", "albert", "mobilebert", "esm")


def masked_positions_loss(model, inputs: dict, num_items_in_batch=None):
    """Masked-LM cross-entropy with the prediction head run only over the masked positions (labels other
    than -100); -> (loss, outputs). The same value as the model's own loss over all positions: a plain
    mean over the batch's masked tokens (`num_items_in_batch` is not used: masked-LM heads average, and
    pre-training tells the Trainer so). Only for HEAD_ON_HIDDEN_STATES models the Trainer has not wrapped
    (DataParallel, DDP: their forward must run); any other runs its own forward."""
    from transformers.modeling_outputs import MaskedLMOutput

    head = masked_lm_head(model)
    if head is None:
        outputs = model(**inputs)
        return outputs.loss, outputs
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    hidden = model.base_model(**inputs).last_hidden_state
    chosen = labels != -100
    logits = head(hidden[chosen]).float()
    loss = torch.nn.functional.cross_entropy(logits, labels[chosen].to(logits.device))
    return loss, MaskedLMOutput(loss=loss)


def masked_lm_head(model):
    """The prediction head of a HEAD_ON_HIDDEN_STATES model (its one module beside the base model), or None."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or model.config.model_type not in HEAD_ON_HIDDEN_STATES:
        return None
    heads = [module for module in model.children() if module is not model.base_model]
    return heads[0] if len(heads) == 1 else None


def rows_per_forward(rows: int, tokens_per_row: int, device, config) -> int:
    """Rows of a batch of `rows` rows, each `tokens_per_row` padded tokens (encoder + decoder), one
    forward/backward takes: all of them on an accelerator, on CPU as many as keep the estimated
    activations (`activation_bytes` of the model's `config`) within SLICE_BYTES (at least one)."""
    if torch.device(device).type != "cpu":
        return rows
    return max(1, min(rows, SLICE_BYTES // max(activation_bytes(config, tokens_per_row), 1)))


def cpu_slices(inputs: dict, config, encoder_decoder: bool = False) -> list[tuple[dict, float]]:
    """A padded training batch as slices of rows, each with its share of the batch's labelled items (the
    weight of a slice's mean loss in the batch's mean loss: a token mean for token labels, a row mean for
    one label or label vector per row). Rows are sorted by length and every slice is cut to its longest
    row (right padding only: a left-padded batch is sliced by rows, not cut). The whole batch, untouched,
    when one slice is cheapest. A slice with nothing labelled is left out: it adds nothing to the loss,
    and a mean over no items would be 0/0 (a row whose text tokenizes to nothing but special tokens)."""
    n = len(inputs["input_ids"])
    width, enc = input_lengths(inputs)
    labels = inputs.get("labels")
    encoder_decoder = encoder_decoder and labels is not None  # no target side to cut without labels
    dec = label_lengths(labels) if encoder_decoder else [0] * n
    per_token = activation_bytes(config, 1)
    cap = SLICE_BYTES // per_token if per_token else None
    groups = plan_slices(enc, dec, cap)
    if len(groups) == 1 and max(enc) == width and (not encoder_decoder or max(dec) == labels.shape[1]):
        return [(inputs, 1.0)]
    total = int((labels != -100).sum()) if labels is not None else n
    slices = []
    for rows in groups:
        index = torch.tensor(rows)
        part = {k: v[index] if torch.is_tensor(v) and v.dim() and len(v) == n else v for k, v in inputs.items()}
        part = cut_padding(part, width - max(enc[i] for i in rows), max(dec[i] for i in rows), encoder_decoder)
        items = int((part["labels"] != -100).sum()) if labels is not None else len(rows)
        if items or not total:
            slices.append((part, items / max(total, 1)))
    return slices


def input_lengths(inputs: dict) -> tuple[int, list[int]]:
    """The batch's padded width and each row's length up to its last attended token; every row counts
    as the full width unless the batch is right-padded."""
    ids = inputs["input_ids"]
    width = ids.shape[-1]
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return width, [width] * len(ids)
    lengths = mask.ne(0).sum(dim=1)
    if not torch.equal(mask.ne(0), torch.arange(width) < lengths[:, None]):  # not right padding: keep every column
        return width, [width] * len(ids)
    return width, [max(int(x), 1) for x in lengths]


def label_lengths(labels) -> list[int]:
    """Each row's decoder length: up to its last labelled position (-100 is padding)."""
    labelled = labels.ne(-100)
    last = torch.where(labelled, torch.arange(labels.shape[1]) + 1, 0).max(dim=1).values
    return [max(int(x), 1) for x in last]


def plan_slices(enc: list[int], dec: list[int], cap: int | None) -> list[list[int]]:
    """Rows (by index) grouped into slices of rows of similar length: the grouping of the rows sorted by
    length that runs the fewest padded tokens plus SLICE_OVERHEAD_TOKENS per slice, no slice above
    `cap` padded tokens (None: no cap) unless it is one row."""
    order = sorted(range(len(enc)), key=lambda i: (enc[i] + dec[i], i))
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest_enc = longest_dec = 0
        for start in range(end - 1, -1, -1):  # the slice order[start:end]
            longest_enc, longest_dec = max(longest_enc, enc[order[start]]), max(longest_dec, dec[order[start]])
            tokens = (end - start) * (longest_enc + longest_dec)
            if cap is not None and tokens > cap and end - start > 1:
                break
            if best[start] + tokens + SLICE_OVERHEAD_TOKENS <= best[end]:  # a tie: the fewer slices
                best[end], cut[end] = best[start] + tokens + SLICE_OVERHEAD_TOKENS, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def cut_padding(part: dict, drop: int, dec_width: int, encoder_decoder: bool) -> dict:
    """A slice without the `drop` last input columns no row of it attends to: every per-token tensor
    loses them (token labels too, which may carry a soft prompt's -100s in front); an encoder-decoder's
    target side is cut to `dec_width`. A row label or a multi-label vector (not token ids) stays."""
    width = part["input_ids"].shape[-1]
    cut = {}
    for key, value in part.items():
        if not torch.is_tensor(value) or value.dim() != 2:
            cut[key] = value
        elif encoder_decoder and key in DECODER_KEYS:
            cut[key] = value[:, :dec_width]
        elif key == "labels":  # token labels: ids, one per position (and soft-prompt position); multi-label: floats
            token_labels = not value.is_floating_point() and value.shape[1] >= width
            cut[key] = value[:, : value.shape[1] - drop] if token_labels else value
        else:
            cut[key] = value[:, : width - drop] if value.shape[1] == width else value
    # a column cut is a strided view; models' losses call .view() on labels (BERT's token classification)
    return {k: v.contiguous() if torch.is_tensor(v) else v for k, v in cut.items()}


def activation_bytes(config, tokens: int, bytes_per_float: int = 4) -> int:
    """Estimated activations a training forward saves for backward: per token and layer, about 10 x
    hidden + 4 x intermediate floats (measured on SmolLM2: 12.8k floats/token/layer, estimate 11.9k)."""
    sizes = model_sizes(config)
    per_token = (ACTIVATION_FLOATS[0] * sizes.hidden + ACTIVATION_FLOATS[1] * sizes.intermediate) * (
        sizes.layers + sizes.decoder_layers)
    return int(per_token * tokens * bytes_per_float)


def free_bytes(device) -> int:
    """Memory free for training on `device`: the GPU's free memory, or the machine's available RAM."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def needs_checkpointing(model, tokens_per_forward: int, device, bytes_per_float: int = 4) -> tuple[bool, int, int]:
    """Whether one forward's estimated activations exceed FITS_SHARE of the free memory (the weights are
    already loaded and counted as used); -> (needed, estimate, free)."""
    estimate, free = activation_bytes(model.config, tokens_per_forward, bytes_per_float), free_bytes(device)
    return estimate > FITS_SHARE * free, estimate, free
