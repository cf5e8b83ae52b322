"""The speed and memory levers of run/loss.py leave results as they were: the loss within 1e-4 of the
plain path, the same gradients, the same predictions after training."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from medpeft.config import config_from_dict
from medpeft.run import fit, loss as loss_mod
from medpeft.run.kinds import KINDS

from conftest import KIND_SETUPS, TINY_DATA
from test_methods import build, make_batch
from helpers import run_config


@pytest.fixture(scope="module", autouse=True)
def _assets(assets_ready):
    pass


def assert_same_loss_and_gradients(model, batch, lever):
    """The lever's loss and gradients equal the model's own (1e-5); -> (the model's loss, the lever's result)."""
    own = model(**batch).loss
    own.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    result = lever(model, batch)
    result[0].backward()
    assert result[0].item() == pytest.approx(own.item(), abs=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    return own, result


@pytest.mark.parametrize("method", ["lora", "full", "prompt_tuning", "prefix_tuning"])
def test_labelled_positions_loss_equals_the_models_own(method):
    """Logits only from the earliest labelled position on give the causal-LM loss of all logits: mean
    without num_items_in_batch, sum / num_items_in_batch with it; and the same gradients."""
    model, tokenizer, config = build(method, "causal")
    batch = make_batch(tokenizer, "causal", config)
    assert (batch["labels"][:, :4] == -100).all()  # a prompt the lever can skip
    torch.manual_seed(0)
    model.eval()  # no dropout: both paths see the same network
    plain, _ = assert_same_loss_and_gradients(model, batch, loss_mod.labelled_positions_loss)
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    summed, _ = loss_mod.labelled_positions_loss(model, batch, num_items_in_batch=torch.tensor(2 * n_items))
    assert abs(summed.item() - plain.item() / 2) < 1e-5


def test_labelled_positions_loss_asks_for_fewer_logits():
    model, tokenizer, config = build("lora", "causal")
    batch = make_batch(tokenizer, "causal", config)
    assert loss_mod.accepts_logits_to_keep(model)
    _, outputs = loss_mod.labelled_positions_loss(model, batch)
    first = int((batch["labels"][:, 1:] != -100).any(0).nonzero()[0])
    assert outputs.logits.shape[1] == batch["labels"].shape[1] - first < batch["labels"].shape[1]


def padded(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width) < torch.tensor(lengths)[:, None]).long()


def test_cpu_slices_group_rows_by_length_and_cut_their_padding(monkeypatch):
    """Rows sorted by length, each slice cut to its longest row, every row once, weights adding up to 1;
    row labels and multi-label vectors kept whole; the batch untouched when one slice is cheapest."""
    config = type("C", (), {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1})()
    mask = padded([2, 6, 3, 6], 6)
    inputs = {"input_ids": torch.arange(24).reshape(4, 6) * mask, "attention_mask": mask, "token_type_ids": mask.clone(),
              "labels": torch.tensor([0, 1, 2, 3]), "logits_to_keep": 2}
    assert loss_mod.cpu_slices(inputs, config) == [(inputs, 1.0)]  # 4 x 6 padded tokens: not worth a second forward
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 0)
    parts = loss_mod.cpu_slices(inputs, config)
    assert [p["labels"].tolist() for p, _ in parts] == [[0], [2], [1, 3]]
    assert [p["input_ids"].shape[1] for p, _ in parts] == [2, 3, 6]
    assert all(p["token_type_ids"].shape == p["input_ids"].shape == p["attention_mask"].shape for p, _ in parts)
    assert parts[0][0]["input_ids"].tolist() == [[0, 1]] and parts[1][0]["input_ids"].tolist() == [[12, 13, 14]]
    assert [w for _, w in parts] == pytest.approx([1 / 4, 1 / 4, 2 / 4])
    assert all(p["logits_to_keep"] == 2 for p, _ in parts)
    multilabel = dict(inputs, labels=torch.ones(4, 6))  # as many labels as tokens: still not cut
    assert [p["labels"].shape for p, _ in loss_mod.cpu_slices(multilabel, config)] == [(1, 6), (1, 6), (2, 6)]
    left = dict(inputs, attention_mask=padded([2, 6, 3, 6], 6).flip(1))  # left padding: sliced, never cut
    assert {p["input_ids"].shape[1] for p, _ in loss_mod.cpu_slices(left, config)} == {6}


def test_cpu_slices_cut_token_labels_behind_a_soft_prompt_and_the_decoder_side(monkeypatch):
    config = type("C", (), {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1})()
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 0)
    mask = padded([2, 5], 5)
    tags = torch.cat([torch.full((2, 3), -100), torch.where(mask.bool(), 1, -100)], dim=1)  # 3 soft-prompt positions first
    short, long = loss_mod.cpu_slices({"input_ids": mask, "attention_mask": mask, "labels": tags}, config)
    assert short[0]["labels"].shape == (1, 3 + 2) and long[0]["labels"].shape == (1, 3 + 5)
    assert [short[1], long[1]] == [2 / 7, 5 / 7]  # a token mean: each slice's share of the labelled tokens
    target = torch.tensor([[5, 6, -100, -100], [5, 6, 7, 8]])
    short, long = loss_mod.cpu_slices({"input_ids": mask, "attention_mask": mask, "labels": target}, config, encoder_decoder=True)
    assert short[0]["labels"].tolist() == [[5, 6]] and short[0]["input_ids"].shape == (1, 2)
    assert long[0]["labels"].shape == (1, 4) and long[0]["input_ids"].shape == (1, 5)


def test_cpu_slices_leave_out_a_slice_with_nothing_labelled(monkeypatch):
    """A row that tokenizes to special tokens only has no labels; alone in a slice its mean loss would be
    0/0 = NaN, and 0 x NaN poisons the step."""
    config = type("C", (), {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1})()
    mask = padded([2, 100, 100, 100], 100)
    tags = torch.where(mask.bool(), 1, -100)
    tags[0] = -100
    parts = loss_mod.cpu_slices({"input_ids": mask, "attention_mask": mask, "labels": tags}, config)
    assert [len(p["input_ids"]) for p, _ in parts] == [3] and parts[0][1] == 1.0
    unlabelled = {"input_ids": mask, "attention_mask": mask, "labels": torch.full_like(tags, -100)}
    assert sum(len(p["input_ids"]) for p, _ in loss_mod.cpu_slices(unlabelled, config)) == 4  # nothing labelled anywhere: kept


def test_cpu_slices_keep_each_slice_under_the_activation_cap(monkeypatch):
    smollm2 = type("C", (), {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30})()
    minilm = type("C", (), {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6})()
    batch = {"input_ids": torch.ones(8, 440, dtype=torch.long), "attention_mask": torch.ones(8, 440, dtype=torch.long)}
    assert [len(p["input_ids"]) for p, _ in loss_mod.cpu_slices(batch, smollm2)] == [2, 2, 2, 2]  # 2.5 GiB measured
    full = torch.ones(32, 128, dtype=torch.long)
    assert len(loss_mod.cpu_slices({"input_ids": full, "attention_mask": full}, minilm)) == 1
    assert loss_mod.rows_per_forward(8, 440, "cpu", smollm2) == 2  # the cap gradient checkpointing is judged by
    assert loss_mod.rows_per_forward(8, 5000, "cpu", smollm2) == 1
    assert loss_mod.rows_per_forward(32, 128, "cpu", minilm) == 32
    assert loss_mod.rows_per_forward(8, 440, "cuda", smollm2) == 8
    monkeypatch.setattr(loss_mod, "SLICE_BYTES", 1)
    assert [len(p["input_ids"]) for p, _ in loss_mod.cpu_slices(batch, minilm)] == [1] * 8


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "seq_cls", "multilabel", "token_cls"])
@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_length_slices_give_the_whole_batchs_loss_and_gradients(kind, method, monkeypatch):
    """Slices of similar-length rows, each cut to its longest row: their weighted losses add up to the
    whole batch's, and so do their gradients (dropout off: the same network on both paths)."""
    model, tokenizer, config = build(method, kind)
    batch = make_batch(tokenizer, kind, config)
    model.eval()
    whole_loss = (KINDS[kind].loss or (lambda m, b, n=None: (m(**b).loss, None)))
    plain, _ = whole_loss(model, batch)
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 0)
    parts = loss_mod.cpu_slices(batch, model.config, KINDS[kind].seq2seq_trainer)
    assert len(parts) > 1 and min(p["input_ids"].shape[1] for p, _ in parts) < batch["input_ids"].shape[1]
    total = sum(weight * whole_loss(model, part)[0] for part, weight in parts)
    total.backward()
    assert abs(total.item() - plain.item()) < 1e-5
    assert grads
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_activation_estimate_is_close_to_the_measured_smollm2_figure():
    """SmolLM2-135M (576 hidden, 1536 intermediate, 30 layers): 12.8k floats per token measured per layer."""
    config = type("C", (), {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30})()
    per_token_layer = loss_mod.activation_bytes(config, 1) / 4 / 30
    assert 0.8 * 12_800 < per_token_layer < 1.2 * 12_800


# --- whole runs: each lever on and off ---------------------------------------------------------


def run_once(tmp_path, name: str, kind: str, steps: int = 3, data=None, task=None, **train) -> tuple[dict, list]:
    """A short LoRA run without dropout: slices draw their dropout masks in another order than the
    whole batch (a different draw, not a different computation), so with dropout the runs differ by chance.
    fp32 unless given: bf16 (auto on a CPU with bf16 instructions) rounds sums of another grouping differently."""
    model, kind_task = KIND_SETUPS[kind]
    cfg = config_from_dict({"task": task or kind_task, "model": model, "method": "lora", "seed": 0, "method_args": {"lora_dropout": 0.0},
                            "data": dict(TINY_DATA, train_size=12, **(data or {})),
                            "train": {"max_steps": steps, "batch_size": 6, "eval_batch_size": 4, "lr": 1e-2, "precision": "fp32",
                                      **train}})
    result = run_config(cfg, tmp_path / name)
    predictions = [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
    return result.training, [p["prediction"] for p in predictions]


@pytest.mark.parametrize("kind", ["causal", "seq2seq", "seq_cls", "multilabel"])
def test_micro_batches_leave_the_run_unchanged(kind, tmp_path, monkeypatch):
    """The whole batch at once, slices of similar-length rows cut to their longest row, and slices of one
    row each: the same loss, the same predictions. Dropout off, the modules kept in eval mode (slices
    draw their masks in another order: another draw, not another computation)."""
    train = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, mode=True: train(self, False))
    cut = []  # batches the trainer ran as narrower slices
    slices = loss_mod.cpu_slices

    def spy(inputs, *args):
        parts = slices(inputs, *args)
        cut.extend([1] if any(p[k].shape[1] < inputs[k].shape[1] for p, _ in parts for k in ("input_ids", "labels")
                              if torch.is_tensor(inputs.get(k)) and inputs[k].dim() == 2) else [])
        return parts

    monkeypatch.setattr(fit, "cpu_slices", spy)
    monkeypatch.setattr(loss_mod, "SLICE_BYTES", 2**60)
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 10**9)
    data = {"max_source_tokens": 160, "max_target_tokens": 48}  # rows of different lengths, summaries too
    whole, whole_predictions = run_once(tmp_path, "whole", kind, data=data)
    assert not cut
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 0)
    by_length, by_length_predictions = run_once(tmp_path, "by_length", kind, data=data)
    assert cut, "the trainer never ran a batch as slices cut to their rows' length"
    monkeypatch.setattr(loss_mod, "SLICE_BYTES", 1)
    sliced, sliced_predictions = run_once(tmp_path, "sliced", kind, data=data)
    assert abs(whole["train_loss"] - by_length["train_loss"]) < 1e-4
    assert abs(whole["train_loss"] - sliced["train_loss"]) < 1e-4
    assert by_length_predictions == whole_predictions
    assert sliced_predictions == whole_predictions


@pytest.mark.parametrize("task, train", [("pubmed-rct-context", {}), ("pubmed-rct", {"grad_accum": 2})])
def test_length_slices_leave_text_pairs_and_accumulation_unchanged(task, train, tmp_path, monkeypatch):
    """Segment ids of a text pair are cut with their rows; with gradient accumulation each slice's share
    is still its share of its own batch."""
    mode = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train", lambda self, on=True: mode(self, False))
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 10**9)
    data = {"max_source_tokens": 96}
    whole, whole_predictions = run_once(tmp_path, "whole", "seq_cls", data=data, task=task, **train)
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 0)
    by_length, by_length_predictions = run_once(tmp_path, "by_length", "seq_cls", data=data, task=task, **train)
    assert abs(whole["train_loss"] - by_length["train_loss"]) < 1e-4
    assert by_length_predictions == whole_predictions


def test_labelled_positions_lever_leaves_the_run_unchanged(tmp_path, monkeypatch):
    """The causal kind's own loss against the model's loss over all logits, in a whole run."""
    lever, lever_predictions = run_once(tmp_path, "lever", "causal")
    monkeypatch.setitem(KINDS, "causal", dataclasses.replace(KINDS["causal"], loss=None))
    plain, plain_predictions = run_once(tmp_path, "plain", "causal")
    assert abs(lever["train_loss"] - plain["train_loss"]) < 1e-4
    assert lever_predictions == plain_predictions


def test_checkpointing_turns_itself_on_when_memory_is_short(tmp_path, monkeypatch, caplog):
    """With (pretend) 1 MiB free, gradient checkpointing turns on, says so, and changes nothing else."""
    plain, plain_predictions = run_once(tmp_path, "plain", "causal")
    assert plain["gradient_checkpointing"] is False
    monkeypatch.setattr(loss_mod, "free_bytes", lambda device: 2**20)
    with caplog.at_level("WARNING", logger="medpeft"):
        short, short_predictions = run_once(tmp_path, "short", "causal")
    assert short["gradient_checkpointing"] is True
    assert "gradient checkpointing turned on" in caplog.text
    assert abs(short["train_loss"] - plain["train_loss"]) < 1e-4
    assert short_predictions == plain_predictions


def tiny_masked_lm(arch: str):
    from transformers import AlbertConfig, AutoModelForMaskedLM, BertConfig, DistilBertConfig, RobertaConfig

    torch.manual_seed(0)
    sizes = dict(vocab_size=97, max_position_embeddings=64)
    config = {"bert": lambda: BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, **sizes),
              "roberta": lambda: RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=48, pad_token_id=1, **sizes),
              "albert": lambda: AlbertConfig(hidden_size=32, embedding_size=16, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=48, **sizes),
              "distilbert": lambda: DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **sizes)}[arch]()
    return AutoModelForMaskedLM.from_config(config).eval()


def masked_batch(rows: int = 4, width: int = 12) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 97, (rows, width), generator=generator)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[1, 8:] = 0  # a right-padded row
    labels = torch.where(torch.rand(rows, width, generator=generator) < 0.3, ids, -100)
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("arch", ["bert", "roberta", "albert", "distilbert"])
def test_masked_positions_loss_equals_the_models_own(arch):
    """Value and gradients as the model's own loss over all positions (a plain mean over masked tokens)."""
    model, batch = tiny_masked_lm(arch), masked_batch()
    _, (value, outputs) = assert_same_loss_and_gradients(model, batch, loss_mod.masked_positions_loss)
    assert outputs.loss is value


@pytest.mark.parametrize("arch, head_rows", [("bert", "masked"), ("distilbert", "all"), ("wrapped bert", "all")])
def test_masked_positions_loss_runs_the_head_over_masked_tokens_only(arch, head_rows):
    """BERT's head (one module beside the encoder) sees only the masked tokens; DistilBERT's head is
    four modules, and a model the Trainer wrapped (DataParallel, DDP) must run its wrapper's forward:
    both run the model's own forward over every position."""
    model, batch = tiny_masked_lm(arch.split()[-1]), masked_batch()
    seen = []
    last = model.vocab_projector if arch == "distilbert" else model.cls
    if arch == "wrapped bert":
        model = torch.nn.DataParallel(model)
    last.register_forward_hook(lambda module, args, out: seen.append(out.shape[:-1].numel()))
    loss_mod.masked_positions_loss(model, batch)
    masked = int((batch["labels"] != -100).sum())
    assert seen == [masked if head_rows == "masked" else batch["input_ids"].numel()]
    assert 0 < masked < batch["input_ids"].numel()


def test_cpu_slices_of_token_labels_are_contiguous(monkeypatch):
    """A slice cut to its own longest row is a column cut; BERT's token-classification loss calls
    labels.view(-1), which fails on a strided view (NER on sentences of different lengths never trained)."""
    monkeypatch.setattr(loss_mod, "SLICE_OVERHEAD_TOKENS", 0)
    mask = torch.tensor([[1] * 12, [1] * 12, [1] * 3 + [0] * 9, [1] * 3 + [0] * 9])
    inputs = {"input_ids": torch.arange(48).reshape(4, 12) * mask, "attention_mask": mask,
              "labels": torch.where(mask.bool(), 1, -100)}
    parts = loss_mod.cpu_slices(inputs, build("lora", "token_cls")[0].config)
    assert len(parts) == 2 and {p["labels"].shape[1] for p, _ in parts} == {3, 12}
    assert all(p[k].is_contiguous() for p, _ in parts for k in ("input_ids", "attention_mask", "labels"))
    assert all(p["labels"].view(-1).numel() == p["labels"].numel() for p, _ in parts)
