"""Domain pre-training: the corpus leaves out evaluation abstracts, and the output is a usable model."""
from __future__ import annotations

import json

import pytest
import torch

from medpeft.config import config_from_dict
from medpeft.pretrain import PretrainConfig, build_corpus, evaluation_pmids, pretrain
from medpeft.registry import TASKS
from helpers import run_config

GRID = """
name: g
base: {task: pubmed-rct, model: tiny-bert, method: lora,
       data: {train_size: 8, val_size: 4, test_size: 20}}
"""


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    return path


def test_corpus_leaves_out_every_evaluation_abstract(grid_file, assets_ready):
    excluded = evaluation_pmids([grid_file])
    cfg = config_from_dict({"task": "pubmed-rct", "model": "tiny-bert", "method": "lora",
                            "data": {"train_size": 8, "val_size": 4, "test_size": 20}})
    task = TASKS["pubmed-rct"].load(cfg.data)
    expected = {ex["id"].split("-")[0] for split in ("validation", "test") for ex in task.splits[split]}
    assert excluded == expected and expected
    docs, stats = build_corpus(excluded, max_docs=0, seed=0)
    assert stats["dropped_for_evaluation"] == len(excluded)
    from medpeft.data.medline import latest_versions, load_citations

    texts = {c["pmid"]: " ".join(s["text"] for s in c["sections"]) for c in latest_versions(load_citations())}
    held_out = {texts[p] for p in excluded}
    assert not any(doc.split("\n", 1)[-1] in held_out for doc in docs)  # no test text leaks


def test_corpus_is_deterministic_and_capped(assets_ready):
    a, _ = build_corpus(set(), max_docs=50, seed=3)
    b, _ = build_corpus(set(), max_docs=50, seed=3)
    assert a == b and len(a) == 50


@pytest.mark.parametrize("model, objective", [("tiny-bert", "masked-lm"), ("tiny-llama", "causal-lm")])
def test_pretrained_model_is_usable_in_a_run(tmp_path, grid_file, model, objective, assets_ready):
    out = tmp_path / f"{model}-medline"
    pretrain(PretrainConfig(model=model, out=str(out), exclude_grids=(str(grid_file),), max_docs=16, max_steps=2,
                            batch_size=8, lr=1e-3), log=lambda *_: None)
    info = json.loads((out / "pretrain.json").read_text())
    assert info["objective"] == objective and info["steps"] == 2
    task = "pubmed-rct" if objective == "masked-lm" else "pubmed-conclusion"
    cfg = config_from_dict({"task": task, "model": str(out), "method": "lora", "data": {
        "train_size": 8, "val_size": 0, "test_size": 4, "max_source_tokens": 32, "max_target_tokens": 8},
        "train": {"max_steps": 1, "batch_size": 4}})
    result = run_config(cfg, tmp_path / "run")
    assert result.status == "ok"


def test_adapted_encoder_keeps_its_pooler_and_changes_its_encoder(tmp_path, grid_file, assets_ready):
    from transformers import AutoModel

    from medpeft.models import resolve_model

    out = tmp_path / "adapted"
    pretrain(PretrainConfig(model="tiny-bert", out=str(out), exclude_grids=(str(grid_file),), max_docs=16,
                            max_steps=2, batch_size=8, lr=1e-2), log=lambda *_: None)
    base = AutoModel.from_pretrained(resolve_model("tiny-bert", False))
    adapted = AutoModel.from_pretrained(out)
    assert torch.equal(base.pooler.dense.weight, adapted.pooler.dense.weight)  # not re-initialised
    assert not torch.equal(base.encoder.layer[0].attention.self.query.weight, adapted.encoder.layer[0].attention.self.query.weight)
