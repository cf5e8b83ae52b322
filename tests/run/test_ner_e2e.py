"""NER on a realistic BIO file, end to end through the command line: sentences of varied lengths train
(a CPU slice cut to its longest row once left labels that BERT's loss could not view), and the report
carries entity F1. Tiny BERT for speed; the file is real MEDLINE text with MeSH headings tagged."""
from __future__ import annotations

import json

import pytest

from medpeft.cli import main

from helpers import write_bio_file


@pytest.fixture(scope="module")
def ner_grid(tmp_path_factory, assets_ready):
    folder = tmp_path_factory.mktemp("ner")
    data = write_bio_file(folder / "medline-bio.jsonl")
    grid = folder / "ner.yaml"
    grid.write_text(f"name: ner-e2e\nbase:\n  task: {{type: ner, path: {data}, name: medline-bio, "
                    "fractions: {train: 0.6, validation: 0.1, test: 0.3}}\n  model: tiny-bert\n  train: {epochs: 1, batch_size: 8}\n"
                    "grid:\n  method: [lora, full, ia3]\n")
    code = main(["run", str(grid), "--runs-dir", str(folder / "runs"), "--quiet"])
    return folder / "runs" / "ner-e2e", code


def test_every_method_trains_on_sentences_of_varied_lengths(ner_grid):
    grid_dir, code = ner_grid
    results = [json.loads(p.read_text()) for p in grid_dir.glob("*/result.json")]
    assert code == 0
    assert sorted(r["method"] for r in results) == ["full", "ia3", "lora", "untrained"]
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    trained = [r for r in results if r["method"] != "untrained"]
    assert all(r["training"]["steps"] > 0 and r["training"]["train_loss"] > 0 for r in trained)
    assert all(set(r["metrics"]) >= {"entity_f1", "entity_precision", "entity_recall"} for r in results)


def test_the_report_carries_entity_f1_for_every_method(ner_grid):
    grid_dir, _ = ner_grid
    assert main(["report", str(grid_dir), "--resamples", "50"]) == 0
    report = (grid_dir / "report.md").read_text()
    assert "| Entity F1 |" in report and "Best Entity F1" in report
    for method in ("lora", "full", "ia3"):
        assert method in report
