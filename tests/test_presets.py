"""The shipped grids: every preset expands and validates offline, and the offline sweeps and the
domain pre-training study run end to end on tiny settings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpeft import cli
from medpeft.config import load_grid
from medpeft.models import MODELS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
TINY = ["--set", "data.train_size=8", "--set", "data.val_size=0", "--set", "data.test_size=4",
        "--set", "train.max_steps=1", "--set", "seed=0", "--set", "train.batch_size=4"]


def test_the_documented_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"quick", "paper-summarization", "paper-clinical", "offline-summarization", "offline-clinical",
            "sweep-lora-rank", "sweep-prompt-tokens", "domain-pretraining"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_expands_and_validates_offline(path):
    grid = load_grid(path)
    assert grid.runs and grid.name == path.stem
    assert len({cfg.run_id for cfg in grid.runs}) == len(grid.runs)


@pytest.mark.parametrize("path", [p for p in PRESETS if p.stem.startswith("paper-")], ids=lambda p: p.stem)
def test_paper_presets_need_only_the_hub(path):
    """Their models are hub models: offline, the run stops before training and says to pass --online."""
    models = {cfg.model for cfg in load_grid(path).runs}
    assert all(m not in MODELS or MODELS[m].source == "hub" for m in models)


def test_offline_presets_use_only_offline_models():
    for stem in ("quick", "quick-summarization", "offline-summarization", "offline-clinical", "sweep-lora-rank",
                 "sweep-prompt-tokens", "sentence-roles", "pubmedqa-check"):
        for cfg in load_grid(CONFIGS / f"{stem}.yaml").runs:
            assert MODELS[cfg.model].source == "packaged", (stem, cfg.model)


def test_pubmedqa_runs_only_in_the_grid_that_checks_it():
    """Every method stays at its majority answer offline (README): other presets would only burn time on it."""
    for path in PRESETS:
        if path.stem not in ("pubmedqa-check", "paper-clinical"):  # paper-clinical: hub models on GPUs, the study's task
            assert not {cfg.task for cfg in load_grid(path).runs} & {"pubmedqa", "pubmedqa-pqaa"}, path.stem


def test_paper_summarization_matches_the_study():
    runs = load_grid(CONFIGS / "paper-summarization.yaml").runs
    assert {c.model for c in runs} == {"flan-t5-small", "flan-t5-base", "flan-t5-large"}
    assert {c.seed for c in runs} == {0, 1, 2}
    by_method = {c.method: c for c in runs}
    assert set(by_method) == {"lora", "prompt_tuning", "full"}
    assert by_method["lora"].method_args["r"] == 16 and by_method["lora"].method_args["lora_alpha"] == 32
    assert by_method["lora"].train.lr == 3e-4 and by_method["full"].train.lr == 5e-5
    assert by_method["prompt_tuning"].method_args["num_virtual_tokens"] == 20 and by_method["prompt_tuning"].train.lr == 3e-2
    assert all(c.data.max_source_tokens == 1024 and c.data.max_target_tokens == 256 and c.generation.num_beams == 4 for c in runs)
    assert all((c.generation.length_penalty, c.generation.no_repeat_ngram_size) == (2.0, 3) for c in runs)  # the study's code


@pytest.mark.parametrize("stem, axis, values", [
    ("sweep-lora-rank", "r", [1, 2, 4, 8, 16, 32, 64]),
    ("sweep-prompt-tokens", "num_virtual_tokens", [5, 10, 20, 50, 100]),
])
def test_sweeps_run_end_to_end_on_tiny_settings(tmp_path, stem, axis, values, assets_ready):
    code = cli.main(["run", str(CONFIGS / f"{stem}.yaml"), "--runs-dir", str(tmp_path), "--set", "model=tiny-bert", *TINY])
    assert code == 0
    results = [json.loads(p.read_text()) for p in (tmp_path / stem).glob("*/result.json")]
    assert all(r["status"] == "ok" for r in results)
    swept = sorted(r["config"]["method_args"][axis] for r in results if r["method"] != "untrained")
    assert swept == values
    assert (tmp_path / stem / "summary.md").is_file()


@pytest.mark.slow
def test_domain_pretraining_study_end_to_end(tmp_path, monkeypatch, assets_ready):
    """Pre-train MiniLM on MEDLINE for a step, then run the study grid on tiny settings."""
    monkeypatch.chdir(tmp_path)  # the grid names the adapted model by the relative path models/...
    grid = str(CONFIGS / "domain-pretraining.yaml")
    assert cli.main(["pretrain", "--model", "minilm-l6", "--out", "models/minilm-l6-medline", "--for-grid", grid,
                     "--max-docs", "32", "--max-steps", "1", "--batch-size", "8"]) == 0
    info = json.loads((tmp_path / "models/minilm-l6-medline/pretrain.json").read_text())
    assert info["objective"] == "masked-lm" and info["corpus"]["dropped_for_evaluation"] > 0
    assert cli.main(["run", grid, "--runs-dir", "runs", *TINY]) == 0
    results = [json.loads(p.read_text()) for p in Path("runs/domain-pretraining").glob("*/result.json")]
    assert {r["status"] for r in results} == {"ok"}
    assert {r["model"] for r in results} == {"minilm-l6", "models/minilm-l6-medline"}
    assert {r["method"] for r in results} == {"untrained", "full", "lora", "ia3"}


def test_offline_clinical_trains_drug_reviews_on_every_training_review(assets_ready):
    """At 300 reviews and 3 epochs every method and learning rate predicted the majority ("positive")
    for every review; the preset gives drug-review the whole training file and 5 epochs."""
    from medpeft.data import assets
    from medpeft.tasks.clinical import drug_pools

    try:
        assets.wheel_path("drugreview")
    except assets.AssetError as err:
        pytest.skip(str(err))
    grid = load_grid(CONFIGS / "offline-clinical.yaml").runs
    runs = [c for c in grid if c.task == "drug-review"]
    assert runs and all(c.data.train_size + c.data.val_size == len(drug_pools()["train"]) for c in runs)
    assert all(c.train.epochs == 5 for c in runs)
    others = [c for c in grid if c.task != "drug-review"]
    assert {c.data.train_size for c in others} == {300} and {c.train.epochs for c in others} == {3}
