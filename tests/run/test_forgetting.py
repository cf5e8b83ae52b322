"""Forgetting: held-out MEDLINE abstracts share no text with the task, the language-model loss is one
token-weighted mean, and the base of every peft method is the model before the adapter."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medpeft.methods import build_peft_config
from medpeft.models import resolve_model
from medpeft.run.forgetting import (continuation_rows, heldout_abstracts, lm_loss, measure_forgetting,
                                    MIN_DOCUMENT_TOKENS)
from medpeft.run.kinds import KINDS

from helpers import load_for_kind

TEXTS = [
    "Aspirin reduces the risk of myocardial infarction in adults with type 2 diabetes and chronic kidney disease.",
    "Metformin was well tolerated by most patients in both arms.",
    "Randomised trials of early mobilisation after hip fracture surgery report shorter hospital stays, fewer "
    "pressure ulcers and lower thirty-day mortality than delayed mobilisation in frail older patients.",
]
UNRELATED = ["The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the valley."] * 4
MODELS = {"causal": "tiny-llama", "seq2seq": "tiny-t5"}


@pytest.fixture(scope="module", autouse=True)
def _assets(assets_ready):
    pass


def load(kind: str):
    path = resolve_model(MODELS[kind], online=False)
    torch.manual_seed(0)
    model, tokenizer, _ = load_for_kind(path, kind)
    return model, tokenizer, path


# --- rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_rows_score_the_second_half_of_each_document(kind):
    _, tokenizer, _ = load(kind)
    decoder_only = kind == "causal"
    rows = continuation_rows(TEXTS + ["Too short."], tokenizer, decoder_only, max_tokens=16)
    assert len(rows) == 3  # "Too short." has fewer than MIN_DOCUMENT_TOKENS tokens
    for text, row in zip(TEXTS, rows):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:16]
        first, second = ids[: len(ids) // 2], ids[len(ids) // 2:]
        assert len(ids) >= MIN_DOCUMENT_TOKENS and len(row["attention_mask"]) == len(row["input_ids"])
        if decoder_only:  # BOS (the tokenizer adds [CLS]) + both halves; scored on the second only
            assert row["input_ids"] == [tokenizer.bos_token_id] + first + second
            assert row["labels"] == [-100] * (1 + len(first)) + second
        else:  # encoder: first half + EOS; decoder: second half + EOS
            assert row["input_ids"] == first + [tokenizer.eos_token_id]
            assert row["labels"] == second + [tokenizer.eos_token_id]


# --- the loss ------------------------------------------------------------------------------------


def hand_loss(model, rows, decoder_only: bool) -> float:
    """Sum of per-token cross-entropies over every label token, one unpadded row at a time, over the count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            if decoder_only:
                logits, labels = model(input_ids=ids).logits[0, :-1], labels[1:]
            else:
                logits = model(input_ids=ids, labels=labels[None]).logits[0]
            keep = labels != -100
            total += torch.nn.functional.cross_entropy(logits[keep].double(), labels[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_lm_loss_is_the_token_weighted_mean_cross_entropy(kind):
    model, tokenizer, _ = load(kind)
    decoder_only = kind == "causal"
    rows = continuation_rows(TEXTS, tokenizer, decoder_only, max_tokens=64)
    assert len({len(r["labels"]) for r in rows}) == 3  # rows of different lengths: padding is exercised
    train_on(model, tokenizer, decoder_only)  # off its uniform random start, so the rows' mean losses differ
    expected = hand_loss(model.eval(), rows, decoder_only)
    row_means = [hand_loss(model, [row], decoder_only) for row in rows]
    assert abs(sum(row_means) / 3 - expected) > 1e-3  # a mean of per-batch means would be caught
    model.train()
    for batch_size in (1, 2, 3):
        assert lm_loss(model, rows, tokenizer, batch_size, "cpu", decoder_only) == pytest.approx(expected, abs=1e-5)
    assert model.training  # the caller's mode is restored


# --- forgetting ----------------------------------------------------------------------------------


def with_method(kind: str, method: str, args=None):
    from peft import get_peft_model

    model, tokenizer, path = load(kind)
    config = build_peft_config(method, KINDS[kind].peft_task_type, args or {}, model_path=path,
                               instruction="Summarise this medical text.", new_modules=[])
    return get_peft_model(model, config), tokenizer


def train_on(model, tokenizer, decoder_only: bool, steps: int = 5, lr: float = 5e-2) -> None:
    from transformers import DataCollatorForSeq2Seq

    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(
        continuation_rows(UNRELATED, tokenizer, decoder_only, max_tokens=32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_untrained_lora_forgets_nothing_and_training_moves_only_the_adapted_loss(kind):
    decoder_only = kind == "causal"
    model, tokenizer = with_method(kind, "lora")
    rows = continuation_rows(TEXTS, tokenizer, decoder_only, max_tokens=64)
    before = measure_forgetting(model, tokenizer, rows, 2, "cpu", decoder_only)
    assert before["forgetting"] == pytest.approx(0.0, abs=1e-6)  # lora_B starts at zero
    assert before["documents"] == 3 and before["tokens"] == sum(sum(t != -100 for t in r["labels"]) for r in rows)
    train_on(model, tokenizer, decoder_only)
    after = measure_forgetting(model, tokenizer, rows, 2, "cpu", decoder_only)
    assert after["base_lm_loss"] == pytest.approx(before["base_lm_loss"], abs=1e-6)  # the base is frozen
    assert abs(after["adapted_lm_loss"] - after["base_lm_loss"]) > 1e-3
    assert after["forgetting"] == pytest.approx(after["adapted_lm_loss"] - after["base_lm_loss"])


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_disabled_adapter_is_the_base_model_for_every_method(kind, method):
    """peft's disable_adapter() turns off adapter layers and drops soft prompts and prefixes alike."""
    decoder_only = kind == "causal"
    plain, tokenizer, _ = load(kind)
    rows = continuation_rows(TEXTS, tokenizer, decoder_only, max_tokens=64)
    base = lm_loss(plain, rows, tokenizer, 2, "cpu", decoder_only)
    model, _ = with_method(kind, method, {"num_virtual_tokens": 4} if "tuning" in method else None)
    train_on(model, tokenizer, decoder_only, steps=2)
    result = measure_forgetting(model, tokenizer, rows, 2, "cpu", decoder_only)
    assert result["base_lm_loss"] == pytest.approx(base, abs=1e-5)
    assert result["adapted_lm_loss"] != pytest.approx(base, abs=1e-5)


def test_full_fine_tuning_needs_the_base_model():
    model, tokenizer, _ = load("causal")
    rows = continuation_rows(TEXTS, tokenizer, True, max_tokens=64)
    base_model, _, _ = load("causal")
    train_on(model, tokenizer, True, steps=2, lr=1e-3)
    with pytest.raises(ValueError, match="base_model"):
        measure_forgetting(model, tokenizer, rows, 2, "cpu", True)
    result = measure_forgetting(model, tokenizer, rows, 2, "cpu", True, base_model=base_model)
    assert result["base_lm_loss"] == pytest.approx(lm_loss(base_model, rows, tokenizer, 3, "cpu", True), abs=1e-6)
    assert result["forgetting"] != 0.0


# --- the held-out abstracts ----------------------------------------------------------------------


def data_config(train: int, val: int, test: int) -> SimpleNamespace:
    return SimpleNamespace(train_size=train, val_size=val, test_size=test, split_seed=1234,
                           max_source_tokens=64, max_target_tokens=16)


def pmid_of() -> dict[str, str]:
    from medpeft.run.forgetting import citation_text
    from medpeft.tasks.medline_tasks import latest_citations

    return {citation_text(c): c["pmid"] for c in latest_citations()}


@pytest.mark.parametrize("task, sizes", [("pubmed-conclusion", (3000, 200, 400)), ("pubmed-rct", (20000, 1000, 3000))])
def test_heldout_abstracts_share_no_text_with_any_split(task, sizes):
    from medpeft.data.medline import citation_keys, text_keys
    from medpeft.registry import TASKS
    from medpeft.run.forgetting import example_text
    from medpeft.tasks.medline_tasks import latest_citations

    splits = TASKS[task].load(data_config(*sizes)).splits
    docs = heldout_abstracts(splits, 300, seed=0)
    assert len(docs) == len(set(docs)) == 300
    assert heldout_abstracts(splits, 300, seed=0) == docs  # deterministic
    assert heldout_abstracts(splits, 300, seed=1) != docs

    split_keys = set().union(*(text_keys(example_text(ex)) for s in splits.values() for ex in s))
    split_pmids = {str(ex["id"]).split("-")[0] for s in splits.values() for ex in s}
    by_pmid = {c["pmid"]: c for c in latest_citations()}
    pmid = pmid_of()
    pmids = [pmid[d] for d in docs]
    assert not split_pmids & set(pmids)
    assert not any(citation_keys(by_pmid[p]) & split_keys for p in pmids)
    # The split does take documents from the unfiltered draw, so the check above is not vacuous.
    assert set(heldout_abstracts({}, 300, seed=0)) - set(docs)


def test_heldout_abstracts_drop_planted_overlaps_and_keep_the_rest_in_order():
    """A sentence of one abstract, another's title, a third's PMID as an id prefix: those three go, the order stays."""
    from medpeft.tasks.medline_tasks import split_sentences

    free = heldout_abstracts({}, 12, seed=3)
    pmids = pmid_of()
    title0, abstract0 = free[0].split("\n", 1)
    sentence = max(split_sentences(abstract0), key=len)
    splits = {"test": [{"id": "x-1", "text": f"BACKGROUND: {sentence}", "target": "BACKGROUND"}],
              "validation": [{"id": "x-2", "text": "Unrelated text.", "target": free[1].split("\n", 1)[0]}],
              "train": [{"id": f"{pmids[free[2]]}-4", "text": "Short.", "target": "RESULTS"}]}
    docs = heldout_abstracts(splits, 9, seed=3)
    assert docs == free[3:12]


def test_a_run_with_forgetting_records_it_and_the_report_shows_it(tmp_path, assets_ready):
    """Wired end to end: LoRA and full fine-tuning on tiny-llama measure it; the report adds the cost column."""
    from medpeft.config import expand_grid
    from medpeft.grid import run_grid
    from medpeft.run.record import load_results

    from conftest import TINY_DATA, TINY_TRAIN

    spec = {"base": {"task": "pubmed-conclusion", "model": "tiny-llama", "data": TINY_DATA,
                     "train": {**TINY_TRAIN, "lr": 1e-2}, "forgetting": {"documents": 4, "max_tokens": 32}},
            "grid": {"method": ["lora", "full"]}}
    grid_dir = run_grid(expand_grid(spec, name="forget"), tmp_path, log=lambda *a: None).grid_dir
    by_method = {r.method: r for r in load_results(grid_dir)}
    for method in ("lora", "full"):
        measured = by_method[method].evaluation["forgetting"]
        assert measured["documents"] == 4 and measured["tokens"] > 0
        assert by_method[method].efficiency["forgetting"] == pytest.approx(measured["adapted_lm_loss"] - measured["base_lm_loss"])
    assert "forgetting" not in by_method["untrained"].evaluation  # nothing adapted: nothing to forget
    assert "Forgetting (Δ LM loss)" in (grid_dir / "report.md").read_text()


def test_forgetting_on_a_classifier_is_refused_before_training(assets_ready):
    from medpeft.errors import ConfigError
    from medpeft.plan import plan_run

    from helpers import checked_config

    with pytest.raises(ConfigError, match="forgetting measures a generative model"):
        plan_run(checked_config({"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "forgetting": True,
                                 "data": {"train_size": 8, "val_size": 0, "test_size": 4}}))
