"""data.per_class: a few-shot training split, deterministic from the seed and balanced over classes."""
from __future__ import annotations

from collections import Counter

import pytest

from medpeft.config import DataConfig, config_from_dict
from medpeft.errors import ConfigError
from medpeft.tasks import load_task, sample_per_class


@pytest.fixture(scope="module")
def rct_train(assets_ready):
    return load_task("pubmed-rct", DataConfig(train_size=300, val_size=0, test_size=20)).splits["train"]


def test_classification_sample_is_balanced_and_deterministic(rct_train):
    available = Counter(ex["target"] for ex in rct_train)
    chosen, counts = sample_per_class(rct_train, 8, seed=0, task_type="classification")
    assert counts == {label: min(8, n) for label, n in sorted(available.items())}
    assert Counter(ex["target"] for ex in chosen) == Counter(counts)
    again, _ = sample_per_class(list(reversed(rct_train)), 8, seed=0, task_type="classification")
    assert [ex["id"] for ex in again] == [ex["id"] for ex in chosen]  # input order does not matter
    other, _ = sample_per_class(rct_train, 8, seed=1, task_type="classification")
    assert {ex["id"] for ex in other} != {ex["id"] for ex in chosen}  # another seed draws another sample
    assert len({ex["id"] for ex in chosen}) == len(chosen)


def test_a_rare_class_keeps_what_it_has():
    examples = [{"id": f"a{i}", "text": "x", "target": "common"} for i in range(20)] + [{"id": "b0", "text": "y", "target": "rare"}]
    chosen, counts = sample_per_class(examples, 5, seed=3, task_type="classification")
    assert counts == {"common": 5, "rare": 1} and len(chosen) == 6


def ner_examples(n=60):
    out = []
    for i in range(n):
        tags = ["O"] * 6
        if i % 2 == 0:
            tags[0:2] = ["B-Disease", "I-Disease"]
        if i % 3 == 0:
            tags[3] = "B-Chemical"
        out.append({"id": f"s{i}", "text": [f"w{j}" for j in range(6)], "target": tags})
    return out


def test_ner_greedy_sample_reaches_k_for_every_entity_type():
    examples = ner_examples()
    chosen, counts = sample_per_class(examples, 4, seed=0, task_type="ner")
    assert set(counts) == {"Disease", "Chemical"} and all(c >= 4 for c in counts.values())
    assert all(any(t.startswith("B-") for t in ex["target"]) for ex in chosen)  # no entity-free sentences
    seen: Counter = Counter()  # every sentence was taken while one of its types still had fewer than k
    for ex in chosen:
        types = {t[2:] for t in ex["target"] if t.startswith("B-")}
        assert any(seen[t] < 4 for t in types)
        seen.update(types)
    assert sample_per_class(examples, 4, seed=0, task_type="ner") == (chosen, counts)


def test_per_class_on_a_task_without_classes_is_a_config_error(assets_ready):
    from medpeft.plan import plan_runs

    cfg = config_from_dict({"task": "pubmed-conclusion", "model": "tiny-llama", "method": "lora",
                            "data": {"train_size": 8, "val_size": 0, "test_size": 4, "per_class": 2}})
    with pytest.raises(ConfigError, match="data.per_class .* no classes"):
        plan_runs([cfg])
    with pytest.raises(ConfigError, match="data.per_class must be >= 1"):
        DataConfig(per_class=0)


def test_a_few_shot_run_trains_on_k_per_class(tmp_path, assets_ready):
    from helpers import run_config

    cfg = config_from_dict({"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "seed": 2,
                            "data": {"train_size": 64, "val_size": 0, "test_size": 4, "max_source_tokens": 32, "per_class": 2},
                            "train": {"max_steps": 1, "batch_size": 4}})
    result = run_config(cfg, tmp_path / cfg.run_id)
    assert result.data["per_class"] == {label: 2 for label in result.data["per_class"]}
    assert result.data["train"]["examples"] == sum(result.data["per_class"].values())
