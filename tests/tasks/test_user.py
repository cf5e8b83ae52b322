"""The user's own data: validation errors (file, line, fix), splits, and whole runs on tiny models."""
from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

from medpeft.config import ConfigError, config_from_dict
from medpeft.tasks import DataError, user_task_spec
from medpeft.tasks.user import load_user_data

from helpers import checked_config
from conftest import TINY_TRAIN

COUNTER = itertools.count()
DATA = SimpleNamespace(train_size=1, val_size=0, test_size=1, split_seed=0)
NOTES = ["Patient reports chest pain after exercise.", "No complaints today, vitals normal.",
         "Severe headache with nausea since morning.", "Follow-up visit, wound healing well.",
         "Shortness of breath when climbing stairs.", "Routine check, blood pressure controlled.",
         "Fever and cough for three days.", "Knee pain improved with physiotherapy."]


def write_jsonl(folder, records, name=None) -> str:
    path = folder / f"{name or f'notes{next(COUNTER)}'}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def notes(n=10, split=False) -> list[dict]:
    records = [{"note": NOTES[i % len(NOTES)] + f" Visit {i}.", "label": ["urgent", "routine"][i % 2],
                "summary": NOTES[i % len(NOTES)].split(",")[0]} for i in range(n)]
    if split:
        for i, r in enumerate(records):
            r["split"] = "test" if i < 2 else "train"
    return records


def mapping(path, **extra) -> dict:
    return {"type": "classification", "path": path, "text_field": "note", "target_field": "label", **extra}


def load(m: dict):
    return load_user_data("user:x", m, DATA)


# --- validation: every error names file, line and fix ----------------------------------


def check_error(err, path, line, *needles):
    msg = str(err.value)
    assert f"{path}:{line}:" in msg if line else path in msg, msg
    assert "Fix:" in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_field(tmp_path):
    records = notes()
    del records[3]["note"]
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, 4, "no field 'note'", "text_field")


@pytest.mark.parametrize("blank", ["   ", "\u200b\u2060\ufeff "])  # zero-width characters are no text either
def test_empty_text(tmp_path, blank):
    records = notes()
    records[5]["note"] = blank
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, 6, "empty text")


def test_label_not_in_the_given_label_set(tmp_path):
    records = notes()
    records[7]["label"] = "urgnet"
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path, labels=["urgent", "routine"]))
    check_error(err, path, 8, "'urgnet'", "task.labels")


def test_test_label_never_seen_in_training(tmp_path):
    records = notes(split=True)
    records[0]["label"] = "emergency"  # a test record
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, 1, "'emergency'", "train split")


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(r).encode() for r in notes(4)]
    lines[2] = '{"note": "Caf\xe9 visit", "label": "urgent"}'.encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 3, "not UTF-8", "iconv")


def test_undecodable_bytes_in_a_csv(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes(b"note,label\nfine,urgent\nalso fine,routine\nbad \xff byte,urgent\n")
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 4, "not UTF-8")


@pytest.mark.parametrize("name, bom", [("notes.csv", b""), ("bom.csv", b"\xef\xbb\xbf"), ("notes.jsonl", b"")])
def test_undecodable_byte_and_line_are_named(tmp_path, name, bom):
    # A latin-1 "ä" (0xe4) on line 3; the CSV decoder skips a BOM, so offsets must not count it.
    path = tmp_path / name
    if name.endswith(".csv"):
        rows = [b"note,label", b"fine,urgent", "K\xe4se allergy,urgent".encode("latin-1"), b"also fine,routine"]
    else:
        rows = [json.dumps(r).encode() for r in notes(4)]
        rows[2] = '{"note": "K\xe4se allergy", "label": "urgent"}'.encode("latin-1")
    path.write_bytes(bom + b"\n".join(rows) + b"\n")
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 3, "byte 0xe4 is not UTF-8")


def test_csv_row_with_more_cells_than_the_header(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("note,label\n" + "".join(f'"{n}",{["urgent", "routine"][i % 2]}\n' for i, n in enumerate(NOTES[:5]))
                    + "Chest pain, resolved,urgent\n")  # unquoted comma: 3 cells under a 2-column header
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 7, "3 cells", "2 columns", "quote")


def test_split_too_small(tmp_path):
    records = notes(6, split=True)
    for r in records[2:4]:
        r["split"] = "validation"
    records[4]["split"] = records[5]["split"] = "validation"  # only the 2 test records remain... and 0 train
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, None, "train split has 0 examples")


def test_bad_split_value_and_bad_json(tmp_path):
    records = notes(split=True)
    records[4]["split"] = "holdout"
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, 5, "'holdout'")
    bad = tmp_path / "broken.jsonl"
    bad.write_text(json.dumps(notes(1)[0]) + "\n{not json\n")
    with pytest.raises(DataError) as err:
        load(mapping(str(bad)))
    check_error(err, str(bad), 2, "not valid JSON")


def test_several_problems_are_listed_together(tmp_path):
    records = notes()
    records[1]["note"] = ""
    del records[6]["label"]
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    assert "2 problem(s)" in str(err.value) and f"{path}:2:" in str(err.value) and f"{path}:7:" in str(err.value)


@pytest.mark.parametrize("change, needle", [
    ({"txt_field": "note"}, "'txt_field'"),
    ({"type": "regression"}, "task.type"),
    ({"path": "/no/such/notes.jsonl"}, "is not a file"),
    ({"text_field": None}, "task.text_field"),
    ({"fractions": {"train": 0.5, "test": 0.2}}, "fractions"),
    ({"fractions": {"train": "most", "test": 0.2}}, "fractions"),  # was a TypeError from sum()
])
def test_bad_task_mapping_is_a_config_error(tmp_path, change, needle):
    m = {k: v for k, v in {**mapping(write_jsonl(tmp_path, notes())), **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=needle):
        checked_config({"task": m, "model": "tiny-bert", "method": "lora"})
    with pytest.raises(ConfigError, match=needle):  # raised where it starts, not converted by the plan
        user_task_spec(m)


# --- splits and names --------------------------------------------------------------------


def test_splits_from_fractions_are_stable_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path, notes(40))
    a, b = load(mapping(path)), load(mapping(path))
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 32, "validation": 4, "test": 4}
    assert a.splits == b.splits
    ids = [ex["id"] for split in a.splits.values() for ex in split]
    assert len(ids) == len(set(ids)) == 40
    assert a.labels == ["routine", "urgent"]


def test_splits_from_the_file(tmp_path):
    path = write_jsonl(tmp_path, notes(10, split=True))
    data = load(mapping(path))
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [8, 0, 2]
    assert [ex["id"] for ex in data.splits["test"]] == ["line-000001", "line-000002"]


def test_csv_multilabel(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("text,codes\n" + "".join(f'"{n}","I10; E11"\n' if i % 2 else f'"{n}",I10\n' for i, n in enumerate(NOTES * 2)))
    data = load({"type": "multilabel", "path": str(path), "text_field": "text", "target_field": "codes"})
    assert data.labels == ["E11", "I10"]
    assert sorted(map(tuple, (ex["target"] for s in data.splits.values() for ex in s))) == [("I10",)] * 8 + [("I10", "E11")] * 8


def test_config_names_the_task_and_round_trips(tmp_path, assets_ready):
    from medpeft.plan import plan_runs

    path = write_jsonl(tmp_path, notes(), name="ward-notes")
    cfg = checked_config({"task": mapping(path), "model": "tiny-bert", "method": "lora"})
    assert cfg.task == "user-ward-notes" and cfg.run_id.startswith("user-ward-notes.tiny-bert.lora.")
    again = checked_config(json.loads(json.dumps(cfg.to_dict())))
    assert again.task == cfg.task and again.run_id == cfg.run_id
    other = tmp_path / "elsewhere"
    other.mkdir()
    clash = write_jsonl(other, notes(), name="ward-notes")
    with pytest.raises(ConfigError, match="name"):  # two data sets, one name, in one grid
        plan_runs([cfg, config_from_dict({"task": mapping(clash), "model": "tiny-bert", "method": "lora"})])
    named = checked_config({"task": mapping(clash, name="ward-b"), "model": "tiny-bert", "method": "lora"})
    assert named.task == "ward-b"


# --- whole runs ------------------------------------------------------------------------


@pytest.mark.parametrize("model, task_type", [("tiny-bert", "classification"), ("tiny-llama", "summarization")])
def test_user_data_end_to_end(tmp_path, assets_ready, model, task_type):
    from helpers import run_config

    path = write_jsonl(tmp_path, notes(12, split=True))
    m = mapping(path) if task_type == "classification" else {**mapping(path), "type": "summarization", "target_field": "summary"}
    cfg = checked_config({"task": m, "model": model, "method": "lora", "train": TINY_TRAIN,
                            "data": {"max_source_tokens": 8, "max_target_tokens": 8}})
    result = run_config(cfg, tmp_path / cfg.run_id)
    assert result.status == "ok" and result.task == cfg.task and result.task_type == task_type
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    preds = [json.loads(line) for line in (tmp_path / cfg.run_id / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["line-000001", "line-000002"]
    assert (tmp_path / cfg.run_id / "adapter" / "adapter_config.json").is_file()
    data = result.data
    assert data["train"]["examples"] == 10 and 0 <= data["train"]["truncated_sources_fraction"] <= 1
    assert data["train"]["truncated_sources_fraction"] > 0.1 and any("max_source_tokens" in w for w in data["warnings"])


def test_user_task_is_planned_not_registered(tmp_path):
    from medpeft.registry import TASKS

    spec = user_task_spec({**mapping(write_jsonl(tmp_path, notes(20))), "name": "reg-check"})
    assert spec.name == "reg-check" and spec.load(DATA).type == "classification"
    checked_config({"task": {**mapping(write_jsonl(tmp_path, notes(20))), "name": "reg-check"}, "model": "tiny-bert", "method": "lora"})
    assert "reg-check" not in TASKS  # reading or checking a config never changes the registry


# --- a second text per record (task.pair_field) ------------------------------------------------


def with_context(records: list[dict]) -> list[dict]:
    return [dict(r, context=f"Seen in clinic {i % 3}.") for i, r in enumerate(records)]


def test_pair_field_gives_each_example_its_second_text(tmp_path):
    path = write_jsonl(tmp_path, with_context(notes(split=True)))
    data = load_user_data("user:x", mapping(path, pair_field="context"), DATA)
    assert all(ex["pair"].startswith("Seen in clinic ") for split in data.splits.values() for ex in split)
    records = with_context(notes())
    del records[6]["context"]
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DataError) as err:
        load(mapping(path, pair_field="context"))
    check_error(err, path, 7, "no text in field 'context'", "task.pair_field")
    with pytest.raises(ConfigError, match="pair_field"):
        user_task_spec({"type": "ner", "path": path, "pair_field": "context"})


def test_a_pair_run_predicts_new_records_with_its_own_pair_field(tmp_path, assets_ready):
    from helpers import run_config
    from medpeft.use.predict import predict_runs

    records = with_context(notes(12, split=True))
    records[5]["context"] = records[1]["context"] = ""  # empty second texts (one in test): the rows keep one set of columns
    path = write_jsonl(tmp_path, records)
    cfg = checked_config({"task": mapping(path, pair_field="context"), "model": "tiny-bert", "method": "lora",
                          "train": dict(TINY_TRAIN, lr=1e-2), "data": {"max_source_tokens": 32}})
    assert run_config(cfg, tmp_path / cfg.run_id).status == "ok"
    saved = [json.loads(line) for line in (tmp_path / cfg.run_id / "predictions.jsonl").read_text().splitlines()]
    assert [p["pair"] for p in saved] == [records[0]["context"], ""]  # the test split: the file's first 2 records
    assert json.loads((tmp_path / cfg.run_id / "result.json").read_text())["data"]["train"]["text_pairs"] == 10
    inputs = write_jsonl(tmp_path, [{"id": p["id"], "note": p["input"], "context": p["pair"]} for p in saved], "new")
    predict_runs([tmp_path / cfg.run_id], inputs, tmp_path / "out.jsonl", progress=False)
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [g["prediction"] for g in got] == [p["prediction"] for p in saved]
    for g, p in zip(got, saved):
        assert list(g["probs"].values()) == pytest.approx(p["probs"], abs=2e-6)
    without = write_jsonl(tmp_path, [{"id": p["id"], "note": p["input"]} for p in saved], "bare")
    with pytest.raises(DataError, match=r"bare.jsonl:1: no field 'context'"):
        predict_runs([tmp_path / cfg.run_id], without, tmp_path / "out2.jsonl", progress=False)


@pytest.mark.parametrize("task_type, field, value, needle", [
    ("classification", "note", 42, "field 'note' holds a number, not text"),
    ("classification", "note", ["Chest", "pain"], "field 'note' holds a list, not text"),
    ("summarization", "summary", {"text": "Chest pain"}, "field 'summary' holds an object, not text"),
])
def test_a_value_that_is_no_text_is_named_by_its_kind(tmp_path, task_type, field, value, needle):
    records = notes()
    records[2][field] = value
    path = write_jsonl(tmp_path, records)
    target = "label" if task_type == "classification" else "summary"
    with pytest.raises(DataError) as err:
        load(mapping(path, type=task_type, target_field=target))
    check_error(err, path, 3, needle)


def test_ner_from_a_csv_is_a_config_error(tmp_path):
    path = tmp_path / "bio.csv"
    path.write_text("tokens,tags\nAspirin daily,B-Drug O\n")
    with pytest.raises(ConfigError, match="reads JSON lines"):
        checked_config({"task": {"type": "ner", "path": str(path)}, "model": "tiny-bert", "method": "lora"})


# --- data.*_size on your own data: only where the grid names it ---------------------------------


def grid_of(tmp_path, base: dict, grid: dict | None = None, overrides=()):
    from medpeft.config import expand_grid
    from medpeft.plan import plan_runs

    spec = {"base": {"model": "tiny-bert", "method": "lora", **base}, **({"grid": grid} if grid else {})}
    return plan_runs(expand_grid(spec, "g", overrides=list(overrides)).runs)


def split_ids(plan, split="train") -> list[str]:
    return [ex["id"] for ex in plan.data.splits[split]]


def test_a_train_size_axis_on_your_own_data_trains_on_nested_subsets(tmp_path, assets_ready):
    """Before, data.train_size was ignored on a user file: a learning curve trained every point on the
    whole train split (same scores, a flat curve). Now each point trains on its size, the smaller inside
    the larger, with the same test split and the same label set (the whole file's)."""
    path = write_jsonl(tmp_path, notes(60))
    plans = grid_of(tmp_path, {"task": mapping(path)}, {"data.train_size": [8, 24]})
    small, large = sorted(plans, key=lambda p: p.config.data.train_size)
    assert (len(split_ids(small)), len(split_ids(large))) == (8, 24)
    assert set(split_ids(small)) < set(split_ids(large))
    assert split_ids(small, "test") == split_ids(large, "test") and len(split_ids(small, "test")) == 6
    assert small.data.labels == large.data.labels == ["routine", "urgent"]
    assert small.config.user_data["split_sizes"] == ["train_size"] and small.config.run_id != large.config.run_id


def test_your_own_data_without_sizes_keeps_whole_splits_and_its_run_id(tmp_path, assets_ready):
    path = write_jsonl(tmp_path, notes(60))
    (plan,) = grid_of(tmp_path, {"task": mapping(path), "data": {"max_source_tokens": 64}})
    assert {s: len(v) for s, v in plan.data.splits.items()} == {"train": 48, "validation": 6, "test": 6}
    assert "split_sizes" not in plan.config.user_data  # the mapping, and so the run id, as before sizes applied
    assert plan.config.run_id == checked_config({"task": mapping(path), "model": "tiny-bert", "method": "lora",
                                              "data": {"max_source_tokens": 64}}).run_id


def test_a_size_set_on_the_command_line_cuts_a_split_from_the_files_column(tmp_path, assets_ready):
    records = notes(30)
    for i, r in enumerate(records):
        r["split"] = "test" if i % 3 == 0 else "train"
    path = write_jsonl(tmp_path, records)
    (plan,) = grid_of(tmp_path, {"task": mapping(path)}, overrides=["data.test_size=4"])
    assert len(split_ids(plan, "test")) == 4 and len(split_ids(plan)) == 20
    assert set(split_ids(plan, "test")) <= {f"line-{i + 1:06d}" for i in range(0, 30, 3)}


@pytest.mark.parametrize("size, needle", [(500, "at most 48"), (2, "fewer than the 4")])
def test_a_size_your_file_cannot_give_names_the_key_and_the_file(tmp_path, assets_ready, size, needle):
    path = write_jsonl(tmp_path, notes(60))
    with pytest.raises(ConfigError) as err:
        grid_of(tmp_path, {"task": mapping(path), "data": {"train_size": size}})
    assert f"data.train_size is {size}" in str(err.value) and needle in str(err.value) and path in str(err.value)


def test_a_cut_train_split_of_one_class_says_to_raise_train_size(tmp_path):
    records = [dict(r, label="routine") for r in notes(40)]
    records[0]["label"] = "urgent"
    path = write_jsonl(tmp_path, records)
    m = mapping(path, split_sizes=["train_size"])
    data = SimpleNamespace(train_size=4, val_size=0, test_size=1, split_seed=3)
    with pytest.raises(DataError, match="raise data.train_size"):
        load_user_data("user:x", m, data)


def test_split_sizes_written_by_hand_must_be_size_keys(tmp_path):
    with pytest.raises(ConfigError, match="set by medpeft"):
        user_task_spec(mapping(write_jsonl(tmp_path, notes()), split_sizes="train"))
