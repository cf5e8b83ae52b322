"""BERTScore next to ROUGE: optional, checked before training, scored with the model and layer it records."""
from __future__ import annotations

import pytest

from medpeft.errors import ConfigError
from medpeft.plan import plan_run

from conftest import TINY_DATA, TINY_TRAIN
from helpers import checked_config, run_config

SUMMARY_RUN = {"task": "pubmed-conclusion", "model": "tiny-t5", "method": "lora", "data": TINY_DATA, "train": TINY_TRAIN}


def test_bertscore_is_computed_with_the_recorded_model_and_layer(tmp_path, assets_ready):
    from bert_score import score

    from medpeft.models import resolve_model
    from medpeft.run.record import read_result

    cfg = checked_config(dict(SUMMARY_RUN, bertscore={"model": "minilm-l6", "num_layers": 4}))
    result = run_config(cfg, tmp_path / cfg.run_id)
    assert result.evaluation["bertscore"] == {"model": "minilm-l6", "path": resolve_model("minilm-l6", online=False),
                                              "num_layers": 4, "rescaled": False}
    preds = read_result(tmp_path / cfg.run_id).predictions()
    _, _, f1 = score([p["prediction"] for p in preds], [p["reference"] for p in preds],
                     model_type=resolve_model("minilm-l6", online=False), num_layers=4, lang="en")
    assert [p["scores"]["bertscore_f1"] for p in preds] == pytest.approx(f1.tolist(), abs=1e-6)
    assert result.metrics["bertscore_f1"] == pytest.approx(float(f1.mean()), abs=1e-6)


def test_a_local_model_defaults_to_its_last_layer(assets_ready):
    plan = plan_run(checked_config(dict(SUMMARY_RUN, bertscore={"model": "minilm-l6"})))
    assert plan.bertscore[1] == 6  # MiniLM-L6 has 6 layers


def test_bertscore_is_off_unless_asked_and_leaves_the_run_id_alone():
    plain = checked_config(SUMMARY_RUN)
    assert plain.bertscore is None and "bertscore" not in plain.to_dict()
    assert checked_config(dict(SUMMARY_RUN, bertscore={"model": "minilm-l6"})).run_id != plain.run_id


def test_bertscore_errors_come_before_training(assets_ready):
    with pytest.raises(ConfigError, match="bertscore.model.*--online"):  # the study's model is on the hub
        plan_run(checked_config(dict(SUMMARY_RUN, bertscore=True)))
    with pytest.raises(ConfigError, match="bertscore scores generated text"):
        plan_run(checked_config({"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "data": TINY_DATA,
                                 "bertscore": {"model": "minilm-l6"}}))
    with pytest.raises(ConfigError, match="bertscore.num_layers"):
        checked_config(dict(SUMMARY_RUN, bertscore={"model": "minilm-l6", "num_layers": 0}))
