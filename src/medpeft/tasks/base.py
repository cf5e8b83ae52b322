"""The task registry's building blocks: specs, loaded data, deterministic splits, data errors.

A task is one decorated loader function (``@register_task(...)``); it lands in
``registry.TASKS`` as a ``TaskSpec``. Every example is ``{"id", "text", "target"}``:

- summarization: text and target are strings (the reference summary);
- classification: the target is a label name;
- multilabel: the target is a list of label names (possibly empty);
- ner: text is a list of tokens and target the list of their BIO tags.

Splits are deterministic on any machine: examples are sorted by id, shuffled with
``random.Random(split_seed)``, and taken test first, then validation, then train, so
the test set does not move when ``train_size`` changes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from medpeft.config import SPLIT_KEYS  # the order splits are filled in, and the config key that sizes each
from medpeft.errors import ConfigError, DataError
from medpeft.registry import TASKS

TASK_TYPES = ("summarization", "classification", "multilabel", "ner")
SPLITS = ("train", "validation", "test")


def data_error(where: str, problem: str, fix: str) -> DataError:
    """`where` is 'file:line' (or a file); the message ends with how to fix it."""
    return DataError(f"{where}: {problem}. Fix: {fix}")


@dataclass
class TaskData:
    """Loaded examples of one task, split three ways."""

    name: str
    type: str
    splits: dict[str, list[dict]]  # "train"/"validation"/"test" -> [{"id", "text", "target"}, "pair" optional]
    labels: list[str] | None  # label set in a fixed order (classification, multilabel, ner tags); None otherwise
    instruction: str  # one-line instruction for prompting decoder-only LMs


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: what it is, where its data comes from and how to load it."""

    name: str
    type: str  # one of TASK_TYPES
    description: str  # one line
    source: str  # where the data comes from
    license: str
    load: Callable[..., TaskData]  # load(data_cfg, online=False) -> TaskData
    pool: Callable[[], dict[str, list[dict]]] | None = None  # every example by source split (catalogue)
    eval_only: bool = False  # no train split: only untrained (zero-shot or trained-elsewhere) models
    online: bool = False  # data comes from the hub (needs --online)
    pair: str = ""  # what an example's second text (`pair`) holds, for its model card; "" when it has none


def check_example(task: str, split: str, ex: dict, task_type: str, labels: list[str] | None) -> None:
    """Raise DataError if one example does not have its task type's format."""
    if set(ex) - {"pair"} != {"id", "text", "target"}:
        raise DataError(f"task {task!r} {split} example {ex.get('id')!r} has keys {sorted(ex)} (id, text, target and "
                        "an optional text `pair`)")
    if "pair" in ex and (task_type == "ner" or not isinstance(ex["pair"], str)):
        raise DataError(f"task {task!r} example {ex['id']!r}: its second text (`pair`) must be a string, and an NER "
                        f"task has none; got {type(ex['pair']).__name__} in a {task_type} task")
    target = ex["target"]
    if task_type == "classification" and target not in labels:
        raise DataError(f"task {task!r} example {ex['id']} has unknown label {target!r}")
    if task_type == "multilabel" and not (isinstance(target, list) and set(target) <= set(labels)):
        raise DataError(f"task {task!r} example {ex['id']} has labels {target!r} outside the label set")
    if task_type == "ner":
        if len(ex["text"]) != len(target) or not set(target) <= set(labels):
            raise DataError(f"task {task!r} example {ex['id']} has {len(ex['text'])} tokens, {len(target)} tags "
                            f"or tags outside {labels}")


def check_task_data(spec: TaskSpec, data: TaskData) -> TaskData:
    """Raise DataError if a loader's output does not match its spec and the example format."""
    if (data.name, data.type) != (spec.name, spec.type):
        raise DataError(f"task {spec.name!r} loader returned data for {data.name!r} ({data.type})")
    if sorted(data.splits) != sorted(SPLITS):
        raise DataError(f"task {spec.name!r} splits are {sorted(data.splits)}, expected {list(SPLITS)}")
    if (data.labels is None) != (data.type == "summarization"):
        raise DataError(f"task {spec.name!r} ({data.type}) has labels {data.labels!r}")
    for split, examples in data.splits.items():
        for ex in examples:
            check_example(spec.name, split, ex, data.type, data.labels)
    return data


def register_task(name: str, type: str, description: str, source: str, license: str, *,
                  pool: Callable[[], dict[str, list[dict]]] | None = None,
                  eval_only: bool = False, online: bool = False, pair: str = "") -> Callable:
    """Decorator: register a loader `fn(data_cfg)` (`fn(data_cfg, online)` for hub tasks) as task `name`."""
    if type not in TASK_TYPES:
        raise ValueError(f"task {name!r} has type {type!r}; valid types: {', '.join(TASK_TYPES)}")

    def decorator(fn: Callable[..., TaskData]) -> Callable[..., TaskData]:
        def load(data_cfg: Any, online: bool = False) -> TaskData:
            return check_task_data(spec, fn(data_cfg, online) if spec.online else fn(data_cfg))

        load.__doc__ = fn.__doc__
        spec = TaskSpec(name, type, description, source, license, load, pool, eval_only, online, pair)
        TASKS.register(name)(spec)
        return fn

    return decorator


def load_task(name: str, data_cfg: Any, online: bool = False) -> TaskData:
    """Load the splits of registered task `name` (unknown names list the registered ones)."""
    return TASKS[name].load(data_cfg, online=online)


def offline_task_names() -> list[str]:
    return sorted(n for n, s in TASKS.items() if not s.online)


# --- splits ------------------------------------------------------------------------


def split_sizes(data_cfg: Any) -> dict[str, int]:
    """Return the requested size of each split, in fill order (test, validation, train)."""
    sizes = {split: getattr(data_cfg, key) for split, key in SPLIT_KEYS.items()}
    for split, size in sizes.items():
        if not isinstance(size, int) or size < 0:
            raise ConfigError(f"data.{SPLIT_KEYS[split]} must be an int >= 0, got {size!r}")
    return sizes


def too_few_error(task: str, have: str, sizes: dict[str, int], split: str, room: int) -> ConfigError:
    """Build the error for asking more examples than exist, naming the config key to lower."""
    asked = ", ".join(f"data.{SPLIT_KEYS[s]}={n}" for s, n in sizes.items())
    return ConfigError(
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


def sort_key(pmid: str) -> tuple[int, str]:
    """Sort PMIDs numerically (shorter digit strings first), any other id as text."""
    return (len(pmid), pmid) if pmid.isdigit() else (1 << 30, pmid)


def shuffled(examples: list[dict], seed: int) -> list[dict]:
    """Examples sorted by id, then shuffled by `seed`: the same order on every machine."""
    order = sorted(examples, key=lambda ex: sort_key(ex["id"]))
    random.Random(seed).shuffle(order)
    return order


def split_examples(task: str, examples: list[dict], data_cfg: Any) -> dict[str, list[dict]]:
    """Shuffle examples deterministically and cut test, validation, train of the asked sizes."""
    sizes = split_sizes(data_cfg)
    if sum(sizes.values()) > len(examples):
        split, room = first_short_split(sizes, len(examples))
        raise too_few_error(task, f"{len(examples)} examples", sizes, split, room)
    order = shuffled(examples, data_cfg.split_seed)
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = [dict(ex) for ex in order[start:start + size]]
        start += size
    return {split: splits[split] for split in SPLITS}


def split_predefined(task: str, pools: dict[str, list[dict]], data_cfg: Any) -> dict[str, list[dict]]:
    """Cut splits from the source's own train/test pools: test from "test"; validation from
    "validation" if the source has one, else from the front of "train"; train from the rest."""
    sizes = split_sizes(data_cfg)
    order = {name: shuffled(pool, data_cfg.split_seed) for name, pool in pools.items()}
    source = {"test": "test", "validation": "validation" if "validation" in pools else "train", "train": "train"}
    taken = {name: 0 for name in pools}
    splits = {}
    for split, size in sizes.items():
        pool = source[split]
        room = len(order[pool]) - taken[pool]
        if size > room:
            counts = ", ".join(f"{len(p)} {n}" for n, p in pools.items())
            raise too_few_error(task, f"{counts} examples (its own splits)", sizes, split, room)
        splits[split] = [dict(ex) for ex in order[pool][taken[pool]:taken[pool] + size]]
        taken[pool] += size
    return {split: splits[split] for split in SPLITS}


def split_eval_only(task: str, examples: list[dict], data_cfg: Any) -> dict[str, list[dict]]:
    """Evaluation-only: a test split of data.test_size, empty train and validation (their sizes are ignored)."""
    size = data_cfg.test_size
    if size > len(examples):
        raise ConfigError(f"task {task!r} has only {len(examples)} examples (evaluation-only) but the config asks for "
                          f"data.test_size={size}; lower data.test_size to at most {len(examples)}")
    return {"train": [], "validation": [], "test": [dict(ex) for ex in shuffled(examples, data_cfg.split_seed)[:size]]}


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


FEW_SHOT_TYPES = ("classification", "ner")


def example_classes(ex: dict, task_type: str) -> set[str]:
    """The classes an example counts towards: its label, or the entity types of its B- tags (NER)."""
    if task_type == "classification":
        return {ex["target"]}
    return {tag[2:] for tag in ex["target"] if tag.startswith("B-")}


def sample_per_class(examples: list[dict], k: int, seed: int, task_type: str) -> tuple[list[dict], dict[str, int]]:
    """A few-shot training split: up to `k` examples of each class, the same for the same seed.

    Classification takes k examples per label. NER, whose sentences hold several entity types, uses
    the greedy sampling of few-shot NER: a sentence is taken while any of its entity types has fewer
    than k, so a type may end with a little more than k; sentences without entities are left out.
    Returns the examples (in the shuffled order) and the count per class; a class with fewer than k
    examples in the training split keeps what it has."""
    if task_type not in FEW_SHOT_TYPES:
        raise ConfigError(f"data.per_class samples classes; a {task_type} task has none (use data.train_size)")
    counts: dict[str, int] = {}
    chosen = []
    for ex in shuffled(examples, seed):
        classes = example_classes(ex, task_type)
        if classes and any(counts.get(c, 0) < k for c in classes):
            chosen.append(ex)
            for c in classes:
                counts[c] = counts.get(c, 0) + 1
    return chosen, dict(sorted(counts.items()))
