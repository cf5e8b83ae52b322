"""The real packaged models on the real MEDLINE tasks, a few steps each (run with `pytest -m slow`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medpeft.config import config_from_dict
from medpeft.run.metrics import ROUGE_KEYS
from medpeft.run.predict import predict_probs
from medpeft.run.encode import encode_examples
from medpeft.run.kinds import KINDS
from medpeft.models import resolve_model
from medpeft.registry import TASKS
from helpers import load_for_kind, run_config

pytestmark = pytest.mark.slow


def check_ok(result: dict, metric_keys: set[str]) -> None:
    assert result.status == "ok"
    assert set(result.metrics) == metric_keys
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values()), result.metrics
    assert 0 < result.efficiency["trainable_pct"] < 10


def test_smollm2_lora_on_pubmed_conclusion(tmp_path, assets_ready):
    cfg = config_from_dict({
        "task": "pubmed-conclusion", "model": "smollm2-135m", "method": "lora",
        "data": {"train_size": 8, "val_size": 0, "test_size": 4, "max_source_tokens": 128, "max_target_tokens": 32},
        "train": {"max_steps": 2, "batch_size": 4, "eval_batch_size": 4},
    })
    result = run_config(cfg, tmp_path / cfg.run_id)
    check_ok(result, set(ROUGE_KEYS))
    assert result.model_kind == "causal"
    preds = [json.loads(line) for line in (tmp_path / cfg.run_id / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and any(p["prediction"] for p in preds)  # a pretrained LM writes something
    assert result.metrics["rouge1"] > 0


def test_minilm_lora_on_pubmed_rct_reloads_identically(tmp_path, assets_ready):
    from peft import PeftModel

    cfg = config_from_dict({
        "task": "pubmed-rct", "model": "minilm-l6", "method": "lora",
        "data": {"train_size": 64, "val_size": 0, "test_size": 32},
        "train": {"max_steps": 8, "batch_size": 8, "eval_batch_size": 16},
    })
    run_dir = tmp_path / cfg.run_id
    result = run_config(cfg, run_dir)
    check_ok(result, {"accuracy", "macro_f1", "auroc"})
    assert result.model_kind == "seq_cls"
    saved = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]

    task = TASKS[cfg.task].load(cfg.data)
    torch.manual_seed(999)  # a different random head (and pooler) than in training
    base, tokenizer, new_modules = load_for_kind(resolve_model(cfg.model, online=False), "seq_cls", task.labels)
    assert "classifier" in new_modules
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    rows, _ = encode_examples(task.splits["test"], tokenizer, KINDS["seq_cls"], task.instruction, cfg.data, task.labels, for_generation=True)
    probs = predict_probs(model, tokenizer, rows, cfg.train.eval_batch_size, torch.device("cpu"))
    assert [task.labels[int(p.argmax())] for p in probs] == [p["prediction"] for p in saved]
    np.testing.assert_allclose(probs, [p["probs"] for p in saved], rtol=0, atol=2e-6)
