"""Tuning (`tune:`): config, groups and candidates, the choice on validation only, resume (grid and
Optuna), pruning, and the report's account of it."""
from __future__ import annotations

import json
import math

import pytest

from medpeft import grid as grid_module
from medpeft import tune
from medpeft.config import TuneConfig, expand_grid, parse_tune
from medpeft.errors import ConfigError
from medpeft.registry import METHODS
from medpeft.run import execute
from medpeft.run.record import RunResult, Status, load_results

BASE = {"task": "pubmed-rct", "model": "tiny-bert",
        "data": {"train_size": 16, "val_size": 8, "test_size": 8, "max_source_tokens": 32},
        "train": {"max_steps": 3, "batch_size": 4, "eval_batch_size": 8}}


def tuned_grid(name="tuned", methods=("lora",), seeds=(0,), tune_block=None, **base):
    spec = {"base": {**BASE, **base}, "grid": {"method": list(methods), "seed": list(seeds)},
            "tune": tune_block if tune_block is not None else {"train.lr": [1.0e-4, 1.0e-2]}}
    return expand_grid(spec, name=name)


# --- the tune: block ------------------------------------------------------------------------------

def test_tune_auto_is_the_methods_learning_rate_range():
    cfg = parse_tune("auto", "g.yaml")
    assert cfg.space == {"train.lr": "auto"} and cfg.search == "grid" and cfg.metric == "primary"
    assert tune.method_space(cfg, "lora")["train.lr"] == list(METHODS["lora"].lr_candidates)
    optuna_cfg = parse_tune({"search": "optuna", "trials": 5}, "g.yaml")
    assert optuna_cfg.space == {"train.lr": "auto"}
    lo, hi = min(METHODS["full"].lr_candidates), max(METHODS["full"].lr_candidates)
    assert tune.method_space(optuna_cfg, "full")["train.lr"] == {"low": lo, "high": hi, "log": True}


def test_every_trainable_method_has_an_auto_range_spanning_its_default():
    for name, spec in METHODS.items():
        if spec.trains:
            assert len(spec.lr_candidates) >= 3, name
            assert min(spec.lr_candidates) <= spec.default_lr * 3 and max(spec.lr_candidates) >= spec.default_lr, name


@pytest.mark.parametrize("block, message", [
    ({"data.train_size": [8, 16]}, "cannot tune 'data.train_size'"),
    ({"seed": [0, 1]}, "cannot tune 'seed'"),
    ({"train.lr": {"low": 1e-4, "high": 1e-2}}, "needs search: optuna"),
    ({"search": "optuna", "train.lr": {"low": 1e-2, "high": 1e-4}}, "low must be below high"),
    ({"method_args.r": "auto"}, "auto is a learning-rate range"),
    ({"train.lr": []}, "non-empty list"),
    ({"metric": "accuracy"}, "tune.metric must be one of primary, loss; got 'accuracy' \\(primary: the task's primary metric"),
    ({"search": "random"}, "tune.search must be one of grid, optuna; got 'random'"),
    ("sometimes", "tune must be auto or a mapping"),
])
def test_bad_tune_blocks_are_clear_errors(block, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid({"base": BASE | {"method": "lora"}, "tune": block}, name="g")


def test_tuned_axes_are_not_variants_and_groups_ignore_them():
    spec = {"base": {**BASE}, "grid": [{"method": "lora", "train.lr": 1e-3, "seed": [0, 1]},
                                     {"method": "full", "train.lr": 1e-4, "seed": [0, 1]}],
            "tune": {"train.lr": [1e-4, 1e-3]}}
    grid = expand_grid(spec, name="g")
    assert all(cfg.variant == {} for cfg in grid.runs)
    groups = tune.tuning_groups(grid_module.grid_configs(grid))
    assert [(g.first.method, len(g.runs)) for g in groups] == [("lora", 2), ("full", 2)]  # the baseline is not tuned
    assert tune.grid_candidates({"train.lr": [1, 2], "method_args.r": [4, 8]}) == [
        {"train.lr": 1, "method_args.r": 4}, {"train.lr": 1, "method_args.r": 8},
        {"train.lr": 2, "method_args.r": 4}, {"train.lr": 2, "method_args.r": 8}]


def test_a_block_tune_replaces_the_grids_and_false_leaves_the_block_untuned():
    spec = {"base": {**BASE}, "tune": {"train.lr": [1e-4, 1e-3]},
            "grid": [{"method": "lora", "train.lr": 1e-3, "tune": False},
                     {"method": "ia3", "tune": {"train.lr": [1e-2, 3e-2], "metric": "loss"}},
                     {"method": "full"}]}
    grid = expand_grid(spec, name="g")
    assert grid.tuned and grid.runs[0].tune is None and grid.runs[0].variant == {"train.lr": 1e-3}
    groups = tune.tuning_groups(grid_module.grid_configs(grid))
    assert [(g.first.method, g.space, g.tune.metric) for g in groups] == [
        ("ia3", {"train.lr": [1e-2, 3e-2]}, "loss"), ("full", {"train.lr": [1e-4, 1e-3]}, "primary")]
    assert not expand_grid({"base": {**BASE}, "grid": [{"method": "lora", "tune": False}]}, name="g").tuned
    with pytest.raises(ConfigError, match="grid block"):
        expand_grid({"base": {**BASE}, "grid": [{"method": "lora", "tune": 3}]}, name="g")


def test_choose_takes_the_best_and_the_first_of_a_tie_and_skips_failures():
    cands = [{"x": 1}, {"x": 2}, {"x": 3}, {"x": 4}]
    assert tune.choose(cands, [0.5, None, 0.7, 0.7]) == {"x": 3}
    assert tune.choose(cands, [None] * 4) is None
    assert tune.choose(cands, [0.7, 0.7, 0.5, 0.7], [0.9, 0.4, 0.1, None]) == {"x": 2}  # a tie: the lower validation loss
    ok = RunResult(run_id="r", status=Status.OK, task="t", model="m", method="lora", seed=0, config={},
                   metrics={"accuracy": 0.6}, training={"val_loss": 0.25})
    assert tune.trial_score(ok, "accuracy") == 0.6 and tune.trial_score(ok, "val_loss") == -0.25


def test_tuning_without_a_validation_split_says_which_key_to_raise(tmp_path, assets_ready):
    grid = tuned_grid(data={**BASE["data"], "val_size": 0})
    with pytest.raises(ConfigError, match=r"data.val_size is 0\); raise data.val_size"):
        grid_module.run_grid(grid, tmp_path, log=lambda *a: None)
    assert not any(tmp_path.rglob("result.json"))  # nothing trained


def test_tuning_on_a_file_whose_split_column_has_no_validation_says_to_add_some(tmp_path, assets_ready):
    """The advice was data.val_size, which cannot add records to a file's own splits ('lower data.val_size to
    at most 0' when followed)."""
    import json

    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": f"note {i}", "label": "ab"[i % 2], "split": "test" if i < 4 else "train"})
                            + "\n" for i in range(20)))
    task = {"type": "classification", "path": str(path), "text_field": "text", "target_field": "label"}
    grid = tuned_grid(task=task, model="tiny-bert", data={"max_source_tokens": 16})
    with pytest.raises(ConfigError, match="split value validation") as err:
        grid_module.run_grid(grid, tmp_path / "runs", log=lambda *a: None)
    assert str(path) in str(err.value) and "fractions" in str(err.value) and "val_size" not in str(err.value)


# --- real tiny runs -----------------------------------------------------------------------------

def scramble_test_labels(monkeypatch):
    """Every test example gets another label; train and validation are untouched."""
    from medpeft import plan

    real = plan.load_data

    def scrambled(spec, cfg, online):
        data = real(spec, cfg, online)
        labels = data.labels
        data.splits["test"] = [dict(ex, target=labels[(labels.index(ex["target"]) + 1) % len(labels)])
                               for ex in data.splits["test"]]
        return data

    monkeypatch.setattr(plan, "load_data", scrambled)


def trial_scores(grid_dir):
    return {r.run_id: (r.metrics, r.training["val_loss"]) for r in load_results(grid_dir) if r.tuning_trial}


def test_the_choice_never_sees_the_test_labels(tmp_path, monkeypatch, assets_ready):
    grid = tuned_grid(methods=("lora", "full"), tune_block={"train.lr": [1.0e-5, 3.0e-3]})
    clean = grid_module.run_grid(grid, tmp_path / "clean", log=lambda *a: None).grid_dir
    scramble_test_labels(monkeypatch)
    scrambled = grid_module.run_grid(grid, tmp_path / "scrambled", log=lambda *a: None).grid_dir

    assert trial_scores(clean) == trial_scores(scrambled) and len(trial_scores(clean)) == 4
    finals = {d: {r.method: r for r in load_results(d) if not r.tuning_trial and r.method != "untrained"}
              for d in (clean, scrambled)}
    for method in ("lora", "full"):
        a, b = finals[clean][method], finals[scrambled][method]
        assert a.config["tuning"]["chosen"] == b.config["tuning"]["chosen"]
        assert a.config["train"]["lr"] == b.config["train"]["lr"] == a.config["tuning"]["chosen"]["train.lr"]
        assert a.config["tuning"]["over"]["space"] == {"train.lr": [1.0e-5, 3.0e-3]}
        assert a.metrics["accuracy"] != b.metrics["accuracy"] or a.metrics["accuracy"] == 0  # the scramble reached test
    trial = next(r for r in load_results(clean) if r.tuning_trial)
    raw = json.loads((clean / trial.run_id / "result.json").read_text())
    assert raw["tuning_trial"] is True and raw["evaluated_on"] == "validation"
    assert raw["data"]["validation"]["examples"] == 8 and "test" not in raw["data"]


def test_tuned_report_has_a_tuning_section_and_no_trial_rows(tmp_path, assets_ready):
    from medpeft.report.build import build_report

    grid_dir = grid_module.run_grid(tuned_grid(), tmp_path, log=lambda *a: None).grid_dir
    paths = build_report(grid_dir, n_resamples=50)
    md = paths["md"].read_text()
    assert "### Tuning" in md and "Tuned on validation data" in md and "fixed learning rate" not in md
    table = md.split("### Main table")[1].split("###")[0]
    assert table.count("| tiny-bert |") == 2  # baseline and the tuned lora: no trial rows
    assert (grid_dir / "report-pubmed-rct-tuning.png").is_file()
    summary = (grid_dir / "summary.md").read_text()
    assert summary.count("| tiny-bert |") == 2


def test_the_tuning_note_names_methods_whose_candidates_all_tied(tmp_path, monkeypatch):
    """offline-clinical's drug reviews: every learning rate scored 76 % (all "positive"), so the choice
    was the validation loss's; the note says so, and names no method whose candidates differ, failed,
    or tied on another model than the one named."""
    from medpeft.report import tuning
    from medpeft.report.tuning import tied_labels, tuning_section

    def row(label, score, model="m", error=None, lr=1e-3, chosen=False):
        return {"label": label, "method": label, "model": model, "score": score, "loss": 1.0, "metric": "accuracy",
                "values": {"train.lr": lr}, "chosen": chosen, "error": error}

    rows = [row("full", 0.76), row("full", 0.76, lr=1e-4), row("lora", 0.7), row("lora", 0.76, lr=1e-4),
            row("ia3", 0.5), row("ia3", None, error="boom", lr=1e-4), row("prompt", 0.6),
            row("lora", 0.7, model="m2"), row("lora", 0.7, model="m2", lr=1e-4)]
    # ia3: a candidate failed; prompt: one candidate; lora tied on m2 only (candidates of one model are
    # never pooled with another's, whatever the label says; the report's labels name the model)
    assert tied_labels(rows) == ["full", "lora"]
    assert tied_labels(rows[:4] + [dict(r, label="lora · m2") for r in rows[7:]]) == ["full", "lora · m2"]

    def note(candidates):
        monkeypatch.setattr(tuning, "candidate_rows", lambda frame, trials: candidates)
        return tuning_section(None, [], tmp_path / "t.png")[1]

    assert "Every candidate of full scored the same on validation" in note(rows[:2] + rows[4:7])
    assert "scored the same" not in note(rows[2:7])
    assert "scored the same" not in note([dict(r, metric="val_loss") for r in rows[:2]])  # the loss chose: nothing to say


def test_a_choice_at_the_edge_of_the_candidates_is_warned():
    """offline-summarization: LoRA and prompt tuning chose their highest learning rate, so the best
    may lie beyond the range; a choice inside it, a two-candidate list or a non-numeric axis is not warned."""
    from medpeft.report.tuning import chosen_at_edge
    from medpeft.run.record import Tuning

    def row(chosen, space):  # a frame row: its tuning record, as report/frame.py keeps it
        return {"method": "lora", "variant": "", "tuned": Tuning.from_json({"role": "final", "chosen": chosen,
                                                                            "over": {"space": space}})}

    lrs = {"train.lr": [3e-4, 1e-3, 3e-3]}
    assert chosen_at_edge(row({"train.lr": 3e-3}, lrs)) == ["lora train.lr=0.003 (the highest of 0.0003–0.003)"]
    assert chosen_at_edge(row({"train.lr": 3e-4}, lrs)) == ["lora train.lr=0.0003 (the lowest of 0.0003–0.003)"]
    assert chosen_at_edge(row({"train.lr": 1e-3}, lrs)) == []
    assert chosen_at_edge(row({"train.lr": 1e-3}, {"train.lr": [1e-3, 3e-3]})) == []
    assert chosen_at_edge(row({"train.scheduler": "cosine"}, {"train.scheduler": ["linear", "cosine", "constant"]})) == []
    assert chosen_at_edge(row({"train.lr": 1e-2}, {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}})) == []


def test_untuned_report_warns_that_learning_rates_were_fixed(tmp_path, assets_ready):
    from medpeft.report.build import build_report

    spec = {"base": {**BASE, "method": "lora"}}
    grid_dir = grid_module.run_grid(expand_grid(spec, name="plain"), tmp_path, log=lambda *a: None).grid_dir
    md = build_report(grid_dir, n_resamples=50)["md"].read_text()
    assert "each method ran at a fixed learning rate; add a tune: block to compare fairly" in md.lower()
    assert "### Tuning" not in md


def test_interrupted_grid_tuning_resumes_without_retraining(tmp_path, monkeypatch, assets_ready):
    real = execute.run_experiment
    calls = []

    def interrupted(plan, run_dir, **kw):
        if (plan.config.tuning or {}).get("role") == "trial" and len([c for c in calls if c[0] == "trial"]) == 1:
            raise KeyboardInterrupt  # killed during the second trial
        calls.append(((plan.config.tuning or {}).get("role", "run"), plan.run_id))
        return real(plan, run_dir, **kw)

    monkeypatch.setattr(execute, "run_experiment", interrupted)
    grid = tuned_grid()
    with pytest.raises(KeyboardInterrupt):
        grid_module.run_grid(grid, tmp_path, log=lambda *a: None)
    first_trial = calls[0][1]

    calls.clear()
    monkeypatch.setattr(execute, "run_experiment", lambda plan, run_dir, **kw: (
        calls.append(((plan.config.tuning or {}).get("role", "run"), plan.run_id)), real(plan, run_dir, **kw))[1])
    grid_dir = grid_module.run_grid(grid, tmp_path, log=lambda *a: None).grid_dir
    assert first_trial not in [run_id for _, run_id in calls]  # the finished trial was not trained again
    assert sorted(role for role, _ in calls) == ["final", "run", "trial"]  # the other trial, the final, the baseline
    assert sum(r.tuning_trial for r in load_results(grid_dir)) == 2


def test_time_budget_stops_training(tmp_path, assets_ready):
    from helpers import run_config
    from medpeft.config import config_from_dict

    raw = {**BASE, "method": "full", "train": {"max_steps": 100_000, "batch_size": 4, "time_budget_s": 1.5}}
    cfg = config_from_dict(raw)
    result = run_config(cfg, tmp_path / cfg.run_id)
    assert result.training["stopped_by_time_budget"] is True
    assert 0 < result.training["steps"] < result.training["planned_steps"] == 100_000
    assert result.ok and result.metrics["accuracy"] is not None
    unset = config_from_dict({**BASE, "method": "full"})
    assert "time_budget_s" not in unset.to_dict()["train"]  # unset, it leaves older run ids as they were


# --- Optuna (a fake run: the search logic, not the training, is under test) -----------------------

def fake_runs(monkeypatch, calls, losses=None):
    """Runs that score each trial by how close log10(lr) is to -3 and report falling validation losses."""

    def fake(plan, run_dir, on_validation=None):
        lr = plan.config.train.lr
        calls.append(plan.run_id)
        score = 1.0 - abs(math.log10(lr) + 3.0) / 3.0
        if on_validation is not None:
            for step in range(1, 5):
                on_validation(step, (losses or {}).get(step, 2.0 - score) + 0.1 / step)
        result = RunResult.succeeded(plan.config, plan.config.variant, task_type="classification",
                                     metrics={"accuracy": score}, training={"val_loss": 2.0 - score},
                                     efficiency={"trainable_pct": 1.0}, evaluated_on="validation")
        result.write(run_dir)
        return result

    monkeypatch.setattr(execute, "run_experiment", fake)


OPTUNA_BLOCK = {"search": "optuna", "trials": 6, "train.lr": {"low": 1.0e-5, "high": 1.0e-1, "log": True}}


def test_optuna_search_chooses_on_validation_and_records_the_study(tmp_path, monkeypatch, assets_ready):
    pytest.importorskip("optuna")
    import optuna

    calls = []
    fake_runs(monkeypatch, calls)
    grid_dir = grid_module.run_grid(tuned_grid(tune_block=OPTUNA_BLOCK), tmp_path, log=lambda *a: None).grid_dir
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(grid_dir / "tuning.journal")))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert not (grid_dir / "tuning.db").exists()  # the journal is the default, safe on NFS
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6
    final = next(r for r in load_results(grid_dir) if not r.tuning_trial and r.method == "lora")
    assert final.config["train"]["lr"] == pytest.approx(study.best_params["train.lr"])
    assert final.config["tuning"]["over"]["search"] == "optuna" and final.config["tuning"]["over"]["trials"] == 6


def test_interrupted_optuna_search_resumes_where_it_stopped(tmp_path, monkeypatch, assets_ready):
    pytest.importorskip("optuna")
    calls = []
    fake_runs(monkeypatch, calls)
    real = execute.run_experiment

    def dies_on_the_fourth(plan, run_dir, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(plan, run_dir, **kw)

    monkeypatch.setattr(execute, "run_experiment", dies_on_the_fourth)
    grid = tuned_grid(tune_block=OPTUNA_BLOCK)
    with pytest.raises(KeyboardInterrupt):
        grid_module.run_grid(grid, tmp_path, log=lambda *a: None)
    assert len(calls) == 3
    monkeypatch.setattr(execute, "run_experiment", real)
    logs = []
    grid_module.run_grid(grid, tmp_path, log=logs.append)
    assert any("(3 already done)" in line for line in logs)
    trials = [c for c in calls if ".lora." in c]
    assert len(trials) == 3 + 3 + 1  # three before the kill, three after, then the final run


def test_an_edited_optuna_space_is_a_new_study_and_the_choice_stays_inside_it(tmp_path, monkeypatch, assets_ready):
    # Issue 29, item 4: after the space moved from [1e-4, 1e-3] to [1e-2, 1e-1], no trial ran and the old
    # study's 5.19e-4 was chosen, outside the new range.
    pytest.importorskip("optuna")
    calls = []
    fake_runs(monkeypatch, calls)
    old = {"search": "optuna", "trials": 3, "train.lr": {"low": 1.0e-4, "high": 1.0e-3, "log": True}}
    grid_module.run_grid(tuned_grid(tune_block=old), tmp_path, log=lambda *a: None)
    calls.clear()
    new = dict(old, **{"train.lr": {"low": 1.0e-2, "high": 1.0e-1, "log": True}})
    grid_dir = grid_module.run_grid(tuned_grid(tune_block=new), tmp_path, log=lambda *a: None).grid_dir
    assert len([c for c in calls if ".lora." in c]) == 3 + 1  # three trials in the new space, then the final run
    finals = [r for r in load_results(grid_dir) if not r.tuning_trial and r.method == "lora"
              and r.config["tuning"]["over"]["space"] == {"train.lr": new["train.lr"]}]
    assert len(finals) == 1 and 1.0e-2 <= finals[0].config["train"]["lr"] <= 1.0e-1


def test_an_optuna_group_key_holds_its_space_and_metric_and_a_grid_searchs_does_not():
    def key(block):
        return tune.tuning_groups(grid_module.grid_configs(tuned_grid(tune_block=block)))[0].key

    optuna_block = {"search": "optuna", "trials": 3, "train.lr": {"low": 1.0e-4, "high": 1.0e-3, "log": True}}
    assert key(optuna_block) != key(dict(optuna_block, **{"train.lr": {"low": 1.0e-2, "high": 1.0e-1, "log": True}}))
    assert key(optuna_block) != key(dict(optuna_block, metric="loss"))
    assert key(optuna_block) == key(dict(optuna_block, trials=8))  # more trials continue the same study
    # grid search: a trial's run id holds its values, so an edited list reuses the candidates already trained
    assert key({"train.lr": [1e-4, 1e-3]}) == key({"train.lr": [1e-4, 1e-3, 1e-2]})


def test_optuna_prunes_a_trial_whose_validation_loss_is_hopeless(tmp_path, monkeypatch, assets_ready):
    pytest.importorskip("optuna")
    calls = []
    fake_runs(monkeypatch, calls)
    real = execute.run_experiment
    count = []

    def worse_after_two(plan, run_dir, on_validation=None):
        count.append(1)
        if on_validation is not None and len(count) > 2:  # every later trial reports a terrible loss
            def hopeless(step, loss):
                on_validation(step, 50.0)
            return real(plan, run_dir, on_validation=hopeless)
        return real(plan, run_dir, on_validation=on_validation)

    monkeypatch.setattr(execute, "run_experiment", worse_after_two)
    block = dict(OPTUNA_BLOCK, trials=4)
    grid_dir = grid_module.run_grid(tuned_grid(tune_block=block), tmp_path, log=lambda *a: None).grid_dir
    trials = [r for r in load_results(grid_dir) if r.tuning_trial or "TrialPruned" in (r.error or "")]
    pruned = [r for r in trials if "TrialPruned" in (r.error or "")]
    assert len(pruned) == 2 and all("pruned at step" in r.error for r in pruned)
    md = (grid_dir / "report.md").read_text()
    assert "TrialPruned" not in md.split("### Tuning")[0]  # a pruned trial is no failure of the grid
    assert md.count("failed: TrialPruned") == 2  # it is listed with the candidates


def test_optuna_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("No module named 'optuna'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(ConfigError, match=r"pip install 'medpeft\[tune\]'"):
        tune.require_optuna()
    assert TuneConfig(space={"train.lr": [1e-3]}).search == "grid"  # grid search needs no optuna


def test_dry_run_counts_the_tuning_trials_and_checks_the_validation_split(tmp_path, capsys):
    import yaml

    from medpeft import cli

    spec = {"base": BASE, "grid": {"method": ["lora", "full"], "seed": [0, 1]}, "tune": {"train.lr": [1e-4, 1e-3, 1e-2]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    assert "tuning: 2 group(s), 6 trial run(s) on validation" in capsys.readouterr().out
    spec["base"] = {**BASE, "data": {**BASE["data"], "val_size": 0}}
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    assert "data.val_size" in capsys.readouterr().err


def test_tuning_rows_name_the_model_when_a_task_has_several(tmp_path):
    """Two models tuned in one grid: each candidate row, warning and plot line says which model it is
    (the labels were "lora (tuned lr=0.001)" for both, so the table could not be read)."""
    import pandas as pd

    from medpeft.report.tuning import candidate_rows, chosen_at_edge, tuning_lines
    from medpeft.run.record import RunResult, Tuning

    over = {"space": {"train.lr": [1e-4, 1e-3, 1e-2]}, "metric": "accuracy", "search": "grid"}
    frame = pd.DataFrame([{"method": "lora", "variant": f"tuned lr={lr:g}", "model": model, "is_baseline": False,
                           "tuned": Tuning.from_json({"role": "final", "group": f"g-{model}", "over": over,
                                                      "chosen": {"train.lr": lr}})}
                          for model, lr in (("small", 1e-2), ("big", 1e-3))])
    trials = [RunResult.from_json({"run_id": f"t.{model}.lora.{lr}", "status": "ok", "task": "t", "model": model,
                                   "method": "lora", "seed": 0, "metrics": {"accuracy": 0.5 + lr},
                                   "config": {"tuning": {"role": "trial", "group": f"g-{model}", "values": {"train.lr": lr}}}})
              for model in ("small", "big") for lr in (1e-4, 1e-3, 1e-2)]
    rows = candidate_rows(frame, trials)
    assert [(r["label"], r["chosen"]) for r in rows if r["values"]["train.lr"] == 1e-3] == [
        ("lora (tuned lr=0.01) · small", False), ("lora (tuned lr=0.001) · big", True)]
    assert chosen_at_edge(frame.iloc[0], several_models=True) == [
        "lora (tuned lr=0.01) · small train.lr=0.01 (the highest of 0.0001–0.01)"]
    _, warnings = tuning_lines(frame)
    assert "lora (tuned lr=0.01) · small train.lr=0.01" in warnings[0] and "· big" not in warnings[0]


def test_the_report_header_counts_only_the_trials_its_rows_used():
    """A grid re-run with other settings leaves its old trials in the folder (offline-clinical's header
    counted 18 unused drug-review trials among its 72); the tables ignore them, so does the count."""
    from medpeft.report.build import trials_note

    def result(run_id, tuning):
        return RunResult.from_json({"run_id": run_id, "status": "ok", "task": "t", "model": "m", "method": "lora",
                                    "seed": 0, "metrics": {"accuracy": 0.5}, "config": {"tuning": tuning}})

    runs = [result("final", {"role": "final", "group": "now"}), result("untuned", None)]
    trials = [result(f"t{i}", {"role": "trial", "group": group}) for i, group in enumerate(["now", "now", "old"])]
    assert trials_note(runs, trials) == " (and 2 tuning trials, scored on validation; 1 more from settings no run uses now, left out)"
    assert trials_note(runs, trials[:2]) == " (and 2 tuning trials, scored on validation)"


def test_a_step_validated_twice_is_reported_once(tmp_path, assets_ready):
    """The end's validation fell on the last mid-training one's step (8 steps, every 2): Optuna warned 'The
    reported value is ignored because this step=8 is already reported' at every trial."""
    from types import SimpleNamespace

    from helpers import checked_config
    from medpeft.plan import plan_run
    from medpeft.run.execute import run_experiment
    from medpeft.run.fit import ValidationWatch

    seen = []
    watch = ValidationWatch(lambda step, loss: seen.append(step))
    for step in (5, 10, 10):
        watch.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_loss": 1.0})
    assert seen == [5, 10]
    cfg = checked_config({**BASE, "method": "lora", "train": {**BASE["train"], "max_steps": 8, "batch_size": 2}})
    steps = []
    result = run_experiment(plan_run(cfg), tmp_path / "r", on_validation=lambda step, loss: steps.append(step))
    assert result.status.value == "ok" and steps[-1] == 8 and len(steps) == len(set(steps)), steps
