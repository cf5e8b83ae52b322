"""The model kinds: the table itself, and multi-label and token-classification (NER) heads as whole
runs on tiny-bert (NER on a small BIO data set built here: no offline NER corpus exists)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from medpeft.config import config_from_dict
from medpeft.run.encode import encode_examples
from medpeft.run.kinds import KINDS

from helpers import load_for_kind
from conftest import KIND_SETUPS, TINY_DATA, TINY_TRAIN

# --- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_is_complete_and_loadable(name):
    """Each kind names a real Auto class and peft task type, and a head kind has a prior for the baseline."""
    import peft
    import transformers

    kind = KINDS[name]
    assert kind.name == name and hasattr(transformers, kind.auto_class)
    assert kind.peft_task_type in peft.TaskType.__members__
    assert all(callable(f) for f in (kind.encode, kind.collator, kind.predict, kind.score))
    assert (kind.prior is not None) == kind.new_head  # a random head is replaced by the prior when untrained


def test_plan_picks_only_kinds_that_exist():
    from medpeft.plan import GENERATIVE_ARCHITECTURES, KIND_FOR_TASK_TYPE

    assert set(KIND_FOR_TASK_TYPE.values()) | set(GENERATIVE_ARCHITECTURES) == set(KINDS) == set(KIND_SETUPS)


def test_token_labels_sit_on_the_first_sub_word(assets_ready):
    from transformers import AutoTokenizer

    from medpeft.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-bert", online=False))
    ex = {"id": "a", "text": ["Acetylsalicylic", "acid", "helps"], "target": ["B-DRUG", "I-DRUG", "O"]}
    data_cfg = type("Data", (), TINY_DATA)()
    (row,), stats = encode_examples([ex], tokenizer, KINDS["token_cls"], "", data_cfg, ["O", "B-DRUG", "I-DRUG"])
    words = tokenizer(ex["text"], is_split_into_words=True).word_ids()
    assert words.count(0) > 1  # the drug name is split into several sub-words
    assert [tag for tag in row["labels"] if tag != -100] == [1, 2, 0]
    assert row["labels"][0] == row["labels"][-1] == -100 and stats["truncated_sources"] == 0


# --- whole runs ------------------------------------------------------------------------------

DRUGS = ["aspirin", "ibuprofen", "metformin", "insulin", "warfarin", "heparin"]
DISEASES = [["diabetes"], ["heart", "failure"], ["asthma"], ["chronic", "kidney", "disease"]]


def bio_sentence(rng: random.Random) -> dict:
    drug, disease = rng.choice(DRUGS), rng.choice(DISEASES)
    tokens = ["patient", "with"] + disease + ["was", "given", drug]
    tags = ["O", "O"] + ["B-DIS"] + ["I-DIS"] * (len(disease) - 1) + ["O", "O", "B-DRUG"]
    return {"tokens": tokens, "tags": tags}


@pytest.fixture(scope="module")
def bio_file(tmp_path_factory) -> str:
    """24 BIO-tagged sentences as JSONL ({tokens, tags}), the way a hospital team feeds NER data."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("ner") / "ner-toy.jsonl"
    path.write_text("".join(json.dumps(bio_sentence(rng)) + "\n" for _ in range(24)))
    return str(path)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning", "untrained"])
def test_ner_run_end_to_end(tmp_path, assets_ready, bio_file, method):
    from helpers import run_config

    cfg = config_from_dict({"task": {"type": "ner", "path": bio_file}, "model": "tiny-bert",
                            "method": method, "train": {**TINY_TRAIN, "max_steps": 3, "lr": 1e-2},
                            "data": {"max_source_tokens": 32}})
    result = run_config(cfg, tmp_path / cfg.run_id)
    assert result.status == "ok" and result.model_kind == "token_cls" and result.task_type == "ner"
    assert set(result.metrics) == {"entity_f1", "entity_precision", "entity_recall", "token_accuracy"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    preds = [json.loads(line) for line in (tmp_path / cfg.run_id / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == round(0.1 * 24)
    for p in preds:
        assert len(p["prediction"]) == len(p["reference"]) == len(p["input"])
    if method == "untrained":  # the majority tag everywhere: no entity found, O tokens right
        assert result.metrics["entity_f1"] == 0.0
        share_o = np.mean([t == "O" for p in preds for t in p["reference"]])
        assert result.metrics["token_accuracy"] == pytest.approx(share_o)
    else:
        assert (tmp_path / cfg.run_id / "adapter" / "adapter_config.json").is_file()
        assert 0 < result.efficiency["trainable_pct"] < 10


def test_multilabel_run_end_to_end_and_reload(tmp_path, assets_ready):
    from peft import PeftModel

    from medpeft.run.predict import predict_probs
    from medpeft.models import resolve_model
    from medpeft.registry import TASKS
    from helpers import run_config

    cfg = config_from_dict({"task": "mesh", "model": "tiny-bert", "method": "lora", "data": TINY_DATA,
                            "train": {**TINY_TRAIN, "lr": 1e-2}})
    run_dir = tmp_path / cfg.run_id
    result = run_config(cfg, run_dir)
    assert result.model_kind == "multilabel"
    assert set(result.metrics) == {"micro_f1", "macro_f1", "exact_match"}
    saved = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(p["prediction"], list) and isinstance(p["reference"], list) for p in saved)
    assert all(len(p["probs"]) == 20 for p in saved)

    task = TASKS["mesh"].load(cfg.data)
    torch.manual_seed(7)  # a different random head: only the saved adapter may restore it
    base, tokenizer, _ = load_for_kind(resolve_model("tiny-bert", online=False), "multilabel", task.labels)
    assert base.config.problem_type == "multi_label_classification"
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    rows, _ = encode_examples(task.splits["test"], tokenizer, KINDS["multilabel"], task.instruction, cfg.data, task.labels)
    probs = predict_probs(model, tokenizer, rows, 4, torch.device("cpu"), multilabel=True)
    np.testing.assert_allclose(probs, [p["probs"] for p in saved], rtol=0, atol=2e-6)


def test_kinds_answer_what_callers_ask():
    """Callers ask the kind (decoder-only, generates, one label, hub pipeline tag), never its name."""
    from medpeft.run.kinds import kind_of_task

    assert [n for n, k in KINDS.items() if k.decoder_only] == ["causal"]
    assert {n for n, k in KINDS.items() if k.generates} == {"seq2seq", "causal"}
    assert [n for n, k in KINDS.items() if k.single_label] == ["seq_cls"]
    assert [n for n, k in KINDS.items() if k.reads_words] == ["token_cls"]
    assert {n: k.pipeline_tag for n, k in KINDS.items()} == {
        "seq2seq": "text2text-generation", "causal": "text-generation", "seq_cls": "text-classification",
        "multilabel": "text-classification", "token_cls": "token-classification"}
    assert kind_of_task("classification").single_label and kind_of_task("summarization").generates
    assert kind_of_task("ner").reads_words and not kind_of_task("multilabel").single_label
    with pytest.raises(KeyError, match="summarization"):
        kind_of_task("translation")


def test_predict_placeholders_and_decisions_per_kind():
    """What stands in for a new text's target, and what `medpeft predict` writes, per kind; 0.5 decides a label."""
    from medpeft.run.metrics import LABEL_THRESHOLD

    labels, ex = ["a", "b"], {"text": ["w1", "w2"]}
    assert KINDS["token_cls"].placeholder(ex, labels) == ["a", "a"] and KINDS["seq_cls"].placeholder(ex, labels) == "a"
    assert KINDS["multilabel"].placeholder(ex, labels) == [] and KINDS["causal"].placeholder(ex, labels) == ""
    assert KINDS["seq_cls"].decide(np.array([0.3, 0.7]), labels) == {"prediction": "b", "probs": {"a": 0.3, "b": 0.7}}
    assert LABEL_THRESHOLD == 0.5
    assert KINDS["multilabel"].decide(np.array([0.5, 0.4999]), labels)["prediction"] == ["a"]
    assert KINDS["seq2seq"].decide("a summary", None) == {"prediction": "a summary"}
