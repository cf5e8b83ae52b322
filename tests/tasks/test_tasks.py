"""Tasks on the real MEDLINE sample data (reads the shared cache; run `medpeft fetch` first)."""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from medpeft import tasks
from medpeft.data import assets
from medpeft.errors import ConfigError, DataError
from medpeft.registry import TASKS, UnknownNameError

# sha256 prefix of the pubmed-conclusion test ids at split_seed=0, test_size=100 (pinned data).
GOLDEN_CONCLUSION_TEST_DIGEST = "18a52b23e40a97c7"


def cfg(train_size=200, val_size=50, test_size=100, split_seed=0) -> SimpleNamespace:
    return SimpleNamespace(train_size=train_size, val_size=val_size, test_size=test_size, split_seed=split_seed)


# Registered tasks that load offline (hub tasks are tested for failing fast instead).
OFFLINE = sorted(n for n, s in TASKS.items() if not s.online and not n.startswith("user-"))
# (train, validation, test) sizes that fit the small data sets; the rest use 200/50/100.
SIZES = {"aci-bench": (24, 4, 12), "mts-dialog": (60, 10, 30), "mts-section": (60, 10, 30), "pmc-abstract": (1, 0, 6)}
# Examples per source split, measured on the pinned wheels.
EXPECTED_COUNTS = {
    "pubmed-conclusion": {"all": 4_887}, "pubmed-rct": {"all": 60_469}, "pubmed-rct-context": {"all": 60_469}, "pubmed-title": {"all": 33_272},
    "mesh": {"all": 1_105}, "pmc-abstract": {"all": 8}, "aci-bench": {"all": 40}, "mts-dialog": {"all": 100},
    "mts-section": {"all": 100}, "pubmedqa": {"all": 500},
    "pubmedqa-pqaa": {"labelled": 500, "automatic": 500}, "medmcqa-subject": {"all": 4_181},
    "drug-review": {"train": 599, "test": 379},
}


def sizes_for(name: str, **changes) -> SimpleNamespace:
    train, val, test = SIZES.get(name, (200, 50, 100))
    return cfg(**{"train_size": train, "val_size": val, "test_size": test, **changes})


def split_counts(name: str) -> dict[str, int]:
    train, val, test = SIZES.get(name, (200, 50, 100))
    if TASKS[name].eval_only:
        return {"train": 0, "validation": 0, "test": test}
    return {"train": train, "validation": val, "test": test}


@pytest.fixture(scope="module", autouse=True)
def medline_cache():
    """Skip (with the fix) when the pubmed wheel is not in the cache; tests never download."""
    try:
        assets.wheel_path("pubmed")
    except assets.AssetError as err:
        pytest.skip(str(err))


def group_of(example_id: str) -> str:
    return example_id.split("-")[0]


# --- MEDLINE parsing --------------------------------------------------------------


def test_citation_counts():
    from medpeft.data.medline import latest_versions, load_citations

    citations = load_citations()
    # 14,832 + 18,446 <Abstract> elements; 3 PMIDs come in several versions (2+2+4 records).
    assert len(citations) == 33_278
    assert len(latest_versions(citations)) == 33_273
    first = citations[0]
    assert set(first) == {"pmid", "version", "title", "sections", "mesh", "pub_types"}
    assert set(first["sections"][0]) == {"label", "category", "text"}
    assert set(first["mesh"][0]) == {"name", "major"}


def test_structured_abstract_counts():
    assert len(tasks.conclusion_examples()) == 4_887
    assert len(tasks.rct_abstracts()) == 5_046


# --- every registered task ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
def test_spec_is_complete(name):
    spec = TASKS[name]
    assert spec.name == name and spec.type in tasks.TASK_TYPES
    assert spec.description and "\n" not in spec.description
    assert spec.source and spec.license and callable(spec.load)


def test_every_offline_task_has_its_measured_counts():
    assert sorted(EXPECTED_COUNTS) == OFFLINE
    for name, expected in EXPECTED_COUNTS.items():
        assert {k: len(v) for k, v in TASKS[name].pool().items()} == expected, name


@pytest.mark.parametrize("name", OFFLINE)
def test_splits_exact_disjoint_and_well_formed(name):
    data = tasks.load_task(name, sizes_for(name))
    assert (data.name, data.type) == (name, TASKS[name].type)
    assert data.instruction and "\n" not in data.instruction
    assert {k: len(v) for k, v in data.splits.items()} == split_counts(name)
    ids = [ex["id"] for split in data.splits.values() for ex in split]
    assert len(ids) == len(set(ids))
    texts = [ex["text"] for split in data.splits.values() for ex in split]
    assert len(texts) == len(set(map(str, texts))), "the same text in two examples (or two splits)"
    for ex in (ex for split in data.splits.values() for ex in split):
        assert set(ex) - {"pair"} == {"id", "text", "target"} and isinstance(ex.get("pair", ""), str)
        assert ex["text"].strip() and (ex["target"] if data.type == "multilabel" else ex["target"].strip())
        assert ("pair" in ex) == bool(TASKS[name].pair), "a task whose examples carry a second text says what it holds"
    if data.type == "classification":
        assert data.labels and all(ex["target"] in data.labels for split in data.splits.values() for ex in split)
    if data.type == "multilabel":
        assert all(set(ex["target"]) <= set(data.labels) for split in data.splits.values() for ex in split)


@pytest.mark.parametrize("name", OFFLINE)
def test_splits_are_stable(name):
    def ids(data, split):
        return [ex["id"] for ex in data.splits[split]]

    a, b = tasks.load_task(name, sizes_for(name)), tasks.load_task(name, sizes_for(name))
    assert all(ids(a, s) == ids(b, s) for s in tasks.SPLITS)
    smaller = tasks.load_task(name, sizes_for(name, train_size=max(1, len(a.splits["train"]) // 2)))
    assert ids(smaller, "test") == ids(a, "test") and ids(smaller, "validation") == ids(a, "validation")
    other_seed = tasks.load_task(name, sizes_for(name, split_seed=1))
    assert ids(other_seed, "test") != ids(a, "test")


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("key", ["train_size", "val_size", "test_size"])
def test_too_many_examples_names_the_key(name, key):
    if TASKS[name].eval_only and key != "test_size":
        pytest.skip("an evaluation-only task ignores train_size and val_size")
    sizes = {"train_size": 5, "val_size": 2, "test_size": 5, key: 10_000_000}
    with pytest.raises(ConfigError, match=f"^task {name!r} has only .* lower data.{key} to at most"):
        tasks.load_task(name, cfg(**sizes))


@pytest.mark.parametrize("name", sorted(n for n, s in TASKS.items() if s.online))
def test_hub_task_fails_fast_offline_naming_the_offline_tasks(name, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was contacted"))
    with pytest.raises(ConfigError, match="--online") as err:
        tasks.load_task(name, cfg())
    assert "pubmed-conclusion" in str(err.value) and "aci-bench" in str(err.value)


def test_negative_size_is_rejected():
    with pytest.raises(ConfigError, match="data.val_size must be an int >= 0"):
        tasks.load_task("pubmed-conclusion", cfg(val_size=-1))


def test_unknown_task_lists_registered_ones():
    with pytest.raises(UnknownNameError, match="pubmed-conclusion"):
        tasks.load_task("nope", cfg())


def test_register_task_rejects_unknown_type():
    with pytest.raises(ValueError, match="valid types"):
        tasks.register_task("x", type="regression", description="d", source="s", license="l")


# --- task specifics ----------------------------------------------------------------


def test_pubmed_conclusion_format():
    data = tasks.load_task("pubmed-conclusion", cfg())
    for ex in data.splits["test"]:
        assert ex["id"].isdigit()
        lines = ex["text"].split("\n")
        assert all(line.split(":")[0] in tasks.CONCLUSION_SOURCE_CATEGORIES for line in lines)
        assert any(line.startswith(("METHODS: ", "RESULTS: ")) for line in lines)
        assert not ex["target"].startswith("CONCLUSIONS")
    assert data.labels is None


def test_split_is_the_same_on_every_machine():
    # random.Random(int).shuffle is specified across platforms and Python versions.
    test_ids = [ex["id"] for ex in tasks.load_task("pubmed-conclusion", cfg()).splits["test"]]
    digest = hashlib.sha256(",".join(test_ids).encode()).hexdigest()[:16]
    assert digest == GOLDEN_CONCLUSION_TEST_DIGEST


def test_pubmed_rct_splits_never_share_an_abstract():
    data = tasks.load_task("pubmed-rct", cfg(train_size=2000, val_size=500, test_size=500))
    assert data.labels == ["BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS"]
    groups = {split: {group_of(ex["id"]) for ex in exs} for split, exs in data.splits.items()}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert {ex["target"] for ex in data.splits["train"]} == set(data.labels)


def test_pubmed_rct_context_is_pubmed_rct_with_position_and_neighbours():
    plain = tasks.load_task("pubmed-rct", cfg(train_size=300, val_size=50, test_size=100))
    context = tasks.load_task("pubmed-rct-context", cfg(train_size=300, val_size=50, test_size=100))
    for split in plain.splits:  # the same sentences, labels and splits (by abstract) for the same split_seed
        assert [(ex["id"], ex["text"], ex["target"]) for ex in plain.splits[split]] == \
               [(ex["id"], ex["text"], ex["target"]) for ex in context.splits[split]]
    _, group = next(g for g in tasks.medline_tasks.rct_abstracts() if len(g[1]) >= 3)
    by_id = {ex["id"]: ex for _, exs in tasks.medline_tasks.rct_context_abstracts() for ex in exs}
    first, second, last = by_id[group[0]["id"]], by_id[group[1]["id"]], by_id[group[-1]["id"]]
    n = len(group)
    assert first["pair"] == f"Sentence 1 of {n}. Before: (none: first sentence) After: {group[1]['text']}"
    assert second["pair"] == f"Sentence 2 of {n}. Before: {group[0]['text']} After: {group[2]['text']}"
    assert last["pair"] == f"Sentence {n} of {n}. Before: {group[-2]['text']} After: (none: last sentence)"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("One. Two? Three! 4 done.", ["One.", "Two?", "Three!", "4 done."]),
        ("Dose was 3.5 mg vs. 2 mg. Next", ["Dose was 3.5 mg vs. 2 mg.", "Next"]),
        ("Seen in rats (e.g. Wistar) and i.e. Mice. As Smith et al. Showed.",
         ["Seen in rats (e.g. Wistar) and i.e. Mice.", "As Smith et al. Showed."]),
        ("It rose (P < 0.05). The end.", ["It rose (P < 0.05).", "The end."]),
        ("lowercase. after stop", ["lowercase. after stop"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert tasks.split_sentences(text) == expected



def test_an_example_may_carry_a_text_pair_but_only_as_text_and_not_in_ner():
    from medpeft.tasks.base import check_example

    check_example("t", "train", {"id": "a", "text": "x", "pair": "y", "target": "A"}, "classification", ["A"])
    with pytest.raises(DataError, match="example 'a'.*must be a string"):
        check_example("t", "train", {"id": "a", "text": "x", "pair": 3, "target": "A"}, "classification", ["A"])
    with pytest.raises(DataError, match="an NER task has none"):
        check_example("t", "train", {"id": "a", "text": ["x"], "pair": "y", "target": ["O"]}, "ner", ["O"])
    with pytest.raises(DataError, match="example 'a' has keys"):
        check_example("t", "train", {"id": "a", "text": "x", "context": "y", "target": "A"}, "classification", ["A"])
