"""The user's own data: `task: {type, path, text_field, target_field, ...}` in a grid.

The file (JSON lines or CSV, UTF-8) is validated before any training; every problem names the
file, the line and the fix. Splits come from a `split` column (train/validation/test) or from
fractions of a deterministic shuffle; a `data.*_size` that the grid names then cuts its split to the
first N of a deterministic shuffle (so a learning curve's smaller training sets lie inside its larger ones);
unnamed, a split stays whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from medpeft.config import USER_SIZES_KEY, user_task_name
from medpeft.errors import ConfigError
from medpeft.tasks.base import SPLIT_KEYS, SPLITS, TaskData, TaskSpec, check_task_data, data_error, shuffled
from medpeft.tasks.user_files import RECORD_SUFFIXES, raise_problems, read_records  # use/predict reads new records with these
from medpeft.tasks.user_labels import (cell_list, check_classes, given_labels, label_name, label_set, number_labels,
                                       strip_blank, unify_number_labels)

USER_TYPES = ("summarization", "classification", "multilabel", "ner")
USER_KEYS = {
    "type": "summarization | classification | multilabel | ner",
    "path": "a .jsonl, .csv or .tsv file (UTF-8), read relative to the current directory",
    "text_field": "the input column (ner: a list of tokens; default tokens)",
    "target_field": "the summary, label, label list or tag list column (ner: default tags)",
    "pair_field": "a second text per record, given to the model as a text pair (e.g. the note around a sentence; not ner)",
    "labels": "the label set (default: the labels seen in the train split)",
    "split_field": "column holding train/validation/test (default: split, when the file has it)",
    "fractions": "{train, validation, test} fractions when the file has no split column (default 0.8/0.1/0.1)",
    "id_field": "column with example ids (default: id when present, else the line number)",
    "label_sep": "separator of several labels in one CSV cell (multilabel; default ;)",
    "name": "task name in run ids and summaries (default user-<file stem>)",
    "instruction": "one-line instruction used to prompt decoder-only models",
    USER_SIZES_KEY: "set by medpeft: the data.*_size keys your grid names, which cut this file's splits",
}
DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
                 "dev": "validation", "test": "test"}
MIN_EXAMPLES = {"train": 4, "validation": 0, "test": 1}  # below this a split cannot train or score
INSTRUCTIONS = {
    "summarization": "Summarise this clinical text.",
    "classification": "Classify this clinical text.",
    "multilabel": "List every label that applies to this clinical text.",
    "ner": "Tag the entities in this text.",
}


def check_user_task(mapping: dict) -> dict:
    """Validate a user-data task mapping (keys, type, file, fields); return a plain copy. A problem is a
    ConfigError naming the task.* key."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"task must be a registered task name or a mapping, got {mapping!r}")
    unknown = sorted(set(mapping) - set(USER_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in task:; valid keys: {', '.join(USER_KEYS)}")
    if mapping.get("type") not in USER_TYPES:
        raise ConfigError(f"task.type must be one of {', '.join(USER_TYPES)}, got {mapping.get('type')!r}")
    path = mapping.get("path")
    if not isinstance(path, str) or not Path(path).expanduser().is_file():
        raise ConfigError(f"task.path {path!r} is not a file (relative paths are read from {Path.cwd()})")
    if Path(path).suffix.lower() not in RECORD_SUFFIXES:
        raise ConfigError(f"task.path {path!r} must be a .jsonl, .csv or .tsv file")
    if mapping["type"] == "ner" and Path(path).suffix.lower() != ".jsonl":
        raise ConfigError(f"task.path {path!r}: an ner task reads JSON lines, since its tokens and tags are lists "
                          '(one {"tokens": [...], "tags": [...]} per line)')
    for key in ("text_field", "target_field"):
        if mapping["type"] != "ner" and not isinstance(mapping.get(key), str):
            raise ConfigError(f"task.{key} must name a field of {path} ({USER_KEYS[key]})")
    if mapping.get("pair_field") is not None and (mapping["type"] == "ner" or not isinstance(mapping["pair_field"], str)):
        raise ConfigError(f"task.pair_field must name a text field of {path}, and an ner task takes none (remove "
                          f"task.pair_field); got {mapping['pair_field']!r}")
    labels = mapping.get("labels")
    names = [label_name(label) for label in labels] if isinstance(labels, list) else None
    if labels is not None and not (names and all(names) and len(set(names)) == len(names)):
        raise ConfigError(f"task.labels must be a list of distinct labels (text or numbers), got {labels!r}")
    fractions = mapping.get("fractions")
    if fractions is not None and (not isinstance(fractions, dict) or set(fractions) - set(SPLITS)
                                  or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in fractions.values())
                                  or abs(sum(fractions.values()) - 1) > 1e-6):
        raise ConfigError(f"task.fractions must map train/validation/test to fractions summing to 1, got {fractions!r}")
    sizes = mapping.get(USER_SIZES_KEY)
    if sizes is not None and not (isinstance(sizes, list) and set(sizes) <= set(SPLIT_KEYS.values())):
        raise ConfigError(f"task.{USER_SIZES_KEY} is set by medpeft (the data.*_size keys the grid names): a list of "
                          f"{', '.join(SPLIT_KEYS.values())}; got {sizes!r}: remove it from task:")
    return dict(mapping)


def user_task_spec(mapping: dict) -> TaskSpec:
    """The task of a user-data mapping, validated (keys, type, file, fields); it is not registered:
    a run's plan holds it, so reading a config never changes the registry."""
    mapping = check_user_task(mapping)
    name = user_task_name(mapping)

    def load(data_cfg: Any, online: bool = False) -> TaskData:
        return check_task_data(spec, load_user_data(name, mapping, data_cfg))

    spec = TaskSpec(name, mapping["type"], f"user data from {mapping['path']}", f"user file {mapping['path']}",
                    "the user's own data", load, pool=lambda: {"all": read_user_examples(mapping)[0]})
    return spec


# --- reading -------------------------------------------------------------------------


def fields_of(mapping: dict) -> tuple[str, str]:
    ner = mapping["type"] == "ner"
    return mapping.get("text_field") or ("tokens" if ner else "text"), mapping.get("target_field") or ("tags" if ner else "target")


def parse_target(value, task_type: str, sep: str):
    """The target as the task type wants it: label names (labels of a CSV multilabel cell split on
    `sep`), NER tags cleaned as labels are; None for a label that cannot be one."""
    if task_type == "multilabel" and isinstance(value, str):
        listed = cell_list(value)
        if listed is None:
            return [name for name in map(label_name, value.split(sep)) if name]
        value = listed
    if task_type == "multilabel" and isinstance(value, list):
        return [label_name(v) for v in value]
    if task_type == "classification":
        return label_name(value)
    if task_type == "ner" and isinstance(value, list):
        return [label_name(v) if isinstance(v, str) else v for v in value]
    return value


def json_kind(value) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def ner_problem(text, target, text_field: str, target_field: str) -> tuple[str, str] | None:
    if not (isinstance(text, list) and text and all(isinstance(t, str) and strip_blank(t) for t in text)):
        return (f"field {text_field!r} must be a non-empty list of tokens, each with a visible character",
                "fix the tokens or drop the line")
    if not (isinstance(target, list) and len(target) == len(text)):
        return f"field {target_field!r} must be a list with one tag per token ({len(text)})", "give every token a tag"
    bad = [t for t in target if not (t == "O" or (isinstance(t, str) and t[:2] in ("B-", "I-") and len(t) > 2))]
    return (f"tags {bad} are not BIO tags", "use O, B-<type> or I-<type>") if bad else None


def record_problem(record: dict, mapping: dict) -> tuple[str, str] | None:
    """(problem, fix) for one record's fields and values, or None when it is usable."""
    text_field, target_field = fields_of(mapping)
    for field in (text_field, target_field):
        if field not in record:
            return (f"no field {field!r} (the record has {', '.join(map(repr, record)) or 'no fields'})",
                    f"add {field!r} to every record, or set task.{'text' if field == text_field else 'target'}_field "
                    "to the right column")
    raw = record[target_field]
    text, target = record[text_field], parse_target(raw, mapping["type"], mapping.get("label_sep", ";"))
    if mapping["type"] == "ner":
        return ner_problem(text, target, text_field, target_field)
    if not isinstance(text, (str, type(None))):
        return f"field {text_field!r} holds {json_kind(text)}, not text", "write the text as a string (in quotes)"
    if not text or not strip_blank(text):
        return f"empty text in field {text_field!r}", "fill in the text or remove the line"
    pair_field = mapping.get("pair_field")
    if pair_field and not isinstance(record.get(pair_field), str):
        return (f"no text in field {pair_field!r} (task.pair_field)",
                f"add {pair_field!r} (a string, may be empty) to every record, or drop task.pair_field")
    if mapping["type"] == "multilabel":
        ok = isinstance(target, list) and all(target)
        return None if ok else (f"field {target_field!r} must be a list of labels (text or numbers)",
                                'write ["label a", "label b"] (CSV: "a;b")')
    if mapping["type"] == "classification" and isinstance(raw, (list, dict)):
        return (f"field {target_field!r} holds {json_kind(raw)}, not one label",
                "write one label (text or a number) per record; for several labels per record use type: multilabel")
    if mapping["type"] == "summarization" and not isinstance(raw, (str, type(None))):
        return f"field {target_field!r} holds {json_kind(raw)}, not text", "write the summary as a string (in quotes)"
    if not isinstance(target, str) or not strip_blank(target):
        return f"empty target in field {target_field!r}", "fill in the target or remove the line"
    return None


def read_user_examples(mapping: dict) -> tuple[list[dict], dict[str, str]]:
    """Validated examples ({id, text, target, _line}) and each example's split from the file (maybe empty)."""
    path = Path(mapping["path"]).expanduser()
    text_field, target_field = fields_of(mapping)
    records = read_records(path)
    if not records:
        raise data_error(str(path), "the file has no records", "add one record per line")
    split_field = mapping.get("split_field") or "split"
    id_field = mapping.get("id_field") or "id"
    problems, examples, file_splits, numbers = [], [], {}, {}
    for line, record in records:
        problem = record_problem(record, mapping)
        if problem is not None:
            problems.append(f"{path}:{line}: {problem[0]}. Fix: {problem[1]}")
            continue
        ex_id = str(record[id_field]) if record.get(id_field) not in (None, "") else f"line-{line:06d}"
        target = parse_target(record[target_field], mapping["type"], mapping.get("label_sep", ";"))
        if mapping["type"] in ("classification", "multilabel"):
            # In file order: a number's first form names its class.
            numbers.update(number_labels(record[target_field], mapping["type"]))
        text = record[text_field]
        examples.append({"id": ex_id, "text": text if mapping["type"] == "ner" else text.strip(),
                         "target": target if isinstance(target, list) else target.strip(), "_line": line})
        if mapping.get("pair_field"):  # kept when empty: every example of a pair task has the same inputs
            examples[-1]["pair"] = record[mapping["pair_field"]].strip()
        if record.get(split_field) not in (None, ""):
            split = SPLIT_ALIASES.get(str(record[split_field]).strip().lower())
            if split is None:
                problems.append(f"{path}:{line}: split {record[split_field]!r} is not train, validation or test. "
                                f"Fix: write train, validation or test in {split_field!r}")
            file_splits[ex_id] = split
    raise_problems(problems)
    unify_number_labels(path, examples, numbers, given_labels(mapping))
    return examples, file_splits


# --- splits and labels ---------------------------------------------------------------


def assign_splits(path: Path, examples: list[dict], file_splits: dict[str, str], mapping: dict, seed: int) -> dict[str, list[dict]]:
    """Splits from the file's split column when every record has one, else from fractions."""
    if file_splits:
        missing = [ex for ex in examples if ex["id"] not in file_splits]
        if missing:
            field = mapping.get("split_field") or "split"
            raise data_error(f"{path}:{missing[0]['_line']}", f"no {field!r} value, while other records have one",
                             f"give every record a {field!r} (train/validation/test), or none to split by task.fractions")
        return {split: [ex for ex in examples if file_splits[ex["id"]] == split] for split in SPLITS}
    given = mapping.get("fractions")
    fractions = {split: float(given.get(split, 0.0)) for split in SPLITS} if given else DEFAULT_FRACTIONS
    order = shuffled(examples, seed)
    n_test = round(fractions["test"] * len(order))
    n_val = round(fractions["validation"] * len(order))
    # Test first, as for registered tasks.
    return {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def cut_splits(path: Path, splits: dict[str, list[dict]], mapping: dict, data_cfg: Any,
               from_file: bool) -> dict[str, list[dict]]:
    """Each split whose data.*_size the grid names (mapping[USER_SIZES_KEY]) cut to the first N of its
    examples shuffled by data.split_seed: a smaller train_size's examples lie inside a larger one's."""
    named = mapping.get(USER_SIZES_KEY) or ()
    cut = dict(splits)
    for split in SPLITS:
        key = SPLIT_KEYS[split]
        if key not in named:
            continue
        size = getattr(data_cfg, key)
        if size < MIN_EXAMPLES[split]:
            raise ConfigError(f"data.{key} is {size}, fewer than the {MIN_EXAMPLES[split]} examples the {split} split "
                              f"needs to train and score; raise it, or remove it to use the whole split of {path}")
        if size > len(splits[split]):
            how = "the file's split column" if from_file else "task.fractions"
            raise ConfigError(f"data.{key} is {size}, but the {split} split of {path} has {len(splits[split])} examples "
                              f"(set by {how}); lower data.{key} to at most {len(splits[split])}, or remove it to "
                              f"use the whole split")
        cut[split] = shuffled(splits[split], data_cfg.split_seed)[:size]
    return cut


def check_split_sizes(path: Path, splits: dict[str, list[dict]], from_file: bool) -> None:
    for split, minimum in MIN_EXAMPLES.items():
        if len(splits[split]) < minimum:
            how = "add rows with that split value" if from_file else "add data or raise its share in task.fractions"
            raise data_error(str(path), f"the {split} split has {len(splits[split])} examples, fewer than the "
                                        f"{minimum} needed to train and score", how)


def load_user_data(name: str, mapping: dict, data_cfg: Any) -> TaskData:
    """Read, validate and split the user's file; the data.*_size keys the grid names cut their splits."""
    path = Path(mapping["path"]).expanduser()
    examples, file_splits = read_user_examples(mapping)
    ids = [ex["id"] for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(ex for i, ex in enumerate(examples) if ex["id"] in ids[:i])
        raise data_error(f"{path}:{dup['_line']}", f"id {dup['id']!r} is used twice", "give every record its own id")
    splits = assign_splits(path, examples, file_splits, mapping, data_cfg.split_seed)
    check_split_sizes(path, splits, bool(file_splits))
    labels = label_set(path, splits, mapping)  # of the whole file: the same label set at every data.train_size
    splits = cut_splits(path, splits, mapping, data_cfg, bool(file_splits))
    cut = "train_size" in (mapping.get(USER_SIZES_KEY) or ())
    check_classes(path, splits, mapping["type"], "; or raise data.train_size" if cut else "")
    clean = {split: [{k: ex[k] for k in ("id", "text", "target", "pair") if k in ex} for ex in exs]
             for split, exs in splits.items()}
    return TaskData(name, mapping["type"], clean, labels, mapping.get("instruction") or INSTRUCTIONS[mapping["type"]])
