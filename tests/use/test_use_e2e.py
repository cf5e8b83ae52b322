"""The issue's checks on the real packaged models (run with `pytest -m slow`): predict on a CSV of a
MiniLM classification run's test inputs reproduces its predictions.jsonl; the SmolLM2 LoRA summarization
run (chat template) predicts its own summaries, exports merged, loads in plain transformers with the
logits of base + adapter, and its card states its test ROUGE-1."""
from __future__ import annotations

import pytest
import torch

from medpeft import cli
from medpeft.config import config_from_dict

from use_fixtures import read_jsonl, write_inputs

pytestmark = pytest.mark.slow


def finished(tmp_path, raw: dict):
    from helpers import run_config

    cfg = config_from_dict(raw)
    run_dir = tmp_path / "grid" / cfg.run_id
    return run_dir, run_config(cfg, run_dir)


def test_minilm_classification_predict_reproduces_the_run(tmp_path, assets_ready):
    run_dir, _ = finished(tmp_path, {"task": "pubmed-rct", "model": "minilm-l6", "method": "lora",
                                     "data": {"train_size": 64, "val_size": 0, "test_size": 32},
                                     "train": {"max_steps": 8, "batch_size": 8, "eval_batch_size": 16}})
    saved = read_jsonl(run_dir / "predictions.jsonl")
    inputs = write_inputs(tmp_path / "test-inputs.csv", saved)
    assert cli.main(["predict", str(run_dir), "--input", str(inputs), "--output", str(tmp_path / "out.jsonl")]) == 0
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [g["prediction"] for g in got] == [s["prediction"] for s in saved]
    for g, s in zip(got, saved):
        assert list(g["probs"].values()) == pytest.approx(s["probs"], abs=2e-6)


def test_smollm2_lora_predicts_exports_merged_and_has_a_card(tmp_path, assets_ready):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, result = finished(tmp_path, {
        "task": "pubmed-conclusion", "model": "smollm2-135m", "method": "lora",
        "data": {"train_size": 8, "val_size": 0, "test_size": 4, "max_source_tokens": 128, "max_target_tokens": 32},
        "train": {"max_steps": 2, "batch_size": 4, "eval_batch_size": 4, "lr": 1e-3}})
    assert result.data["prompt_format"] == "chat-template"
    saved = read_jsonl(run_dir / "predictions.jsonl")
    inputs = write_inputs(tmp_path / "in.jsonl", saved)
    assert cli.main(["predict", str(run_dir), "--input", str(inputs), "--output", str(tmp_path / "out.jsonl")]) == 0
    assert [g["prediction"] for g in read_jsonl(tmp_path / "out.jsonl")] == [s["prediction"] for s in saved]

    out = tmp_path / "merged"
    assert cli.main(["export", str(run_dir), "--out", str(out), "--merge"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["Aspirin lowered the risk of stroke in the trial."], return_tensors="pt")
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out).eval()(**batch).logits
        base = AutoModelForCausalLM.from_pretrained(result.model_path)
        expected = PeftModel.from_pretrained(base, run_dir / "adapter").eval()(**batch).logits
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-4)
    card = (out / "README.md").read_text()
    assert f"Test ROUGE-1: {100 * result.metrics['rouge1']:.2f}" in card
    assert "<|im_start|>user" in card and "{text}" in card  # the chat template, rendered
