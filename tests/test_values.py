"""Config values checked before anything runs or is written (issue 27): finite numbers, seeds, schedulers,
warm-up and weight decay, names that become folders, and YAML whose aliases expand past a bound."""
from __future__ import annotations

import time

import pytest

from medpeft.config import SCHEDULERS, config_from_dict, expand_grid, load_grid, parse_override
from medpeft.errors import ConfigError
from medpeft.config.values import NAME_MAX_BYTES, YAML_MAX_NODES, check_name, load_yaml

BASE = {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}


def config(**change):
    raw = dict(BASE)
    for key, value in change.items():
        block, _, field = key.partition("__")
        if field:
            raw.setdefault(block, {})[field] = value
        else:
            raw[key] = value
    return config_from_dict(raw)


# --- numbers -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["train__lr", "train__epochs", "train__time_budget_s", "train__weight_decay", "train__warmup",
                                 "generation__length_penalty", "generation__repetition_penalty"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "NaN", "inf"])
def test_every_float_field_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=rf"^{key.replace('__', '.')} must be a finite number"):
        config(**{key: value})


@pytest.mark.parametrize("key", ["seed", "data__split_seed"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_seeds_are_unsigned_32_bit(key, value):
    with pytest.raises(ConfigError, match=rf"^{key.replace('__', '.')} must be in 0 .. 4294967295.*got {value}"):
        config(**{key: value})


def test_seed_bounds_are_accepted():
    assert config(seed=0).seed == 0 and config(seed=2**32 - 1).seed == 2**32 - 1


def test_scheduler_must_be_one_that_runs_and_the_error_lists_them():
    with pytest.raises(ConfigError) as err:
        config(train__scheduler="bogus")
    assert str(err.value).startswith("train.scheduler must be one of") and "'bogus'" in str(err.value)
    assert all(name in str(err.value) for name in SCHEDULERS)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_listed_scheduler_builds_in_transformers_without_extra_settings(name):
    import torch
    from transformers import SchedulerType, get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = get_scheduler(SchedulerType(name), optimizer, num_warmup_steps=1, num_training_steps=4)
    for _ in range(4):
        optimizer.step()
        schedule.step()
    assert config(train__scheduler=name).train.scheduler == name


@pytest.mark.parametrize("value", [-5, -0.1, 2.5])
def test_warmup_is_a_ratio_or_a_whole_step_count(value):
    with pytest.raises(ConfigError, match=rf"^train.warmup must be a ratio .*got {value}"):
        config(train__warmup=value)


@pytest.mark.parametrize("value", [0, 0.1, 0.99, 1, 50])
def test_valid_warmups_are_accepted(value):
    assert config(train__warmup=value).train.warmup == value


def test_weight_decay_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"^train.weight_decay must be >= 0.*got -1"):
        config(train__weight_decay=-1)


# --- names that become folders ---------------------------------------------------------


UNSAFE_NAMES = ["../escaped", "/abs/path", "a/b", "a\\b", "..", ".", ".hidden", "x..y", "", "   ", "tab\there", "nl\nx",
                "x" * (NAME_MAX_BYTES + 1), "病" * 43]  # 43 x 3 bytes > 128


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_grid_names_that_are_not_one_safe_folder_are_refused(name):
    with pytest.raises(ConfigError, match="name .* cannot name a folder under the runs folder"):
        expand_grid({"base": BASE, "name": name}, name=name)


@pytest.mark.parametrize("name", [n for n in UNSAFE_NAMES if n])  # name: "" is unset: the file's stem names the task
def test_task_names_that_are_not_one_safe_folder_are_refused(name, tmp_path):
    with pytest.raises(ConfigError, match="^task.name .* cannot name a folder"):
        config(task={"name": name, "type": "classification", "path": str(tmp_path / "n.csv"), "text_field": "t",
                     "target_field": "l"})


def test_a_300_character_grid_name_in_a_file_is_a_config_error(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(f"name: {'x' * 300}\nbase: {{task: pubmed-rct, model: tiny-bert, method: lora}}\n")
    with pytest.raises(ConfigError, match=r"g.yaml: name 'x{60}'\.\.\. cannot name a folder.*300 bytes"):
        load_grid(path)


def test_a_data_file_stem_that_cannot_name_a_folder_asks_for_task_name(tmp_path):
    with pytest.raises(ConfigError, match="task.path's file name .* unless task.name is set"):
        config(task={"type": "classification", "path": str(tmp_path / ("n" * 200 + ".csv")), "text_field": "t",
                     "target_field": "l"})


@pytest.mark.parametrize("name", ["病历", "心脏", "notes-2024", "my_notes.v2", "Notes 2024", "x" * NAME_MAX_BYTES])
def test_safe_names_are_kept(name):
    assert check_name(name, "name") == name


def test_a_non_string_name_says_to_quote_it():
    with pytest.raises(ConfigError, match="must be a string .*quote it"):
        check_name(2024, "g.yaml: name")


def test_a_run_folder_name_over_255_bytes_is_refused(tmp_path):
    deep = tmp_path / ("m" * 200)
    deep.mkdir()
    with pytest.raises(ConfigError, match="run folder name .* over the file system's 255"):
        config(model=str(deep))


@pytest.mark.parametrize("model", ["google/flan-t5-small", "someorg/some-model"])
def test_hub_ids_with_a_slash_still_name_one_run_folder(model):
    cfg = config(model=model, task="pubmed-conclusion")
    assert "/" not in cfg.run_id and model.replace("/", "--") in cfg.run_id


# --- YAML expansion --------------------------------------------------------------------


def alias_bomb(depth: int) -> str:
    """A few hundred bytes that expand to 9**depth values, nested under method_args."""
    lines = ["name: bomb", "base:", "  task: pubmed-rct", "  model: tiny-bert", "  method: lora", "  method_args:",
             "    l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("depth", [6, 8])  # 531,441 values; 43,046,721 (the issue's: 580 MB, then out of memory)
def test_an_alias_bomb_is_refused_before_it_is_copied(tmp_path, depth):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(depth))
    assert len(path.read_bytes()) < 700
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"bomb.yaml: the YAML expands to more than {YAML_MAX_NODES:,} values once its aliases"):
        load_grid(path)
    assert time.perf_counter() - start < 2


def test_an_alias_bomb_in_a_set_override_is_refused():
    levels = ["&a0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]  # 10**6 values
    with pytest.raises(ConfigError, match="^--set method_args.x: the YAML expands to"):
        parse_override("method_args.x=[" + ", ".join(levels) + "]")


def test_shared_settings_through_aliases_still_load(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: shared\nbase: {task: pubmed-rct, model: tiny-bert, method: lora}\n"
                    "grid:\n  - {seed: [0, 1], train: &t {epochs: 1, batch_size: 4}}\n  - {method: ia3, train: *t}\n")
    assert [(r.method, r.train.batch_size) for r in load_grid(path).runs] == [("lora", 4), ("lora", 4), ("ia3", 4)]


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {x: *a}\n"])
def test_a_yaml_alias_cycle_is_a_config_error(text):
    with pytest.raises(ConfigError, match="g.yaml: a YAML alias refers to a value that contains it"):
        load_yaml(text, "g.yaml")


def test_invalid_yaml_is_a_config_error_naming_the_file():
    with pytest.raises(ConfigError, match="^g.yaml: not valid YAML"):
        load_yaml("a: [b\n", "g.yaml")


def test_a_file_name_that_cannot_name_the_grids_folder_says_where_the_name_came_from(tmp_path):
    path = tmp_path / ("g" * 140 + ".yaml")
    path.write_text("base: {task: pubmed-rct, model: tiny-bert, method: lora}\n")
    with pytest.raises(ConfigError, match=r"the grid's name \(its file name, as name: is unset\) 'g{60}'\.\.\. cannot name a folder"):
        load_grid(path)
