"""The GPU levers (run/levers.py): which ones a run gets on which device, and that each leaves the loss
as it was. Packing and pad-to-64 are checked on CPU against an independent per-example computation."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from medpeft.config import TrainConfig, config_from_dict
from medpeft.run import levers as levers_mod
from medpeft.run.kinds import KINDS
from medpeft.run.levers import (LOGIT_POSITIONS, LOGITS_FROM_END, TOKENS, BatchCollator, Levers, choose_levers,
                                pack_rows, pad_to_multiple)
from medpeft.run.loss import labelled_positions_loss

from conftest import TINY_DATA
from helpers import run_config
from medpeft.run.encode import encode_examples

from test_methods import EXAMPLES, HEAD_DATA, INSTRUCTION, build, make_batch

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OFF = Levers(pad_to_multiple_of=1, packing=False, bf16_base=False, fused_optimizer=None, dataloader_workers=0,
             host_counts=False, compile=False)


def bf16(**train) -> TrainConfig:
    return TrainConfig(precision="bf16", **train)


# --- which levers, where ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("method", [("LoraConfig", False), (None, False), ("PromptTuningConfig", False), ("LoraConfig", True)])
def test_on_cpu_every_lever_but_the_bf16_base_stays_off(kind, method):
    """The CPU path keeps its own levers (run/loss.py); under bf16 (auto on a CPU with bf16 instructions) a
    LoRA-family generative model holds its frozen base in bf16 there too, unless told not to."""
    assert choose_levers("cpu", KINDS[kind], *method, TrainConfig(precision="fp32")) == OFF
    base = method == ("LoraConfig", False) and not KINDS[kind].new_head
    assert choose_levers("cpu", KINDS[kind], *method, bf16()) == dataclasses.replace(OFF, bf16_base=base)
    assert choose_levers("cpu", KINDS[kind], *method, bf16(bf16_base=False)) == OFF


def test_on_cuda_a_decoder_with_lora_gets_every_lever():
    assert choose_levers("cuda", KINDS["causal"], "LoraConfig", False, bf16()) == Levers(
        pad_to_multiple_of=64, packing=False, bf16_base=True, fused_optimizer=None, dataloader_workers=2, host_counts=True,
        compile=False)  # packing is opt-in (run/levers.py says why)


@pytest.mark.parametrize("kind, peft_class, quantized, precision, packing, bf16_base", [
    ("causal", None, False, "bf16", True, False),  # full fine-tuning keeps fp32 weights under autocast
    ("causal", "LoraConfig", True, "bf16", True, False),  # QLoRA: a 4-bit base already
    ("causal", "LoraConfig", False, "fp32", True, False),  # fp32 asked for: the base stays fp32
    ("causal", "IA3Config", False, "bf16", True, False),  # packing asked for: where it can be
    ("causal", "PromptTuningConfig", False, "bf16", False, False),  # one soft prompt per row, not per example
    ("causal", "PrefixTuningConfig", False, "bf16", False, False),
    ("seq2seq", "LoraConfig", False, "bf16", False, True),  # encoder-decoders are not packed
    ("seq_cls", "LoraConfig", False, "bf16", False, False),  # a new fp32 head would meet bf16 outside autocast
    ("token_cls", "LoraConfig", False, "bf16", False, False),
])
def test_on_cuda_levers_apply_where_they_can(kind, peft_class, quantized, precision, packing, bf16_base):
    chosen = choose_levers("cuda", KINDS[kind], peft_class, quantized, TrainConfig(precision=precision, packing=True))
    assert (chosen.packing, chosen.bf16_base, chosen.pad_to_multiple_of, chosen.host_counts) == (packing, bf16_base, 64, True)


def test_the_config_turns_each_lever_off_or_on():
    off = bf16(pad_to_multiple_of=1, packing=False, bf16_base=False, fused_optimizer=False, dataloader_workers=0)
    assert choose_levers("cuda", KINDS["causal"], "LoraConfig", False, off) == dataclasses.replace(
        OFF, fused_optimizer=False, host_counts=True)
    on = bf16(pad_to_multiple_of=8, packing=True, bf16_base=True, fused_optimizer=True, dataloader_workers=3, compile=True)
    assert choose_levers("cpu", KINDS["causal"], "LoraConfig", False, on) == Levers(8, True, True, True, 3, False, True)
    assert not choose_levers("cpu", KINDS["causal"], "PromptTuningConfig", False, on).packing  # never where it would be wrong


# --- shapes -----------------------------------------------------------------------------------


def test_pad_to_multiple_widens_with_the_right_fill():
    batch = {"input_ids": torch.ones(2, 70, dtype=torch.long), "attention_mask": torch.ones(2, 70, dtype=torch.long),
             "labels": torch.ones(2, 70, dtype=torch.long), "token_type_ids": torch.ones(2, 70, dtype=torch.long)}
    out = pad_to_multiple(batch, 64, pad_id=7)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 128) for k in batch}
    assert (out["input_ids"][:, 70:] == 7).all() and (out["labels"][:, 70:] == -100).all()
    assert (out["attention_mask"][:, 70:] == 0).all() and (out["token_type_ids"][:, 70:] == 0).all()
    assert all(torch.equal(out[k][:, :70], batch[k]) for k in batch)
    assert pad_to_multiple(out, 64, 7)["input_ids"].shape == (2, 128)  # already a multiple: unchanged


def test_pad_to_multiple_keeps_row_labels_and_follows_soft_prompt_and_target_widths():
    ids = torch.ones(3, 10, dtype=torch.long)
    assert pad_to_multiple({"input_ids": ids, "labels": torch.tensor([0, 1, 2])}, 16, 0)["labels"].shape == (3,)
    multi = torch.zeros(3, 5)
    assert pad_to_multiple({"input_ids": ids, "labels": multi}, 16, 0)["labels"] is multi
    prefixed = pad_to_multiple({"input_ids": ids, "labels": torch.zeros(3, 30, dtype=torch.long)}, 16, 0)  # 20 soft tokens
    assert prefixed["input_ids"].shape == (3, 16) and prefixed["labels"].shape == (3, 36)
    seq2seq = pad_to_multiple({"input_ids": ids, "labels": torch.zeros(3, 5, dtype=torch.long)}, 16, 0, encoder_decoder=True)
    assert seq2seq["input_ids"].shape == (3, 16) and seq2seq["labels"].shape == (3, 16)
    assert (seq2seq["labels"][:, 5:] == -100).all()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_on_cpu_the_collator_hands_on_the_kinds_batch_untouched(kind, assets_ready):
    """The CPU path (every lever off) gets exactly the batch it got before the levers: `make bench` is unchanged."""
    _, tokenizer, _ = build("lora", kind)
    rows, _ = encode_examples(HEAD_DATA[kind][1] if kind in HEAD_DATA else EXAMPLES, tokenizer, KINDS[kind], INSTRUCTION,
                              type("Data", (), TINY_DATA)(), HEAD_DATA.get(kind, (None,))[0])
    before = KINDS[kind].collator(tokenizer, 0)(rows)
    after = BatchCollator(KINDS[kind].collator(tokenizer, 0), tokenizer.pad_token_id, OFF, kind == "causal",
                          KINDS[kind].seq2seq_trainer)(rows)
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_collated_batches_of_every_kind_come_out_in_multiples_of_64(kind, assets_ready):
    model, tokenizer, config = build("lora", kind)
    plain = make_batch(tokenizer, kind, config)
    levers = dataclasses.replace(OFF, pad_to_multiple_of=64, host_counts=True)
    rows, _ = encode_examples(HEAD_DATA[kind][1] if kind in HEAD_DATA else EXAMPLES, tokenizer, KINDS[kind], INSTRUCTION,
                              type("Data", (), TINY_DATA)(), HEAD_DATA.get(kind, (None,))[0])
    batch = BatchCollator(KINDS[kind].collator(tokenizer, 0), tokenizer.pad_token_id, levers, kind == "causal",
                          KINDS[kind].seq2seq_trainer)(rows)
    assert batch["input_ids"].shape[1] % 64 == 0 and batch[TOKENS] == int(plain["attention_mask"].sum())
    model.eval()
    inputs = {k: v for k, v in batch.items() if k not in levers_mod.HOST_KEYS}
    if kind == "causal":  # the padded batch gives the unpadded batch's loss
        padded_loss, _ = labelled_positions_loss(model, dict(inputs, **{LOGITS_FROM_END: batch[LOGITS_FROM_END]}))
        assert padded_loss.item() == pytest.approx(labelled_positions_loss(model, plain)[0].item(), abs=1e-5)
    else:
        assert model(**inputs).loss.item() == pytest.approx(model(**plain).loss.item(), abs=1e-5)


# --- packing ----------------------------------------------------------------------------------


def causal_rows(tokenizer):
    data = type("Data", (), dict(TINY_DATA, max_source_tokens=48, max_target_tokens=16))()
    examples = EXAMPLES + [{"id": "d", "text": "A much longer source text about trials. " * 6, "target": "Longer summary here."}]
    rows, _ = encode_examples(examples, tokenizer, KINDS["causal"], INSTRUCTION, data)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # rows of different lengths: padding to pack away
    return rows


def per_example_loss(model, rows) -> float:
    """Independent of both collators: each example alone, unpadded, summed cross-entropy over its labelled
    next tokens, divided by the labelled tokens of all examples."""
    total, count = 0.0, 0
    for row in rows:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
        logits = model(input_ids=ids).logits[0, :-1].double()
        targets = labels[1:]
        chosen = targets != -100
        total += float(torch.nn.functional.cross_entropy(logits[chosen], targets[chosen], reduction="sum"))
        count += int(chosen.sum())
    return total / count


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_packed_batch_has_the_padded_batchs_loss_and_gradients(method, assets_ready):
    """The packed row (positions restarting per example, a filler example to 64 tokens) gives, with the
    labelled-position loss, the loss of the padded batch and of each example alone, and the same gradients."""
    model, tokenizer, _ = build(method, "causal")
    model.eval()  # no dropout
    rows = causal_rows(tokenizer)
    padded = KINDS["causal"].collator(tokenizer, 0)(rows)
    packed, tokens = pack_rows(rows, tokenizer.pad_token_id, 64)
    assert packed["input_ids"].shape == (1, 64 * -(-tokens // 64)) and "attention_mask" not in packed
    assert tokens == int(padded["attention_mask"].sum()) == sum(len(r["input_ids"]) for r in rows)
    n_items = torch.tensor(int((padded["labels"][:, 1:] != -100).sum()))
    packed[LOGIT_POSITIONS] = levers_mod.labelled_positions(packed["labels"])
    assert len(packed[LOGIT_POSITIONS]) == int(n_items)  # logits only where a label follows
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        value, _ = labelled_positions_loss(model, batch, num_items_in_batch=n_items)
        value.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert value.item() == pytest.approx(per_example_loss(model, rows), abs=1e-5)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


def test_a_packed_batch_with_the_models_own_loss(assets_ready):
    """Without the labelled-position loss (train.fused_kernels hands the labels to the model) the packed
    row's own causal-LM loss is the same: no example predicts across its boundary."""
    model, tokenizer, _ = build("lora", "causal")
    model.eval()
    rows = causal_rows(tokenizer)
    packed, _ = pack_rows(rows, tokenizer.pad_token_id, 64)
    assert model(**packed).loss.item() == pytest.approx(per_example_loss(model, rows), abs=1e-5)
    # the trap: with its key/value cache (use_cache, on by default) the model never looks for packed examples
    with_cache = {k: v for k, v in packed.items() if k != "use_cache"}
    assert model(**with_cache).loss.item() != pytest.approx(per_example_loss(model, rows), abs=1e-5)


# --- whole runs -------------------------------------------------------------------------------


def run_with(tmp_path, name: str, model: str = "tiny-llama", **train):
    """A tiny LoRA run with these train settings; on CPU in fp32 unless given (the same on a CPU with or without
    bf16 instructions), on a GPU in what auto chooses there."""
    precision = "auto" if torch.cuda.is_available() else "fp32"
    cfg = config_from_dict({"task": "pubmed-conclusion", "model": model, "method": "lora", "seed": 0,
                            "method_args": {"lora_dropout": 0.0},
                            "data": dict(TINY_DATA, train_size=12, max_source_tokens=160, max_target_tokens=48),
                            "train": {"max_steps": 3, "batch_size": 6, "eval_batch_size": 4, "lr": 1e-2, "precision": precision,
                                      **train}})
    return run_config(cfg, tmp_path / name)


def test_packing_and_pad_to_64_leave_a_run_unchanged(tmp_path, monkeypatch, assets_ready):
    """Forced on, on CPU, with a batch-building worker: the same loss, the same useful-token count, the same summaries."""
    train = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: train(self, False))  # no dropout anywhere
    plain = run_with(tmp_path, "plain")
    levered = run_with(tmp_path, "levered", packing=True, pad_to_multiple_of=64, dataloader_workers=1)  # a worker process too
    assert levered.ok and plain.ok
    assert abs(levered.training["train_loss"] - plain.training["train_loss"]) < 1e-4
    assert levered.training["train_tokens"] == plain.training["train_tokens"]
    # result.json says which levers ran: the ones forced here, and on CPU by default every one off
    assert levered.fit.levers == dict(OFF.describe(), packing=True, pad_to_multiple_of=64, dataloader_workers=1)
    assert plain.fit.levers == OFF.describe()
    predictions = [json.loads(line)["prediction"] for name in ("plain", "levered")
                   for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    assert predictions[: len(predictions) // 2] == predictions[len(predictions) // 2:]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_counts_taken_on_the_cpu_leave_a_run_unchanged(model, tmp_path, monkeypatch, assets_ready):
    """CUDA's host counts, forced on CPU (whole batches, as on a GPU): the collator's token count and
    labelled positions give the Trainer's token count and the same loss as without them."""
    from medpeft.run import fit

    train = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: train(self, False))  # no dropout anywhere
    monkeypatch.setattr(fit, "cpu_slices", lambda inputs, *a: [(inputs, 1.0)])  # a GPU keeps the batch whole
    plain = run_with(tmp_path, "plain", model=model)
    seen = []
    choose = fit.choose_levers

    def host_counts(*args):
        seen.append(1)
        return dataclasses.replace(choose(*args), host_counts=True, pad_to_multiple_of=64)

    monkeypatch.setattr(fit, "choose_levers", host_counts)
    counted = run_with(tmp_path, "counted", model=model)
    assert seen and counted.ok and plain.ok
    assert counted.training["train_tokens"] == plain.training["train_tokens"]
    assert abs(counted.training["train_loss"] - plain.training["train_loss"]) < 1e-4


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_a_bf16_base_trains_evaluates_and_keeps_the_adapter_in_fp32(model, tmp_path, monkeypatch, assets_ready):
    """bf16 precision with the frozen base held in bf16 (forced on CPU): the run trains, generates and
    saves; the adapter weights stay fp32 and the base's are bf16."""
    from medpeft.run import execute

    seen = {}
    hold = levers_mod.hold_frozen_in_bf16

    def spy(model_):
        seen["cast"] = hold(model_)
        seen["dtypes"] = {p.dtype for p in model_.parameters() if p.requires_grad}, {p.dtype for p in model_.parameters() if not p.requires_grad}
        return seen["cast"]

    monkeypatch.setattr(execute, "hold_frozen_in_bf16", spy)
    result = run_with(tmp_path, "bf16", model=model, precision="bf16", bf16_base=True)
    assert result.ok, result.error
    assert seen["cast"] > 0 and seen["dtypes"] == ({torch.float32}, {torch.bfloat16})
    import safetensors.torch

    saved = safetensors.torch.load_file(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


@GPU
def test_every_lever_on_a_gpu_leaves_the_loss_as_without_them(tmp_path, assets_ready):
    """On CUDA: the default levers against every lever off, the same loss (bf16: within 2 %)."""
    on = run_with(tmp_path, "on", model="tiny-llama")
    off = run_with(tmp_path, "off", model="tiny-llama", pad_to_multiple_of=1, packing=False, bf16_base=False, dataloader_workers=0)
    assert on.ok and off.ok
    assert on.training["train_loss"] == pytest.approx(off.training["train_loss"], rel=2e-2)
    assert on.training["train_tokens"] == off.training["train_tokens"]
