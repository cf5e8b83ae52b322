"""The `medpeft` command in-process: list, run with bad grids (exit 2, nothing trained), --dry-run."""
from __future__ import annotations

import json

import pytest

from medpeft import cli
from medpeft.run import execute
from medpeft.registry import METHODS, MODELS, TASKS

GOOD = """
name: cli-demo
base: {task: pubmed-rct, model: tiny-bert, data: {train_size: 8, val_size: 0, test_size: 4}, train: {max_steps: 1}}
grid:
  - {method: [lora, ia3], seed: [0, 1]}
  - {task: pubmed-conclusion, model: tiny-t5, method: prompt_tuning}
"""


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI trained a run")

    monkeypatch.setattr(execute, "run_experiment", refuse)


def write(tmp_path, text: str, name="grid.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_list_prints_every_model_method_and_task(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for registry in (MODELS, METHODS, TASKS):
        assert registry
        for name, spec in registry.items():
            assert f"  {name} " in out, name
            assert spec.description in out


BAD_GRIDS = {
    "unknown method": ("base: {task: pubmed-rct, model: tiny-bert}\ngrid: {method: [lora, lorra]}\n", ["'lorra'", "lora", "prompt_tuning"]),
    "unknown task": ("base: {task: pubmed-rtc, model: tiny-bert, method: lora}\n", ["'pubmed-rtc'", "pubmed-rct", "pubmed-conclusion"]),
    "unknown key": ("base: {task: pubmed-rct, model: tiny-bert, method: lora, trian: {epochs: 1}}\n", ["'trian'", "train"]),
    "unknown nested key": ("base: {task: pubmed-rct, model: tiny-bert, method: lora}\ngrid: {train.epoch: [1]}\n", ["'train.epoch'", "epochs"]),
    "bad method arg": ("base: {task: pubmed-rct, model: tiny-bert, method: lora, method_args: {rank: 4}}\n", ["'rank'", "lora_alpha"]),
    "wrong type": ("base: {task: pubmed-rct, model: tiny-bert, method: lora, seed: abc}\n", ["seed", "int"]),
    # the first block is fine: nothing may train before the whole grid is checked
    "unknown model in a later block": (
        "base: {task: pubmed-rct, method: lora}\ngrid: [{model: tiny-bert}, {model: no-such-model}]\n", ["'no-such-model'", "tiny-bert"]),
    "hub model offline": ("base: {task: pubmed-conclusion, model: someorg/some-t5, method: lora}\n", ["--online"]),
    "encoder for summarization": ("base: {task: pubmed-conclusion, model: tiny-bert, method: lora}\n", ["cannot generate", "tiny-t5"]),
    "not yaml mapping": ("- lora\n- ia3\n", ["mapping"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_run_with_a_bad_grid_exits_2_with_a_clear_message(case, tmp_path, capsys, no_training, assets_ready):
    text, needles = BAD_GRIDS[case]
    runs_dir = tmp_path / "runs"
    code = cli.main(["run", write(tmp_path, text), "--runs-dir", str(runs_dir)])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("medpeft: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not runs_dir.exists()  # nothing trained, nothing written


def test_run_with_a_missing_grid_file(tmp_path, capsys, no_training):
    assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_override_exits_2(tmp_path, capsys, no_training):
    assert cli.main(["run", write(tmp_path, GOOD), "--set", "train.epochs", "--dry-run"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_run_without_a_grid_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run"])
    assert exit_info.value.code == 2
    assert "grid" in capsys.readouterr().err


def test_dry_run_prints_every_run_id_with_baselines(tmp_path, capsys, no_training, monkeypatch):
    from medpeft.config import load_grid
    from medpeft.grid import grid_configs

    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, GOOD)
    assert cli.main(["run", path, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    ids = [line for line in out if line.count(".") >= 4]
    expected = [cfg.run_id for cfg in grid_configs(load_grid(path)) if cfg.method != "untrained"]
    assert len(expected) == 5 and set(expected) <= set(ids)
    baselines = [i for i in ids if ".untrained." in i]
    assert len(baselines) == 2  # one per (model, task)
    assert any(i.startswith("pubmed-rct.tiny-bert.untrained.seed0.") for i in baselines)
    assert any(i.startswith("pubmed-conclusion.tiny-t5.untrained.seed0.") for i in baselines)
    assert len(ids) == 7 and len(set(ids)) == 7
    assert "nothing trained" in out[-1]
    assert not (tmp_path / "runs").exists()


def test_dry_run_applies_overrides(tmp_path, capsys, no_training):
    assert cli.main(["run", write(tmp_path, GOOD), "--dry-run", "--set", "seed=9"]) == 0
    ids = [line for line in capsys.readouterr().out.splitlines() if line.count(".") >= 4]
    assert ids and all(".seed9." in i for i in ids)


def test_dry_run_checks_user_data_like_the_real_run(tmp_path, capsys, no_training, assets_ready):
    # The dry run loads each task's data, so a bad line fails here, not hours into a grid.
    data = tmp_path / "notes.jsonl"
    rows = [{"note": f"Clinical note number {i}.", "label": ["urgent", "routine"][i % 2]} for i in range(20)]
    rows[4]["label"] = ""
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = write(tmp_path, "base: {model: tiny-bert, method: lora, task: {type: classification, "
                           f"path: {data}, text_field: note, target_field: label}}}}\n")
    runs_dir = tmp_path / "runs"
    code = cli.main(["run", grid, "--dry-run", "--runs-dir", str(runs_dir)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("medpeft: error: ") and f"{data}:5:" in err and "empty target" in err, err
    assert "Traceback" not in err and "nothing trained" not in out
    assert not runs_dir.exists()


@pytest.mark.parametrize("command", [["predict", "--input", "in.csv", "--output", "out.jsonl"], ["export", "--out", "exported"]])
def test_predict_and_export_on_a_folder_that_is_no_run_exit_2(tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("text\na note\n")
    assert cli.main([command[0], str(tmp_path)] + command[1:]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medpeft: error: ") and "no result.json" in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "exported").exists()


def test_export_dtype_is_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "runs/x/y", "--out", "z", "--dtype", "fp8"])
    assert exit_info.value.code == 2 and "fp32" in capsys.readouterr().err


def test_every_option_of_every_command_is_explained_in_its_help():
    """The README sends users to `--help` for every option: none may be bare (pretrain's --lr was)."""
    import argparse

    from medpeft.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    bare = [f"{name} {'/'.join(action.option_strings) or action.dest}"
            for name, sub in commands.choices.items() for action in sub._actions
            if not isinstance(action, argparse._HelpAction) and not action.help]
    assert bare == []


def test_one_formatter_shows_every_error():
    """errors.error_text: a medpeft error's message as written for the user; any other exception with its type."""
    from medpeft.errors import ConfigError, DataError, error_text

    assert error_text(ConfigError("unknown config key 'trian'")) == "unknown config key 'trian'"
    assert error_text(DataError("notes.csv:3: no text")) == "notes.csv:3: no text"
    assert error_text(KeyError("labels")) == "KeyError: 'labels'"
    assert error_text(RuntimeError("boom")) == "RuntimeError: boom"


def test_pretrain_options_and_their_defaults_come_from_pretrain_config(monkeypatch):
    """Issue 29: the defaults were written twice (cli.py and PretrainConfig); now the options are built
    from the dataclass's fields (default, type, choices, help)."""
    import dataclasses

    from medpeft.pretrain import PretrainConfig

    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    monkeypatch.setattr(fields["lr"], "default", 1.25e-3)
    monkeypatch.setattr(fields["max_tokens"], "default", 77)
    args = cli.build_parser().parse_args(["pretrain", "--model", "m", "--out", "o"])
    assert args.lr == 1.25e-3 and args.max_tokens == 77
    for name in ("max_docs", "epochs", "max_steps", "precision", "batch_size", "seed", "mlm_probability"):
        assert getattr(args, name) == fields[name].default, name
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["pretrain"].format_help().split())
    assert "(default 77)" in help_text and "{auto,fp32,bf16,fp16}" in help_text


def test_export_dtype_choices_are_the_configs():
    from medpeft.config import DTYPES

    export = cli.build_parser()._subparsers._group_actions[0].choices["export"]
    assert next(a for a in export._actions if a.dest == "dtype").choices == DTYPES
