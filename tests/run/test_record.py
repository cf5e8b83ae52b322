"""The typed run result: one constructor per outcome, one reader, and the result.json keys other tools read."""
from __future__ import annotations

import json
import logging

import pytest

from medpeft.config import config_from_dict
from medpeft.run.record import RunResult, Status, load_results, read_result

CFG = {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "seed": 3, "train": {"lr": 1e-3}}
KEYS = {"run_id", "status", "error", "task", "task_type", "labels", "model", "model_path", "adapted_from", "model_kind", "method", "seed",
        "config", "variant", "metrics", "evaluation", "efficiency", "training", "data", "env", "tuning_trial", "evaluated_on"}


def test_success_round_trips_through_result_json(tmp_path):
    cfg = config_from_dict(CFG)
    cfg.variant = {"method_args.r": 4}
    result = RunResult.succeeded(cfg, cfg.variant, task_type="classification", metrics={"accuracy": 0.5})
    result.write(tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert set(on_disk) == KEYS and on_disk["status"] == "ok" and on_disk["variant"] == {"method_args.r": 4}
    again = read_result(tmp_path)
    assert again.ok and again.run_dir == tmp_path
    assert again.to_json() == result.to_json()
    assert config_from_dict(on_disk["config"]).run_id == cfg.run_id == on_disk["run_id"]


def test_failure_keeps_the_error_and_its_traceback(tmp_path):
    cfg = config_from_dict(CFG)
    try:
        raise RuntimeError("boom")
    except RuntimeError as err:
        result = RunResult.failed(cfg, {}, err)
    result.write(tmp_path)
    again = read_result(tmp_path)
    assert again.status is Status.FAILED and not again.ok
    assert again.error == "RuntimeError: boom" and "raise RuntimeError" in again.traceback
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_an_older_result_without_newer_fields_reads(tmp_path):
    old = {"run_id": "x", "status": "ok", "error": None, "task": "t", "model": "m", "method": "lora", "seed": 0,
           "config": {}, "metrics": {"accuracy": 1.0}, "efficiency": {}}
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text(json.dumps(old))
    (run,) = load_results(tmp_path)
    assert run.ok and run.variant == {} and run.labels is None and run.metrics == {"accuracy": 1.0}


def test_predictions_are_read_from_the_run_folder(tmp_path):
    cfg = config_from_dict(CFG)
    RunResult.succeeded(cfg, {}).write(tmp_path)
    (tmp_path / "predictions.jsonl").write_text('{"id": "a", "correct": 1}\n{"id": "b", "correct": 0}\n')
    assert [p["id"] for p in read_result(tmp_path).predictions()] == ["a", "b"]
    assert RunResult.succeeded(cfg, {}).predictions() == []  # not read from anywhere


OK_FIELDS = {"run_id": "x", "status": "ok", "task": "t", "model": "m", "method": "lora", "seed": 0, "config": {}}


@pytest.mark.parametrize("text", ["null", "[]", '"finished"', "3", json.dumps({**OK_FIELDS, "metrics": []}),
                                  json.dumps({**OK_FIELDS, "config": "lora"})])
def test_a_result_json_that_is_not_a_result_counts_as_unfinished_and_names_its_file(tmp_path, caplog, text):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="medpeft"):
        assert read_result(tmp_path / "x") is None and load_results(tmp_path) == []
    assert str(tmp_path / "x" / "result.json") in caplog.text and "unfinished" in caplog.text


def test_a_nan_metric_reads_as_missing_and_says_so(tmp_path, caplog):
    (tmp_path / "x").mkdir()  # json.dumps writes NaN and Infinity, as Python's json module reads them back
    metrics = {"accuracy": float("nan"), "macro_f1": float("inf"), "auroc": None, "micro_f1": "high", "f1": 0.5}
    (tmp_path / "x" / "result.json").write_text(json.dumps({**OK_FIELDS, "metrics": metrics}))
    with caplog.at_level(logging.WARNING, logger="medpeft"):
        run = read_result(tmp_path / "x")
    assert run.ok and run.metrics == {"auroc": None, "f1": 0.5}  # None: a metric that does not apply, as medpeft writes it
    assert str(tmp_path / "x" / "result.json") in caplog.text and "accuracy, macro_f1, micro_f1" in caplog.text


def test_result_files_are_strict_json_whatever_floats_they_hold(tmp_path):
    """NaN or infinity anywhere (a diverged run's forgetting score, a per-example score) is written as
    null: Python's json.dumps writes NaN/Infinity, which strict JSON readers refuse."""
    import json as strict_json

    from medpeft.run.record import write_json, write_jsonl

    write_json(tmp_path / "r.json", {"efficiency": {"forgetting": float("nan"), "ok": 1.5}, "xs": [float("inf"), 2]})
    write_jsonl(tmp_path / "p.jsonl", [{"score": float("-inf")}, {"score": 0.25}])

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    assert strict_json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {
        "efficiency": {"forgetting": None, "ok": 1.5}, "xs": [None, 2]}
    assert [strict_json.loads(line, parse_constant=refuse)["score"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == [None, 0.25]


# --- the typed sections: every reader goes through these ------------------------------------


def test_typed_sections_read_what_a_run_writes(tmp_path):
    cfg = config_from_dict(CFG)
    RunResult.succeeded(
        cfg, {}, efficiency={"trainable_params": 10, "total_params": 1000, "trainable_pct": 1.0, "adapter_bytes": 40},
        training={"steps": 6, "train_loss": 0.5, "val_loss": None, "gradient_checkpointing": False},
        data={"train": {"examples": 8, "text_pairs": 8}, "test": {"examples": 4, "truncated_sources": 1},
              "validation_examples": 2, "warnings": ["cut"], "prompt_format": "text", "instruction": ""}).write(tmp_path)
    run = read_result(tmp_path)
    assert (run.cost.trainable_params, run.cost.total_params, run.cost.trainable_pct, run.cost.adapter_bytes) == (10, 1000, 1.0, 40)
    assert run.cost.forgetting is None and run.cost.get("adapter_bytes") == 40
    assert (run.fit.steps, run.fit.train_loss, run.fit.val_loss, run.fit.gradient_checkpointing) == (6, 0.5, None, False)
    assert run.inputs.train.examples == 8 and run.inputs.train.text_pairs == 8 and run.inputs.split("test").truncated_sources == 1
    assert run.inputs.split("validation").examples is None and run.inputs.validation_examples == 2
    assert run.inputs.warnings == ("cut",) and run.inputs.prompt_format == "text" and run.inputs.instruction == ""
    assert run.tuning is None


def test_typed_sections_of_an_older_or_broken_file_read_as_missing(tmp_path):
    """An older file lacks later keys; a broken one holds null, NaN or text where a number goes: None, never
    an exception (as a NaN metric reads as missing)."""
    broken = {**OK_FIELDS, "efficiency": {"trainable_pct": float("nan"), "train_seconds": "slow", "adapter_bytes": True,
                                          "peak_memory_bytes": float("inf"), "eval_seconds": 2},
              "training": {"val_loss": float("nan"), "steps": None}, "data": {"train": [], "warnings": "cut", "per_class": 3},
              "config": {"tuning": {"values": {"train.lr": 1e-3}}}}  # a tuning record without a role: not tuned
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text(json.dumps(broken))
    run = read_result(tmp_path / "x")
    assert run.cost.trainable_pct is run.cost.train_seconds is run.cost.adapter_bytes is run.cost.peak_memory_bytes is None
    assert run.cost.eval_seconds == 2 and run.fit.val_loss is None and run.fit.steps is None
    assert run.inputs.train.examples is None and run.inputs.warnings == () and run.inputs.per_class is None
    assert run.tuning is None
    old = RunResult.from_json({k: v for k, v in OK_FIELDS.items()})  # no efficiency, training or data at all
    assert old.cost.trainable_params is None and old.fit.steps is None and old.inputs.instruction is None


def test_tuning_records_read_as_tune_writes_them():
    from medpeft.run.record import LOSS_SCORE, Tuning

    trial = Tuning.from_json({"role": "trial", "group": "g", "metric": LOSS_SCORE, "values": {"train.lr": 1e-3}})
    assert trial.is_trial and trial.scored_by_loss and trial.values == {"train.lr": 1e-3} and trial.over.space == {}
    final = Tuning.from_json({"role": "final", "group": "g", "chosen": {"train.lr": 1e-3},
                              "over": {"search": "optuna", "metric": "accuracy", "space": {"train.lr": [1e-4, 1e-2]}, "trials": 8}})
    assert not final.is_trial and not final.scored_by_loss and final.chosen == {"train.lr": 1e-3}
    assert (final.over.search, final.over.metric, final.over.trials, final.over.space) == ("optuna", "accuracy", 8, {"train.lr": [1e-4, 1e-2]})
    assert Tuning.from_json(None) is None and Tuning.from_json({}) is None


def test_cost_and_training_keys_are_the_records_fields():
    """One list of cost figures and of training figures: what execute writes is what the records read."""
    from medpeft.run.record import COST_KEYS, TRAINING_KEYS

    assert COST_KEYS == ("trainable_params", "trainable_pct", "train_seconds", "eval_seconds", "train_tokens_per_second",
                         "peak_memory_bytes", "earlier_runs_resident_bytes", "adapter_bytes", "adapter_folder_bytes", "forgetting")
    assert {"steps", "planned_steps", "train_loss", "val_loss", "resumed_from_step"} <= set(TRAINING_KEYS)


def test_dotted_is_one_key_per_setting():
    from medpeft.run.record import dotted

    config = {"seed": 0, "train": {"lr": 1e-3, "target_modules": ["q", "v"]}, "tuning": {}, "user_data": None,
              "method_args": {"loftq": {"bits": 4}}}
    assert dotted(config) == {"seed": 0, "train.lr": 1e-3, "train.target_modules": ["q", "v"], "tuning": {},
                              "user_data": None, "method_args.loftq.bits": 4}
    assert dotted(None) == {}
