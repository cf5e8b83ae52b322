"""Small helpers shared by tests in several folders (tests/ is on pytest's pythonpath)."""
from __future__ import annotations

from medpeft.plan import plan_run
from medpeft.run.execute import run_experiment


def run_config(cfg, run_dir, online: bool = False):
    """Plan and run one config, as `medpeft run` does for each run of a grid."""
    return run_experiment(plan_run(cfg, online), run_dir)


def load_for_kind(path: str, kind: str, labels=None):
    """load_model as a run of model kind `kind` loads it: model, tokenizer, new modules."""
    from medpeft.models import load_model
    from medpeft.run.kinds import KINDS

    spec = KINDS[kind]
    return load_model(path, spec.auto_class, labels if spec.new_head else None, spec.problem_type)


def checked_config(raw: dict):
    """A config from plain data with its names checked and defaults filled, as `medpeft run` checks it."""
    from medpeft.config import config_from_dict
    from medpeft.plan import resolve_config

    return resolve_config(config_from_dict(raw))


def write_bio_file(path, sentences: int = 240, seed: int = 0):
    """A realistic BIO file (`{"id", "tokens", "tags"}` JSONL) of real MEDLINE sentences of varied lengths
    (2 to 120 words), with the article's MeSH headings tagged where they occur verbatim: multi-word headings
    as B-/I-Heading, one-word ones as B-Term; plus a few rows of odd shapes (Unicode words, a one-word
    sentence, an entity at the very end). Not a fixture of equal-length sentences: NER once failed only on
    sentences of different lengths."""
    import json
    import random
    import re

    from medpeft.data.medline import load_citations

    rng, rows = random.Random(seed), []
    citations = load_citations()
    for citation in rng.sample(citations, len(citations)):
        headings = [m["name"].split(",")[0].lower().split() for m in citation["mesh"]]
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(s["text"] for s in citation["sections"])):
            tokens = sentence.split()
            if not 2 <= len(tokens) <= 120:
                continue
            tags, words = ["O"] * len(tokens), [t.lower().strip(".,;:()") for t in tokens]
            for heading in headings:
                kind = "Heading" if len(heading) > 1 else "Term"
                for i in range(len(words) - len(heading) + 1):
                    if words[i:i + len(heading)] == heading and set(tags[i:i + len(heading)]) == {"O"}:
                        tags[i:i + len(heading)] = [f"B-{kind}"] + [f"I-{kind}"] * (len(heading) - 1)
            if set(tags) != {"O"} or rng.random() < 0.2:
                rows.append({"id": f"{citation['pmid']}-{len(rows)}", "tokens": tokens, "tags": tags})
            if len(rows) == sentences - 3:
                break
        if len(rows) == sentences - 3:
            break
    rows += [{"id": "odd-1", "tokens": ["Fièvre", "à", "38,5", "°C", "après", "Ménière"], "tags": ["B-Term", "O", "O", "O", "O", "B-Term"]},
             {"id": "odd-2", "tokens": ["Hypertension"], "tags": ["B-Term"]},
             {"id": "odd-3", "tokens": ["患者", "有", "高血压", "和", "2型糖尿病"], "tags": ["O", "O", "B-Term", "O", "B-Heading"]}]
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
