"""Plan-time checks (issue 27): each value that used to pass `--dry-run` and then fail or misbehave in
training fails at plan time, in `medpeft run --dry-run` and `medpeft run` alike, with exit 2, a message
naming the key, and nothing written."""
from __future__ import annotations

import re

import pytest
import yaml

from medpeft import cli
from medpeft.config import config_from_dict
from medpeft.errors import ConfigError
from medpeft.plan import MAX_PLANNED_STEPS, check_lengths, check_steps, plan_runs
from medpeft.run import execute

BASE = {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "data": {"train_size": 8, "val_size": 0, "test_size": 4}}

# Each value of the issue, the settings that carry it, and what the error must say.
ISSUE_VALUES = {
    "seed -1": ({"seed": -1}, ["seed must be in 0 .. 4294967295", "got -1"]),
    "r 0": ({"method_args": {"r": 0}}, ["method_args.r for lora (LoraConfig) must be an int >= 1", "got 0"]),
    "r -4": ({"method_args": {"r": -4}}, ["method_args.r", ">= 1", "got -4"]),
    "r sixteen": ({"method_args": {"r": "sixteen"}}, ["method_args.r", "got 'sixteen' (str)"]),
    "scheduler bogus": ({"train": {"scheduler": "bogus"}}, ["train.scheduler must be one of linear, cosine", "'bogus'"]),
    "warmup -5": ({"train": {"warmup": -5}}, ["train.warmup must be a ratio", "got -5"]),
    "lr nan": ({"train": {"lr": float("nan")}}, ["train.lr must be a finite number"]),
    "epochs nan": ({"train": {"epochs": float("nan")}}, ["train.epochs must be a finite number"]),
    "lr inf": ({"train": {"lr": float("inf")}}, ["train.lr must be a finite number"]),
    "time budget nan": ({"train": {"time_budget_s": float("nan")}}, ["train.time_budget_s must be a finite number"]),
    "max_source_tokens 100000": ({"data": {"max_source_tokens": 100000}},
                                 ["data.max_source_tokens is 100,000 tokens", "'tiny-bert' has 512 positions"]),
    "epochs 1e9": ({"train": {"epochs": 1e9}}, ["train.epochs: 1e+09 epochs", f"limit of {MAX_PLANNED_STEPS:,}"]),
    "weight_decay -1": ({"train": {"weight_decay": -1}}, ["train.weight_decay must be >= 0", "got -1"]),
}


def with_changes(changes: dict) -> dict:
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE.items()}
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    return raw


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI trained a run")

    monkeypatch.setattr(execute, "run_experiment", refuse)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", sorted(ISSUE_VALUES))
def test_each_value_fails_at_plan_time_with_exit_2_naming_the_key(case, dry_run, tmp_path, capsys, no_training, assets_ready):
    changes, needles = ISSUE_VALUES[case]
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "issue27", "base": with_changes(changes)}))
    runs_dir = tmp_path / "runs"
    code = cli.main(["run", str(grid), "--runs-dir", str(runs_dir)] + (["--dry-run"] if dry_run else []))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("medpeft: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not [p for p in runs_dir.rglob("*") if p.is_dir() and p.parent != runs_dir]  # no run folder


@pytest.mark.parametrize("grid_text", [
    "name: ../escaped\nbase: {task: pubmed-rct, model: tiny-bert, method: lora}\n",
    "name: {tmp}/abs\nbase: {{task: pubmed-rct, model: tiny-bert, method: lora}}\n",
    "base: {model: tiny-bert, method: lora, task: {name: ../../x, type: classification, path: n.jsonl, text_field: t, target_field: l}}\n",
    "base: {model: tiny-bert, method: lora, task: {name: a/b, type: classification, path: n.jsonl, text_field: t, target_field: l}}\n",
], ids=["grid ..", "grid absolute", "task ..", "task slash"])
def test_names_that_would_write_outside_the_runs_folder_exit_2_and_write_nothing(grid_text, tmp_path, capsys, no_training,
                                                                                 monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "g.yaml").write_text(grid_text.format(tmp=tmp_path) if "{tmp}" in grid_text else grid_text)
    assert cli.main(["run", "g.yaml", "--runs-dir", "runs"]) == 2
    err = capsys.readouterr().err
    assert "cannot name a folder under the runs folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["g.yaml", "work"]


# --- token lengths against the model's positions ------------------------------------------


@pytest.mark.parametrize("kind, data, generation, key", [
    ("seq_cls", {"max_source_tokens": 513}, {}, "data.max_source_tokens is 513"),
    ("token_cls", {"max_source_tokens": 600}, {}, "data.max_source_tokens is 600"),
    ("causal", {"max_source_tokens": 500, "max_target_tokens": 20}, {}, "data.max_source_tokens + data.max_target_tokens is 520"),
    ("causal", {"max_source_tokens": 500, "max_target_tokens": 32}, {"max_new_tokens": 64}, "data.max_source_tokens + generation.max_new_tokens is 564"),
    ("seq2seq", {"max_target_tokens": 600}, {}, "data.max_target_tokens is 600"),
])
def test_lengths_past_the_models_positions_are_refused(kind, data, generation, key):
    cfg = config_from_dict({**BASE, "data": data, "generation": generation})
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_lengths(cfg, kind, 512)


@pytest.mark.parametrize("kind, data", [
    ("seq_cls", {"max_source_tokens": 512}),
    ("causal", {"max_source_tokens": 384, "max_target_tokens": 128}),
    ("seq2seq", {"max_source_tokens": 512, "max_target_tokens": 512}),
])
def test_lengths_that_fit_pass(kind, data):
    check_lengths(config_from_dict({**BASE, "data": data}), kind, 512)


def test_t5s_relative_positions_have_no_limit(assets_ready):
    cfg = config_from_dict({**BASE, "task": "pubmed-conclusion", "model": "tiny-t5",
                            "data": {"train_size": 4, "val_size": 0, "test_size": 2, "max_source_tokens": 100_000}})
    assert plan_runs([cfg])[0].config.data.max_source_tokens == 100_000


def test_a_decoder_checks_source_and_target_together(assets_ready):
    cfg = config_from_dict({**BASE, "task": "pubmed-conclusion", "model": "tiny-llama",
                            "data": {"train_size": 4, "val_size": 0, "test_size": 2, "max_source_tokens": 1000, "max_target_tokens": 64}})
    with pytest.raises(ConfigError, match="1,064 tokens, but model 'tiny-llama' has 1,024 positions.*max_source_tokens: 960"):
        plan_runs([cfg])


# --- planned optimiser steps ---------------------------------------------------------------


@pytest.mark.parametrize("train, needle", [
    ({"epochs": 1e9}, "train.epochs: 1e+09 epochs of 256 training examples at 8 per batch x 1 accumulated is 32,000,000,000"),
    ({"max_steps": MAX_PLANNED_STEPS + 1}, "train.max_steps is 1,000,001"),
])
def test_a_run_planning_absurdly_many_steps_is_refused(train, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_steps(config_from_dict({**BASE, "train": train}), 256)


def test_steps_up_to_the_limit_and_untrained_runs_pass():
    check_steps(config_from_dict({**BASE, "train": {"max_steps": MAX_PLANNED_STEPS}}), 256)
    check_steps(config_from_dict({**BASE, "method": "untrained", "train": {"epochs": 1e9}}), 256)


@pytest.mark.parametrize("base, start", [
    ({"task": "pubmedqa", "data": {"test_size": 100000}}, "task 'pubmedqa' has only 500 examples"),
    ({"task": "pubmed-summarization", "model": "tiny-t5"}, "task 'pubmed-summarization' downloads its data from the hub"),
])
def test_a_task_error_is_raised_where_it_starts_and_named_once(base, start, tmp_path, capsys, assets_ready):
    """Issue 29: tasks/ raised ValueError that plan.py converted, prefixing the task a second time
    ("task 'pubmedqa': task 'pubmedqa' has only 500 examples ...")."""
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "once", "base": {**BASE, **base}}))
    assert cli.main(["run", str(grid), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medpeft: error: {start}"), err
    assert err.count(f"task '{base['task']}'") == 1, err


def test_a_loaders_own_bug_is_not_dressed_as_a_config_error(monkeypatch):
    """Only medpeft's own errors are shown as user errors; a bare ValueError from a loader is a bug and keeps
    its type (and traceback)."""
    import dataclasses

    from medpeft.plan import load_data, task_spec

    cfg = config_from_dict(BASE)

    def broken(data_cfg, online=False):
        raise ValueError("a bug in the loader")

    spec = dataclasses.replace(task_spec(cfg), load=broken)
    with pytest.raises(ValueError, match="a bug in the loader") as err:
        load_data(spec, cfg, online=False)
    assert not isinstance(err.value, ConfigError)
