"""Soft prompts and prefixes take positions: on a 512-position encoder, inputs of 512 tokens plus 20
virtual tokens failed every prompt-tuning, P-tuning and prefix-tuning run ('The expanded size of the
tensor (532) must match the existing size (512)'), and clinical notes are often that long. The input is
now cut to what fits, in training, evaluation and `medpeft predict` alike, and result.json says so."""
from __future__ import annotations

import json
import random

import pytest

from medpeft.cli import main

PROMPT_METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]


@pytest.fixture(scope="module")
def long_notes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    rng, words = random.Random(0), ["patient", "fever", "cough", "acute", "chronic", "dyspnoea", "ECG", "CRP"]
    rows = [{"id": f"n{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 900))),
             "label": ["urgent", "routine"][i % 2]} for i in range(24)]
    data = folder / "notes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, data


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_long_inputs_train_and_predict_with_a_soft_prompt(method, long_notes, assets_ready):
    folder, data = long_notes
    grid = folder / f"{method}.yaml"
    grid.write_text(f"name: {method}\nbase:\n  task: {{type: classification, path: {data}, text_field: text, "
                    f"target_field: label, name: notes}}\n  model: tiny-bert\n  method: {method}\n"
                    "  train: {max_steps: 2, batch_size: 4, eval_batch_size: 4}\n")
    assert main(["run", str(grid), "--runs-dir", str(folder / "runs"), "--quiet"]) == 0
    run_dir = next((folder / "runs" / method).glob(f"*.{method}.*"))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok"
    assert "inputs cut at 492 tokens, below data.max_source_tokens=512: 20 of the model's 512 positions" in result["data"]["warnings"][0]
    assert result["config"]["data"]["max_source_tokens"] == 512  # the setting (and the run id) as written
    out = folder / f"{method}-predictions.jsonl"
    assert main(["predict", str(run_dir), "--input", str(data), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 24


def test_a_model_without_a_position_limit_or_a_method_without_virtual_tokens_is_left_alone():
    import types

    from medpeft.config import DataConfig
    from medpeft.run.encode import source_that_fits

    data = DataConfig(max_source_tokens=512, max_target_tokens=64)
    t5 = types.SimpleNamespace(config=types.SimpleNamespace(model_type="t5"))
    prompt = types.SimpleNamespace(is_prompt_learning=True, num_virtual_tokens=20,
                                   peft_type=types.SimpleNamespace(value="PROMPT_TUNING"))
    assert source_that_fits(data, t5, prompt, decoder_only=False) == (data, None)
    bert = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=512))
    assert source_that_fits(data, bert, None, decoder_only=False) == (data, None)  # lora, full: no virtual tokens
    llama = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=500))
    fitted, note = source_that_fits(data, llama, prompt, decoder_only=True)
    assert fitted.max_source_tokens == 500 - 20 - 64 and "cut at 416 tokens" in note  # a decoder keeps room for the target
