"""Grid expansion, overrides, run ids and validation (every error before any training)."""
from __future__ import annotations

import itertools

import pytest

from medpeft.config import ExperimentConfig, config_from_dict, expand_grid, load_grid, parse_override
from medpeft.errors import ConfigError, ModelError
from medpeft.grid import grid_configs
from medpeft.models import resolve_model
from medpeft.registry import METHODS, MODELS, TASKS

from helpers import checked_config

BASE = {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}


def expand(grid=None, base=None, overrides=(), **spec):
    spec = {"base": {**BASE, **(base or {})}, **({"grid": grid} if grid is not None else {}), **spec}
    return expand_grid(spec, name="t", overrides=overrides).runs


def write_grid(tmp_path, text: str, name="g.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- expansion ---------------------------------------------------------------------


def test_no_grid_is_one_run():
    runs = expand()
    assert len(runs) == 1 and runs[0].method == "lora" and runs[0].seed == 0


def test_grid_is_the_cartesian_product_of_its_axes():
    runs = expand({"method": ["lora", "ia3", "full"], "seed": [0, 1]})
    assert len(runs) == 6
    assert [(r.method, r.seed) for r in runs] == list(itertools.product(["lora", "ia3", "full"], [0, 1]))
    assert len({r.run_id for r in runs}) == 6


def test_scalar_axis_is_a_single_value():
    runs = expand({"method": "ia3", "seed": [1, 2]})
    assert [(r.method, r.seed) for r in runs] == [("ia3", 1), ("ia3", 2)]


def test_list_of_blocks_joins_their_expansions():
    blocks = [
        {"task": "pubmed-conclusion", "model": "tiny-t5", "method": ["lora", "full"]},
        {"task": "pubmed-rct", "model": "tiny-bert", "seed": [3, 4]},
    ]
    runs = expand(blocks)
    got = [(r.task, r.model, r.method, r.seed) for r in runs]
    assert got == [
        ("pubmed-conclusion", "tiny-t5", "lora", 0),
        ("pubmed-conclusion", "tiny-t5", "full", 0),
        ("pubmed-rct", "tiny-bert", "lora", 3),
        ("pubmed-rct", "tiny-bert", "lora", 4),
    ]


def test_identical_runs_from_two_blocks_are_kept_once():
    runs = expand([{"seed": [0, 1]}, {"seed": [1, 2]}])
    assert [r.seed for r in runs] == [0, 1, 2]


def test_dotted_axes_reach_nested_fields_and_keep_base_values():
    runs = expand({"method_args.r": [4, 16], "train.lr": [1e-4, 3e-4]},
                  base={"method_args": {"lora_alpha": 8}, "train": {"batch_size": 2}})
    assert [(r.method_args, r.train.lr) for r in runs] == [
        ({"lora_alpha": 8, "r": 4}, 1e-4), ({"lora_alpha": 8, "r": 4}, 3e-4),
        ({"lora_alpha": 8, "r": 16}, 1e-4), ({"lora_alpha": 8, "r": 16}, 3e-4),
    ]
    assert all(r.train.batch_size == 2 for r in runs)
    assert len({r.run_id for r in runs}) == 4


def test_axes_do_not_leak_between_runs():
    runs = expand({"method_args.r": [4, 8]})
    assert runs[0].method_args == {"r": 4} and runs[1].method_args == {"r": 8}


@pytest.mark.parametrize("text, expected", [
    ("train.epochs=1", ("train.epochs", 1)),
    ("seed=3", ("seed", 3)),
    ("method=ia3", ("method", "ia3")),
    ("train.lr=0.001", ("train.lr", 0.001)),
    ("method_args.target_modules=[query, value]", ("method_args.target_modules", ["query", "value"])),
    (" data.test_size = 50", ("data.test_size", 50)),
    ("model=a=b", ("model", "a=b")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")


def test_overrides_apply_to_every_run_after_the_axes():
    runs = expand({"method": ["lora", "ia3"], "seed": [0, 1]}, overrides=["seed=7", "train.lr=1e-3", "data.test_size=5"])
    assert len(runs) == 2  # the seed axis collapses onto the override
    assert all(r.seed == 7 and r.train.lr == 1e-3 and r.data.test_size == 5 for r in runs)
    assert [r.method for r in runs] == ["lora", "ia3"]


def test_load_grid_reads_yaml_and_coerces_exponent_strings(tmp_path):
    # YAML 1.1 reads `3e-4` (no dot) as a string; the config must still get a float.
    path = write_grid(tmp_path, """
name: demo
base:
  task: pubmed-rct
  model: tiny-bert
  method: lora
  train: {lr: 3e-4, epochs: 1, weight_decay: 1e-2}
grid:
  seed: [0, 1]
  method_args.r: [4]
""")
    grid = load_grid(path)
    assert grid.name == "demo" and len(grid.runs) == 2
    for run in grid.runs:
        assert isinstance(run.train.lr, float) and run.train.lr == pytest.approx(3e-4)
        assert isinstance(run.train.epochs, float) and run.train.epochs == 1.0
        assert run.train.weight_decay == pytest.approx(0.01)
        assert run.method_args == {"r": 4}


def test_load_grid_name_defaults_to_file_stem_and_takes_overrides(tmp_path):
    path = write_grid(tmp_path, "base: {task: pubmed-rct, model: tiny-bert, method: ia3}\n", name="my-grid.yaml")
    grid = load_grid(path, ["train.lr=3e-3"])
    assert grid.name == "my-grid" and len(grid.runs) == 1 and grid.runs[0].train.lr == pytest.approx(3e-3)


def test_missing_grid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_grid(tmp_path / "nope.yaml")


def test_grid_file_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_grid(write_grid(tmp_path, "- a\n- b\n"))


# --- run ids -----------------------------------------------------------------------


def test_run_id_is_stable_and_readable():
    a = checked_config(dict(BASE, seed=1, method_args={"r": 8}))
    b = checked_config(dict(BASE, seed=1, method_args={"r": 8}))
    assert a is not b and a.run_id == b.run_id
    assert a.run_id.startswith("pubmed-rct.tiny-bert.lora.seed1.")


def test_run_id_survives_a_round_trip_through_result_json_config():
    cfg = checked_config(dict(BASE, seed=2, method_args={"r": 4}, train={"lr": 1e-3}))
    assert checked_config(cfg.to_dict()).run_id == cfg.run_id


def test_run_id_of_the_default_lr_equals_the_explicit_default():
    implicit = checked_config(dict(BASE))
    explicit = checked_config(dict(BASE, train={"lr": METHODS["lora"].default_lr}))
    assert implicit.run_id == explicit.run_id


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"method_args": {"r": 4}}, {"method": "ia3"}, {"train": {"lr": 1e-3}},
    {"data": {"train_size": 10}}, {"model": "tiny-llama", "task": "pubmed-conclusion"},
])
def test_run_id_changes_with_any_setting(change):
    assert checked_config(dict(BASE, **change)).run_id != checked_config(dict(BASE)).run_id


def test_run_id_of_a_hub_id_is_a_single_folder_name():
    cfg = checked_config(dict(BASE, model="google/flan-t5-small", task="pubmed-conclusion"))
    assert "/" not in cfg.run_id and "google--flan-t5-small" in cfg.run_id


# --- validation --------------------------------------------------------------------


def test_unknown_top_level_key_names_it_and_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        expand_grid({"base": BASE, "grdi": {"seed": [1]}}, name="t")
    assert "'grdi'" in str(err.value)
    for key in ("name", "base", "grid"):
        assert key in str(err.value)


def test_unknown_top_level_key_in_a_file(tmp_path):
    with pytest.raises(ConfigError, match="'runs'"):
        load_grid(write_grid(tmp_path, "base: {task: pubmed-rct, model: tiny-bert, method: lora}\nruns: 3\n"))


def test_unknown_base_key_names_it_and_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        expand(base={"trian": {"epochs": 1}})
    msg = str(err.value)
    assert "'trian'" in msg
    for key in ("task", "model", "method", "seed", "method_args", "data", "train"):
        assert key in msg


@pytest.mark.parametrize("section, key, valid", [("train", "epoch", "epochs"), ("data", "train_sizes", "train_size")])
def test_unknown_nested_key_names_the_dotted_key_and_the_valid_ones(section, key, valid):
    with pytest.raises(ConfigError) as err:
        expand({f"{section}.{key}": [1]})
    assert f"'{section}.{key}'" in str(err.value) and valid in str(err.value)


@pytest.mark.parametrize("change, key", [
    ({"seed": "abc"}, "seed"),
    ({"seed": True}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"task": 3}, "task"),
    ({"method_args": [1]}, "method_args"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"batch_size": "8x"}}, "train.batch_size"),
    ({"data": {"train_size": [8]}}, "data.train_size"),
])
def test_wrong_type_is_an_error_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=rf"^{key} must be of type"):
        checked_config(dict(BASE, **change))


def test_integral_float_is_accepted_for_an_int():
    assert checked_config(dict(BASE, seed=2.0)).seed == 2


@pytest.mark.parametrize("change, needle", [
    ({"data": {"train_size": 0}}, "data.train_size"),
    ({"data": {"val_size": -1}}, "data.val_size"),
    ({"train": {"lr": -1.0}}, "train.lr"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"epochs": 0, "max_steps": -1}}, "max_steps"),
    ({"train": {"precision": "fp8"}}, "precision"),
])
def test_out_of_range_values_are_errors(change, needle):
    with pytest.raises(ConfigError, match=needle):
        checked_config(dict(BASE, **change))


def test_missing_required_field_is_a_config_error():
    with pytest.raises(ConfigError, match="task"):
        checked_config({"model": "tiny-bert", "method": "lora"})


@pytest.mark.parametrize("key, registry", [("method", METHODS), ("task", TASKS)])
def test_unknown_method_or_task_lists_the_valid_choices(key, registry):
    with pytest.raises(ConfigError) as err:
        checked_config(dict(BASE, **{key: "nope"}))
    msg = str(err.value)
    assert "'nope'" in msg
    assert registry, f"no {key}s registered"
    for name in registry:
        assert name in msg


def test_unknown_method_args_key_names_the_peft_config_keys():
    with pytest.raises(ConfigError) as err:
        checked_config(dict(BASE, method_args={"rank": 8}))
    msg = str(err.value)
    assert "'rank'" in msg and "LoraConfig" in msg
    for valid in ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save"):
        assert valid in msg
    assert "task_type" not in msg  # set by medpeft from the model kind, not by the user


@pytest.mark.parametrize("method, key", [("prompt_tuning", "num_virtual_tokens"), ("ia3", "target_modules"),
                                         ("p_tuning", "encoder_hidden_size"), ("prefix_tuning", "num_virtual_tokens")])
def test_valid_method_args_are_accepted(method, key):
    assert key in checked_config(dict(BASE, method=method, method_args={key: 8 if "num" in key or "size" in key else ["query"]})).method_args


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.peft_class is None])
def test_methods_without_peft_config_take_no_method_args(method):
    with pytest.raises(ConfigError, match=f"{method}.*takes no method_args"):
        checked_config(dict(BASE, method=method, method_args={"r": 4}))


def test_dotted_key_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="seed"):
        expand({"seed.x": [1]})


def test_empty_axis_is_an_error():
    with pytest.raises(ConfigError, match="'seed' has no values"):
        expand({"seed": []})


def test_grid_block_must_be_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        expand([["seed", 1]])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_lr_none_resolves_to_the_method_default(method):
    cfg = checked_config(dict(BASE, method=method))
    assert cfg.train.lr == METHODS[method].default_lr
    assert isinstance(cfg, ExperimentConfig)


def test_explicit_lr_wins_over_the_method_default():
    assert checked_config(dict(BASE, train={"lr": 1e-5})).train.lr == 1e-5


def test_lr_axis_none_means_the_default_per_method():
    spec = {"base": BASE, "grid": {"method": ["lora", "prompt_tuning"], "train.lr": [None]}}
    runs = [c for c in grid_configs(expand_grid(spec, name="t")) if c.method != "untrained"]
    assert [r.train.lr for r in runs] == [METHODS["lora"].default_lr, METHODS["prompt_tuning"].default_lr]


# --- model resolution ----------------------------------------------------------------


def test_unknown_model_name_lists_registered_models():
    with pytest.raises(ModelError) as err:
        resolve_model("no-such-model", online=False)
    msg = str(err.value)
    assert "'no-such-model'" in msg
    for name in MODELS:
        assert name in msg


@pytest.mark.parametrize("name", ["someorg/some-model", "flan-t5-small"])
def test_hub_model_offline_asks_for_online(name):
    with pytest.raises(ModelError, match="--online"):
        resolve_model(name, online=False)


def test_hub_id_online_is_passed_through_without_download():
    assert resolve_model("someorg/some-model", online=True) == "someorg/some-model"
    assert resolve_model("flan-t5-base", online=True) == "google/flan-t5-base"


def test_local_model_directory(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path), online=False)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path), online=False) == str(tmp_path.resolve())


def test_a_relative_model_directory_is_recorded_absolute(tmp_path, monkeypatch):
    """result.json, a model card and a report read later from another folder must still find the model."""
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("models/mine", online=False) == str(tmp_path.resolve() / "models" / "mine")


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model(str(tmp_path / "a" / "b"), online=True)


# --- variants ------------------------------------------------------------------------


def test_expansion_records_each_runs_variant():
    runs = expand([{"method": "lora", "method_args.r": [4, 16], "seed": [0, 1]}, {"method": "full", "train.lr": [1e-5]}])
    assert [r.variant for r in runs] == [{"method_args.r": 4}] * 2 + [{"method_args.r": 16}] * 2 + [{"train.lr": 1e-5}]


def test_an_override_is_no_variant():
    runs = expand({"method_args.r": [4, 16]}, overrides=["method_args.r=8"])
    assert len(runs) == 1 and runs[0].variant == {} and runs[0].method_args == {"r": 8}


def test_variant_is_not_part_of_the_runs_identity():
    (a,) = expand({"method_args.r": [4]})
    b = config_from_dict(dict(BASE, method_args={"r": 4}))
    assert a.variant and not b.variant
    assert a.run_id == b.run_id and a.to_dict() == b.to_dict() and "variant" not in a.to_dict()


def test_baselines_and_resolved_configs_keep_or_drop_the_variant():
    spec = {"base": BASE, "grid": {"method_args.r": [4, 16]}}
    configs = grid_configs(expand_grid(spec, name="t"))
    assert [(c.method, c.variant) for c in configs] == [("untrained", {}), ("lora", {"method_args.r": 4}), ("lora", {"method_args.r": 16})]


def test_variant_is_not_a_setting():
    with pytest.raises(ConfigError, match="unknown config key 'variant'"):
        config_from_dict(dict(BASE, variant={"r": 4}))


# --- run identity ----------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_run_ids_of_registered_tasks_and_models_are_stable(precision, monkeypatch):
    """A change of these ids makes every finished run of every user run again: only on purpose. (They changed
    once, on 2026-11-23, when the decoding settings joined the config as its `generation` block.) The precision
    auto resolves to is part of a run's id: these are fp32's, what auto gives on a CPU without bf16 instructions
    (on 2026-12-05 auto became bf16 on CPUs with them: there a grid's runs get new ids unless it sets fp32)."""
    import torch

    from medpeft import dist

    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train = {"train": {"precision": precision}}
    assert checked_config(dict(BASE, **train)).run_id == "pubmed-rct.tiny-bert.lora.seed0.ca8fb6cd"
    cfg = {"task": "pubmed-conclusion", "model": "smollm2-135m", "method": "full", "seed": 2, "data": {"test_size": 50}, **train}
    assert checked_config(cfg).run_id == "pubmed-conclusion.smollm2-135m.full.seed2.23322f61"


def test_older_configs_with_train_num_beams_still_read():
    cfg = config_from_dict(dict(BASE, train={"num_beams": 4}))
    assert cfg.generation.num_beams == 4 and "num_beams" not in cfg.to_dict()["train"]
    with pytest.raises(ConfigError, match="disagree"):
        config_from_dict(dict(BASE, train={"num_beams": 4}, generation={"num_beams": 2}))


@pytest.mark.parametrize("change, key", [({"num_beams": 0}, "num_beams"), ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
                                         ({"length_penalty": 0}, "length_penalty"), ({"max_new_tokens": 0}, "max_new_tokens"),
                                         ({"batch_size": 0}, "batch_size"), ({"beams": 4}, "beams")])
def test_bad_generation_settings_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(dict(BASE, generation=change))


def test_a_data_file_edited_in_place_gets_a_new_run_id(tmp_path):
    path = tmp_path / "notes.jsonl"
    lines = [f'{{"text": "note {i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(20)]
    path.write_text("".join(lines))
    task = {"type": "classification", "path": str(path), "text_field": "text", "target_field": "label"}
    before = checked_config({"task": task, "model": "tiny-bert", "method": "lora"})
    assert before.fingerprint["data"] and before.run_id == checked_config(before.to_dict()).run_id
    path.write_text("".join(lines[:-1]) + '{"text": "a corrected note", "label": "b"}\n')
    after = checked_config({"task": task, "model": "tiny-bert", "method": "lora"})
    assert after.run_id != before.run_id


def test_a_model_retrained_into_the_same_folder_gets_a_new_run_id(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    first = checked_config(dict(BASE, model=str(folder)))
    (folder / "model.safetensors").write_bytes(b"\1" + b"\0" * ((3 << 20) - 1))  # same size, new weights
    assert checked_config(dict(BASE, model=str(folder))).run_id != first.run_id
    assert first.fingerprint == {"model": first.fingerprint["model"]}


@pytest.mark.parametrize("key", ["bertscore", "forgetting"])
def test_optional_measurements_take_true_false_or_settings(key):
    assert getattr(config_from_dict(dict(BASE, **{key: False})), key) is None
    assert getattr(config_from_dict(dict(BASE, **{key: True})), key) is not None
    assert key not in config_from_dict(BASE).to_dict()  # off: the run id is as without the option
    with pytest.raises(ConfigError, match=f"{key} must be true, false or a mapping"):
        config_from_dict(dict(BASE, **{key: 3}))
    with pytest.raises(ConfigError, match=f"unknown config key '{key}.nope'"):
        config_from_dict(dict(BASE, **{key: {"nope": 1}}))


def test_precision_auto_is_bf16_where_the_gpu_or_cpu_multiplies_it_natively_else_fp32(monkeypatch):
    import torch

    from medpeft import dist

    raw = {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # a CPU without bf16 instructions
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    cpu = checked_config(raw)
    assert config_from_dict(raw).train.precision == "auto" and cpu.train.precision == "fp32"
    assert cpu.run_id == checked_config(dict(raw, train={"precision": "fp32"})).run_id  # ids of earlier runs stay
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # AMD Zen 4 / Intel Sapphire Rapids
        monkeypatch.setattr(torch.cpu, name, lambda: True, raising=False)
        assert dist.cpu_has_bf16() and checked_config(raw).train.precision == "bf16"
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the private check: fp32, no error
    assert not dist.cpu_has_bf16()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere and newer
    assert dist.default_precision() == "bf16" and checked_config(raw).train.precision == "bf16"
    assert checked_config(raw).run_id != cpu.run_id  # another precision: another run
    # a T4 or V100: torch says yes when emulation counts (its default), no for native bf16: fp32 unless asked
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert checked_config(raw).train.precision == "fp32"
    assert checked_config(dict(raw, train={"precision": "fp16"})).train.precision == "fp16"  # an explicit choice stays


# --- the fields describe themselves (issue 29) ----------------------------------------

def config_classes():
    import medpeft.config as config
    from medpeft.pretrain import PretrainConfig

    return [config.DataConfig, config.TrainConfig, config.GenerationConfig, config.BertScoreConfig,
            config.ForgettingConfig, config.ExperimentConfig, config.TuneConfig, PretrainConfig]


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_help(cls):
    """Each setting carries its one-line help as field metadata (as peft's configs do): the CLI's options
    and their --help are built from it."""
    import dataclasses

    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    assert not missing, f"{cls.__name__} fields without metadata help: {missing}"


def literal_fields():
    import dataclasses
    import typing

    found = []
    for cls in config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if typing.get_origin(hints[f.name]) is typing.Literal:
                found.append((cls, f.name, typing.get_args(hints[f.name])))
    return found


def test_fields_with_a_fixed_set_of_values_are_literals():
    import medpeft.config as config

    found = {(cls.__name__, name): choices for cls, name, choices in literal_fields()}
    assert found[("TrainConfig", "precision")] == config.PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    assert found[("TrainConfig", "scheduler")] == config.SCHEDULERS
    assert found[("TuneConfig", "search")] == ("grid", "optuna") and found[("TuneConfig", "metric")] == ("primary", "loss")
    assert found[("PretrainConfig", "precision")] == config.PRECISIONS
    assert config.DTYPES == ("fp32", "bf16", "fp16")  # the weights' dtypes: a precision but auto (medpeft export --dtype)


@pytest.mark.parametrize("cls, name, choices", literal_fields(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_literal_field_takes_each_of_its_choices_and_nothing_else(cls, name, choices):
    """Validated from the Literal itself: the choices have one home."""
    required = {"ExperimentConfig": dict(BASE), "TuneConfig": {"space": {"train.lr": [1e-3]}},
                "PretrainConfig": {"model": "tiny-bert", "out": "out"}}.get(cls.__name__, {})
    for choice in choices:
        assert getattr(cls(**required, **{name: choice}), name) == choice
    with pytest.raises(ConfigError, match=f"must be one of {', '.join(choices)}; got 'bogus'"):
        cls(**required, **{name: "bogus"})


@pytest.mark.parametrize("override", ["user_data.path=/nonexistent.jsonl", "fingerprint.data=abc", "tuning.role=final"])
def test_what_medpeft_records_about_a_run_cannot_be_set(override):
    """--set user_data.path=... exited 0 with the same run ids: the task: mapping overwrote it."""
    with pytest.raises(ConfigError, match=f"{override.split('.')[0]} is set by medpeft"):
        expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}}, "g", overrides=[override])
