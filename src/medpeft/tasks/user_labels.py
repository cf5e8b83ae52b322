"""Labels of your own data: one name per class, and a train split with something to learn.

A label is what the file writes, in NFC and without invisible marks at its ends (so that labels
that look the same are one class); equal JSON numbers are one class; a classification, multi-label
or NER train split with nothing to learn (one class, one label set, no entity) is refused.
"""
from __future__ import annotations

import ast
import json
import re
import unicodedata
from pathlib import Path

from medpeft.tasks.base import SPLITS, data_error
from medpeft.tasks.user_files import raise_problems

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # a label that reads as a number (no inf, nan, 1_000)


def strip_blank(text: str) -> str:
    """`text` without the spaces, control characters and invisible format marks (zero-width spaces,
    BOMs, direction marks) at its ends, which copy and paste leave: a text of only those is empty."""
    start, end = 0, len(text)
    while start < end and is_blank(text[start]):
        start += 1
    while end > start and is_blank(text[end - 1]):
        end -= 1
    return text[start:end]


def is_blank(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf")


def label_name(value) -> str | None:
    """A label value as a class name; None when it cannot be one (null, a list, an object).

    Text in NFC, so that an é typed as e + a combining accent is the same class as é, and without
    blanks at its ends (see strip_blank); true/false as JSON writes them; a number as Python writes it
    (1, 1.0: unify_number_labels makes equal numbers one class)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return strip_blank(unicodedata.normalize("NFC", value)) if isinstance(value, str) else None


def cell_list(value: str) -> list | None:
    """A list written in one cell, as JSON or as pandas' to_csv writes a list (`['I10', 'E11']`), else
    None; split on label_sep, it would make each combination of labels one odd label."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    for parse in (json.loads, ast.literal_eval):  # literal_eval reads literals only, never runs code
        try:
            parsed = parse(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(parsed, list):
            return parsed
    return None


def number_labels(value, task_type: str) -> dict[str, float]:
    """The label names of the numbers in a target (JSON numbers, or numbers of a list in a cell), with their values."""
    if task_type == "multilabel" and isinstance(value, str):
        value = cell_list(value)
    values = value if isinstance(value, list) else [value]
    return {label_name(v): float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)}


def labels_of(ex: dict) -> list[str]:
    return ex["target"] if isinstance(ex["target"], list) else [ex["target"]]


def given_labels(mapping: dict) -> list[str] | None:
    """task.labels as class names (see label_name), or None when it is not given."""
    given = mapping.get("labels")
    return [label_name(label) for label in given] if given else None


def as_number(label: str) -> float | None:
    return float(label) if NUMBER.fullmatch(label) else None


def unify_number_labels(path: Path, examples: list[dict], numbers: dict[str, float], given: list[str] | None) -> None:
    """Make labels that are one number one class, or refuse them.

    JSON numbers that are equal (1 and 1.0) are one class: JSON itself says they are the same
    number, and nobody means 1 and 1.0 as two classes. The class is named as task.labels writes it,
    else as the file first does. Labels written as text ('1' and '1.0' in a CSV) that read as one
    number are refused unless task.labels lists both: as text they may be two codes (ICD-9 250 and
    250.0), so neither merging them nor splitting them silently is safe."""
    given = given or []
    first: dict[float, str] = {}
    for name, value in numbers.items():
        first.setdefault(value, name)
    rename = {}
    for name, value in numbers.items():
        same = [label for label in given if as_number(label) == value]
        rename[name] = name if name in given else same[0] if len(same) == 1 else first[value]
    for ex in examples:
        renamed = [rename.get(label, label) for label in labels_of(ex)]
        ex["target"] = renamed if isinstance(ex["target"], list) else renamed[0]
    check_number_forms(path, examples, given)


def check_number_forms(path: Path, examples: list[dict], given: list[str]) -> None:
    """Refuse two labels that read as one number, written two ways, unless task.labels lists them."""
    seen: dict[float, tuple[str, int]] = {}
    for ex in examples:
        for label in labels_of(ex):
            value = None if label in given else as_number(label)
            if value is None:
                continue
            other, line = seen.setdefault(value, (label, ex["_line"]))
            if other != label:
                raise data_error(f"{path}:{ex['_line']}", f"label {label!r} is label {other!r} (line {line}) "
                                 "written another way: two classes, or one?",
                                 "write it one way in every record; if they are two classes (codes such as "
                                 "250 and 250.0), list both in task.labels")


MAX_SHOWN_LABELS = 30  # labels an error lists before '...'
FREE_TEXT_LABELS = 100  # more distinct labels than this, on over half the training records: a text column, not labels


def check_free_text(path: Path, train: list[dict], labels: list[str], mapping: dict) -> None:
    """Refuse a target column of texts (an answer, a note) read as class labels: one class per record."""
    if mapping["type"] == "classification" and len(labels) > FREE_TEXT_LABELS and len(labels) > len(train) / 2:
        field = mapping.get("target_field")
        raise data_error(str(path), f"field {field!r} has {len(labels):,} different values in {len(train):,} training "
                         "records: it reads as free text, not class labels",
                         "to generate such texts use type: summarization; for labels, point task.target_field at the "
                         "label column")


def check_cases(path: Path, train: list[dict], labels: list[str]) -> None:
    """Refuse one label written in two cases or spacings ('Positive', 'positive'): read as two classes, the
    rarer is a class of its own that the model can hardly learn, and its records are never counted right."""
    spellings: dict[str, list[str]] = {}
    for label in labels:
        spellings.setdefault(" ".join(label.casefold().split()), []).append(label)
    for forms in spellings.values():
        if len(forms) < 2:
            continue
        counts = {form: sum(form in labels_of(ex) for ex in train) for form in forms}
        rare = min(forms, key=lambda form: (counts[form], form))
        common = max(forms, key=lambda form: (counts[form], form))
        line = next(ex["_line"] for ex in train if rare in labels_of(ex))
        raise data_error(f"{path}:{line}", f"label {rare!r} ({counts[rare]} training record(s)) is label {common!r} "
                         f"({counts[common]}) written another way: two classes, or one?",
                         "write it one way in every record; if they are two classes, list both in task.labels")


def label_set(path: Path, splits: dict[str, list[dict]], mapping: dict) -> list[str] | None:
    """The given label set, or the train split's (ner: with O first); every label must be in it."""
    kind = mapping["type"]
    if kind == "summarization":
        return None
    given = given_labels(mapping)
    labels = given or sorted({label for ex in splits["train"] for label in labels_of(ex)})
    if not given:
        check_free_text(path, splits["train"], labels, mapping)
        check_cases(path, splits["train"], labels)
    if kind == "ner" and "O" in labels:
        labels = ["O"] + [label for label in labels if label != "O"]
    where = "task.labels" if given else "the labels of the train split"
    shown = ", ".join(labels[:MAX_SHOWN_LABELS]) + (f", ... ({len(labels):,} labels)" if len(labels) > MAX_SHOWN_LABELS else "")
    problems = [
        f"{path}:{ex['_line']}: label {label!r} ({split}) is not in the label set ({where}: {shown}). "
        f"Fix: correct the label, {'add it to task.labels' if given else 'add training examples with it, or list every label in task.labels'}"
        for split in SPLITS for ex in splits[split] for label in labels_of(ex) if label not in labels
    ]
    raise_problems(problems)
    return labels


def label_sets(examples: list[dict]) -> set[tuple[str, ...]]:
    return {tuple(sorted(set(labels_of(ex)))) for ex in examples}


def check_classes(path: Path, splits: dict[str, list[dict]], kind: str, also: str = "") -> None:
    """Refuse a train split with nothing to learn: one class (a one-class classifier scores 100 %),
    the same labels on every example (multilabel: each label on in all or in none), or no entity (NER).
    `also` ends each fix (another way out, such as a larger data.train_size)."""
    train = splits["train"]
    if kind == "ner" and all(tag == "O" for ex in train for tag in ex["target"]):
        raise data_error(str(path), "no sentence of the train split has an entity: every tag is O",
                         "add training sentences with entities tagged B-<type> and I-<type>" + also)
    if kind not in ("classification", "multilabel") or len(label_sets(train)) > 1:
        return
    only = ", ".join(map(repr, next(iter(label_sets(train))))) or "no labels"
    everywhere = [ex for split in SPLITS for ex in splits[split]]
    scope = "every record of the file" if len(label_sets(everywhere)) == 1 else "every example of the train split"
    if kind == "classification":
        raise data_error(str(path), f"{scope} has the label {only}: a one-class classifier learns nothing "
                         "and scores 100 %", "add records of at least one other class to the train split" + also)
    raise data_error(str(path), f"{scope} has the same labels ({only}): each label is on in every example or in "
                     "none, so there is nothing to learn", "add training records with other label sets" + also)
