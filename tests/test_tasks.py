"""Tasks on the real MEDLINE sample data (reads the shared cache; run `medpeft fetch` first)."""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from medpeft import assets, tasks
from medpeft.registry import TASKS, UnknownNameError

# sha256 prefix of the pubmed-conclusion test ids at split_seed=0, test_size=100 (pinned data).
GOLDEN_CONCLUSION_TEST_DIGEST = "18a52b23e40a97c7"


def cfg(train_size=200, val_size=50, test_size=100, split_seed=0) -> SimpleNamespace:
    return SimpleNamespace(train_size=train_size, val_size=val_size, test_size=test_size, split_seed=split_seed)


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
    from medpeft.medline import latest_versions, load_citations

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


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_exact_disjoint_and_well_formed(name):
    data = tasks.load_task(name, cfg())
    assert (data.name, data.type) == (name, TASKS[name].type)
    assert data.instruction and "\n" not in data.instruction
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 200, "validation": 50, "test": 100}
    ids = [ex["id"] for split in data.splits.values() for ex in split]
    assert len(ids) == len(set(ids))
    for ex in (ex for split in data.splits.values() for ex in split):
        assert set(ex) == {"id", "text", "target"}
        assert ex["text"].strip() and ex["target"].strip()
    if data.type == "classification":
        assert data.labels and all(ex["target"] in data.labels for split in data.splits.values() for ex in split)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_are_stable(name):
    def ids(data, split):
        return [ex["id"] for ex in data.splits[split]]

    a, b = tasks.load_task(name, cfg()), tasks.load_task(name, cfg())
    assert all(ids(a, s) == ids(b, s) for s in tasks.SPLITS)
    bigger = tasks.load_task(name, cfg(train_size=400))
    assert ids(bigger, "test") == ids(a, "test") and ids(bigger, "validation") == ids(a, "validation")
    other_seed = tasks.load_task(name, cfg(split_seed=1))
    assert ids(other_seed, "test") != ids(a, "test")


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("key", ["train_size", "val_size", "test_size"])
def test_too_many_examples_names_the_key(name, key):
    sizes = {"train_size": 10, "val_size": 10, "test_size": 10, key: 10_000_000}
    with pytest.raises(ValueError, match=f"lower data.{key} to at most"):
        tasks.load_task(name, cfg(**sizes))


def test_negative_size_is_rejected():
    with pytest.raises(ValueError, match="data.val_size must be an int >= 0"):
        tasks.load_task("pubmed-conclusion", cfg(val_size=-1))


def test_unknown_task_lists_registered_ones():
    with pytest.raises(UnknownNameError, match="pubmed-conclusion"):
        tasks.load_task("nope", cfg())


def test_register_task_rejects_unknown_type():
    with pytest.raises(ValueError, match="valid types"):
        tasks.register_task("x", type="ner", description="d", source="s", license="l")


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

