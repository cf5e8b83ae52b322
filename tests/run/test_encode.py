"""Decoder-only prompts: the chat template of an instruction-tuned model, or instruction + answer cue.

The tiny-llama tokenizer (uncased WordPiece) has no chat template; tests give it a small one whose
turns are marked with its own special tokens: [CLS] opens a turn, [MASK] ends one (so end-of-turn
differs from EOS, [SEP]), and "[CLS] assistant :" is the generation prompt."""
from __future__ import annotations

import shutil
import types

import pytest

from medpeft.run.encode import (ANSWER_CUE_FORMAT, CHAT_TEMPLATE, chat_prompt, cut_text, encode_causal,
                                encode_causal_prompt, encode_class, encode_examples, encode_seq2seq, end_of_turn_id,
                                prompt_format, source_text)
from medpeft.run.kinds import KINDS

from conftest import TINY_DATA, TINY_TRAIN

TEMPLATE = ("{% for m in messages %}[CLS]{{ m['role'] }}: {{ m['content'] }}[MASK]{% endfor %}"
            "{% if add_generation_prompt %}[CLS]assistant:{% endif %}")
INSTRUCTION = "Summarize the note."
SOURCE = "The patient is well."
EXAMPLE = {"id": "a", "text": SOURCE, "target": "Doing fine."}


def data_cfg(max_source_tokens: int = 32, max_target_tokens: int = 8):
    return types.SimpleNamespace(max_source_tokens=max_source_tokens, max_target_tokens=max_target_tokens)


@pytest.fixture
def plain(assets_ready):
    """The tiny-llama tokenizer as shipped: no chat template."""
    from transformers import AutoTokenizer

    from medpeft.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny-llama", online=False))


@pytest.fixture
def chat(plain):
    plain.chat_template = TEMPLATE
    return plain


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_templated_prompt_holds_instruction_and_source_and_ends_with_the_generation_prompt(chat):
    prompt, cut = encode_causal_prompt(chat, INSTRUCTION, SOURCE, 32)
    rendered = chat.apply_chat_template([{"role": "user", "content": f"{INSTRUCTION}\n\n{SOURCE}"}],
                                        add_generation_prompt=True, tokenize=False)
    assert prompt == ids(chat, rendered) and not cut  # exactly the template's prompt
    assert chat.convert_ids_to_tokens(prompt) == [
        "[CLS]", "user", ":", "sum", "##mar", "##ize", "the", "note", ".", "the", "patient", "is", "well", ".",
        "[MASK]", "[CLS]", "assistant", ":"]


def test_a_long_source_is_cut_before_templating_so_the_template_survives(chat):
    words = ["patient"] * 100  # one token each
    prompt, cut = encode_causal_prompt(chat, INSTRUCTION, " ".join(words), max_source_tokens=10)
    assert cut
    assert prompt == chat_prompt(chat, source_text(INSTRUCTION, " ".join(words[:10])))
    assert chat.convert_ids_to_tokens(prompt).count("patient") == 10
    # the user turn's end and the generation prompt are whole
    assert chat.convert_ids_to_tokens(prompt)[-4:] == ["[MASK]", "[CLS]", "assistant", ":"]


def test_a_source_is_cut_in_its_own_text_at_a_token_end(chat):
    """Cut at the end of the last kept token, in the text as written (not a lower-cased decode)."""
    assert chat.convert_ids_to_tokens(ids(chat, "Hypertension resolved")) == ["hyper", "##tension", "resolved"]
    assert cut_text(chat, "Hypertension Resolved quickly.", 3) == ("Hypertension Resolved", True)
    assert cut_text(chat, "Hypertension Resolved quickly.", 5) == ("Hypertension Resolved quickly.", False)


def test_training_labels_cover_the_target_and_the_end_of_turn_only(chat):
    (row,), stats = encode_examples([EXAMPLE], chat, KINDS["causal"], INSTRUCTION, data_cfg())
    prompt, _ = encode_causal_prompt(chat, INSTRUCTION, SOURCE, 32)
    end = chat.convert_tokens_to_ids("[MASK]")
    assert end_of_turn_id(chat) == end != chat.eos_token_id
    assert row["input_ids"] == prompt + ids(chat, "Doing fine.") + [end]
    assert row["labels"] == [-100] * len(prompt) + ids(chat, "Doing fine.") + [end]
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert stats["truncated_sources"] == stats["truncated_targets"] == 0


def test_a_cut_target_still_ends_with_the_end_of_turn(chat):
    row, _, cut_target = encode_causal(EXAMPLE, chat, INSTRUCTION, data_cfg(max_target_tokens=2))
    assert cut_target and [t for t in row["labels"] if t != -100] == ids(chat, "Doing")[:1] + [end_of_turn_id(chat)]


def test_training_evaluation_and_prediction_share_the_prompt(chat):
    """The generation row is the training row's prompt: one function builds both."""
    (train,), _ = encode_examples([EXAMPLE], chat, KINDS["causal"], INSTRUCTION, data_cfg())
    (gen,), _ = encode_examples([EXAMPLE], chat, KINDS["causal"], INSTRUCTION, data_cfg(), for_generation=True)
    assert "labels" not in gen
    assert train["input_ids"][: len(gen["input_ids"])] == gen["input_ids"]
    assert train["labels"].count(-100) == len(gen["input_ids"])


def test_without_a_template_the_answer_cue_prompt_is_unchanged(plain):
    """Byte for byte the format runs have always used: instruction, blank line, source, blank line, Answer:, EOS."""
    expected_prompt = plain.convert_tokens_to_ids(["sum", "##mar", "##ize", "the", "note", ".",
                                                   "the", "patient", "is", "well", ".", "answer", ":"])
    target = plain.convert_tokens_to_ids(["doing", "fine", "."]) + [plain.eos_token_id]
    row, cut_source, cut_target = encode_causal(EXAMPLE, plain, INSTRUCTION, data_cfg())
    assert row["input_ids"] == expected_prompt + target
    assert row["labels"] == [-100] * len(expected_prompt) + target
    assert not cut_source and not cut_target and end_of_turn_id(plain) == plain.eos_token_id
    row, cut_source, _ = encode_causal(EXAMPLE, plain, INSTRUCTION, data_cfg(max_source_tokens=2), for_generation=True)
    assert row["input_ids"] == plain.convert_tokens_to_ids(["sum", "##mar", "##ize", "the", "note", ".", "the",
                                                            "patient", "answer", ":"]) and cut_source


def test_end_of_turn_falls_back_to_eos_when_the_template_closes_a_reply_with_plain_text(chat):
    chat.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_id(chat) == chat.eos_token_id


def test_prompt_format_names_the_frame(plain):
    assert prompt_format(plain) == ANSWER_CUE_FORMAT == "instruction+answer-cue"
    assert prompt_format(plain, encode_seq2seq) == "instruction+source"
    assert prompt_format(plain, encode_class) == "text"
    plain.chat_template = TEMPLATE
    assert prompt_format(plain) == prompt_format(plain, encode_causal) == CHAT_TEMPLATE == "chat-template"


def test_a_chat_model_trains_and_generates_through_its_template(tmp_path, assets_ready):
    """A whole run of tiny-llama whose tokenizer has a chat template: the templated rows train,
    pad and generate (a local model folder, as a hospital team would point at one)."""
    from transformers import AutoTokenizer

    from helpers import run_config
    from medpeft.config import config_from_dict
    from medpeft.models import resolve_model

    folder = tmp_path / "tiny-chat-llama"
    shutil.copytree(resolve_model("tiny-llama", online=False), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    cfg = config_from_dict({"task": "pubmed-conclusion", "model": str(folder), "method": "lora",
                            "data": TINY_DATA, "train": TINY_TRAIN})
    result = run_config(cfg, tmp_path / "run")
    assert result.status == "ok" and result.model_kind == "causal"
    assert result.training["steps"] == TINY_TRAIN["max_steps"]


def test_the_prompt_format_is_recorded_in_result_json(tmp_path, assets_ready):
    from medpeft.config import config_from_dict

    from conftest import TINY_DATA, TINY_TRAIN
    from helpers import run_config

    cfg = config_from_dict({"task": "pubmed-conclusion", "model": "tiny-llama", "method": "lora", "data": TINY_DATA,
                            "train": TINY_TRAIN})
    assert run_config(cfg, tmp_path / "run").data["prompt_format"] == "instruction+answer-cue"  # no chat template


# --- text pairs (pubmed-rct-context: the sentence, then its position and neighbours) -----------------

PAIR = {"id": "p", "text": "The dose was doubled.", "pair": "Sentence 3 of 9. Before: We enrolled adults. After: Pain fell.",
        "target": "METHODS"}


def test_a_pair_is_encoded_as_two_segments_with_segment_ids(plain):
    row, was_cut, _ = encode_class(PAIR, plain, "", data_cfg(64), ["METHODS"])
    assert row["input_ids"] == plain(PAIR["text"], PAIR["pair"])["input_ids"]
    sentence = len(plain(PAIR["text"])["input_ids"])  # [CLS] sentence [SEP]
    assert row["token_type_ids"] == [0] * sentence + [1] * (len(row["input_ids"]) - sentence)
    assert not was_cut and row["labels"] == 0


def test_a_long_pair_is_cut_in_its_context_and_the_sentence_kept(plain):
    row, was_cut, _ = encode_class(PAIR, plain, "", data_cfg(14), ["METHODS"])
    sentence = plain(PAIR["text"])["input_ids"]
    assert was_cut and len(row["input_ids"]) == 14
    assert row["input_ids"][:len(sentence)] == sentence


def test_a_tokenizer_without_a_separator_gets_the_pair_joined_by_a_blank_line(assets_ready):
    """SmolLM2's GPT-2 style tokenizer concatenates a pair with nothing between ("sentence.Sentence 3 of 9")."""
    from transformers import AutoTokenizer

    from medpeft.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m", online=False))
    assert tokenizer.sep_token is None
    row, _, _ = encode_class(PAIR, tokenizer, "", data_cfg(64), ["METHODS"])
    assert row["input_ids"] == tokenizer(f"{PAIR['text']}\n\n{PAIR['pair']}")["input_ids"]


def test_a_single_text_has_no_segment_ids_and_prompts_put_the_pair_after_the_text(plain):
    single = {k: v for k, v in PAIR.items() if k != "pair"}
    row, _, _ = encode_class(single, plain, "", data_cfg(64), ["METHODS"])
    assert "token_type_ids" not in row
    empty, _, _ = encode_class(dict(PAIR, pair=""), plain, "", data_cfg(64), ["METHODS"])  # a pair task's empty pair:
    assert empty["input_ids"] == row["input_ids"] and empty["token_type_ids"] == [0] * len(row["input_ids"])  # same columns
    seq2seq, _, _ = encode_seq2seq(PAIR, plain, INSTRUCTION, data_cfg(64), for_generation=True)
    assert seq2seq["input_ids"] == plain(source_text(INSTRUCTION, f"{PAIR['text']}\n\n{PAIR['pair']}"))["input_ids"]
    causal, _, _ = encode_causal(PAIR, plain, INSTRUCTION, data_cfg(64), for_generation=True)
    assert causal["input_ids"] == encode_causal_prompt(plain, INSTRUCTION, f"{PAIR['text']}\n\n{PAIR['pair']}", 64)[0]


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"])
def test_every_method_trains_and_predicts_on_text_pairs(tmp_path, assets_ready, method):
    """Soft prompts lengthen the input: peft must extend the segment ids too (it does for SEQ_CLS)."""
    import json

    from medpeft.config import config_from_dict

    from helpers import run_config

    cfg = config_from_dict({"task": "pubmed-rct-context", "model": "tiny-bert", "method": method,
                            "data": dict(TINY_DATA, max_source_tokens=96), "train": TINY_TRAIN})
    result = run_config(cfg, tmp_path / cfg.run_id)
    assert result.status == "ok", result
    preds = [json.loads(line) for line in (tmp_path / cfg.run_id / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(p["pair"].startswith("Sentence ") and p["input"] for p in preds)


def test_prediction_feeds_a_pairs_segment_ids_as_training_does(plain):
    """Scoring and `medpeft predict` must see the second segment as segment 1, as the Trainer's batches do."""
    import numpy as np
    import torch

    from medpeft.run.kinds import KINDS
    from medpeft.run.predict import predict_logits

    from helpers import load_for_kind
    from medpeft.models import resolve_model

    torch.manual_seed(0)
    model, tokenizer, _ = load_for_kind(resolve_model("tiny-bert", online=False), "seq_cls", ["METHODS", "RESULTS"])
    rows, _ = encode_examples([PAIR, dict(PAIR, id="q", text="Pain fell by half.")], tokenizer, KINDS["seq_cls"], "",
                              data_cfg(64), ["METHODS", "RESULTS"], for_generation=True)
    got = predict_logits(model, tokenizer, rows, 2, "cpu")
    batch = KINDS["seq_cls"].collator(tokenizer)([{k: r[k] for k in r if k != "labels"} for r in rows])
    model.eval()
    with torch.no_grad():
        want = model(**batch).logits.numpy()
        without = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    assert "token_type_ids" in batch and abs(without - want).max() > 1e-4  # the segment ids matter to this model
    for i in range(2):
        np.testing.assert_allclose(got[i], want[i], atol=1e-5)
