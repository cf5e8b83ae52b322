"""The task catalogue behind `medpeft tasks`: type, source, sizes, labels or lengths, license; examples."""
from __future__ import annotations

import collections
import json
import statistics

from medpeft.registry import TASKS

SHOWN_CHARS = 700  # characters of a long text printed by `medpeft tasks show`
SHOWN_LABELS = 8  # labels listed per task in the catalogue


def words(value) -> int:
    return len(value) if isinstance(value, list) else len(str(value).split())


def describe_pool(spec) -> dict:
    """Sizes per source split, and the label counts or the median text/target length in words."""
    pools = spec.pool()
    examples = [ex for pool in pools.values() for ex in pool]
    info = {"sizes": {name: len(pool) for name, pool in pools.items()}}
    if spec.type == "summarization":
        info["text_words"] = statistics.median(words(ex["text"]) for ex in examples)
        info["target_words"] = statistics.median(words(ex["target"]) for ex in examples)
    else:
        targets = [t for ex in examples for t in (ex["target"] if isinstance(ex["target"], list) else [ex["target"]])]
        info["labels"] = collections.Counter(targets).most_common()
    return info


def format_sizes(spec, info: dict) -> str:
    sizes = ", ".join(f"{n:,} {name}" if name != "all" else f"{n:,} examples" for name, n in info["sizes"].items())
    if spec.eval_only:
        sizes += " (evaluation-only: test split only)"
    return sizes


def format_content(spec, info: dict) -> str:
    if "labels" not in info:
        return f"median length: input {info['text_words']:,.0f} words, target {info['target_words']:,.0f} words"
    unit = "tags" if spec.type == "ner" else "labels"
    shown = ", ".join(f"{name} {count}" for name, count in info["labels"][:SHOWN_LABELS])
    more = f", ... ({len(info['labels'])} {unit})" if len(info["labels"]) > SHOWN_LABELS else ""
    return f"{unit}: {shown}{more}"


def catalogue_lines() -> list[str]:
    """Every registered task, a header line and its details."""
    lines = []
    for name, spec in sorted(TASKS.items()):
        lines.append(f"{name}  [{spec.type}]  {spec.description}")
        if spec.pool is None:
            lines.append("    sizes: the hub data set's own splits (load with --online)")
        else:
            info = describe_pool(spec)
            lines.append(f"    sizes: {format_sizes(spec, info)}")
            lines.append(f"    {format_content(spec, info)}")
        lines.append(f"    source: {spec.source}")
        lines.append(f"    license: {spec.license}")
    return lines


def shorten(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)  # label or token lists
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f" ... [{len(text):,} characters]"


def example_lines(name: str, count: int = 2) -> list[str]:
    """The task's header and its first `count` examples (id, input, target)."""
    spec = TASKS[name]
    lines = [f"{name}  [{spec.type}]  {spec.description}", f"source: {spec.source}; license: {spec.license}"]
    if spec.pool is None:
        lines.append("examples: this task's data comes from the hub; run with --online to load it")
        return lines
    examples = [ex for pool in spec.pool().values() for ex in pool][:count]
    for i, ex in enumerate(examples, 1):
        lines += ["", f"--- example {i} (id {ex['id']})", "input:", shorten(ex["text"]),
                  *(["second text (pair):", shorten(ex["pair"])] if ex.get("pair") else []), "target:", shorten(ex["target"])]
    if spec.type == "ner":
        lines += ["", "tokens and tags, word by word:"] + [f"  {w}\t{t}" for w, t in zip(examples[0]["text"], examples[0]["target"])][:30]
    return lines
