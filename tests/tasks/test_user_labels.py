"""Labels of your own data: one class is refused, equal numbers are one class, and odd label values
(null, lists, true/false, blanks, invisible characters, NFC/NFD) are named or made one class."""
from __future__ import annotations

import json

import pytest

from medpeft.config import ConfigError
from medpeft.tasks import DataError

from helpers import checked_config
from test_user import NOTES, check_error, load, mapping, write_jsonl


def records(labels: list, **fields) -> list[dict]:
    return [{"note": f"{NOTES[i % len(NOTES)]} Visit {i}.", "label": label, **fields} for i, label in enumerate(labels)]


def all_labels(data) -> list:
    return [ex["target"] for split in ("train", "validation", "test") for ex in data.splits[split]]


# --- nothing to learn -------------------------------------------------------------------


def test_one_class_data_is_refused_naming_the_file_and_the_label(tmp_path):
    path = write_jsonl(tmp_path, records(["urgent"] * 12))
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, None, "every record of the file has the label 'urgent'", "100 %", "other class")


def test_a_one_class_train_split_is_refused_when_the_label_set_is_given(tmp_path):
    # task.labels names two classes, but the model would only ever see one.
    rows = records(["urgent"] * 8 + ["routine", "urgent"])
    for i, r in enumerate(rows):
        r["split"] = "test" if i >= 8 else "train"
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load(mapping(path, labels=["urgent", "routine"]))
    check_error(err, path, None, "every example of the train split has the label 'urgent'")


@pytest.mark.parametrize("labels, needle", [([["I10"]] * 10, "('I10')"), ([[]] * 10, "(no labels)"),
                                            ([["I10", "E11"]] * 10, "('E11', 'I10')")])
def test_multilabel_data_with_one_label_set_is_refused(tmp_path, labels, needle):
    path = write_jsonl(tmp_path, records(labels))
    with pytest.raises(DataError) as err:
        load({"type": "multilabel", "path": path, "text_field": "note", "target_field": "label"})
    check_error(err, path, None, "same labels", needle, "nothing to learn")


def test_multilabel_data_with_one_label_always_on_is_accepted(tmp_path):
    path = write_jsonl(tmp_path, records([["I10"], ["I10", "E11"]] * 5))
    data = load({"type": "multilabel", "path": path, "text_field": "note", "target_field": "label"})
    assert data.labels == ["E11", "I10"]


def test_ner_data_without_an_entity_is_refused(tmp_path):
    rows = [{"tokens": ["No", "acute", "distress", str(i)], "tags": ["O"] * 4} for i in range(10)]
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load({"type": "ner", "path": path})
    check_error(err, path, None, "every tag is O", "B-<type>")


# --- numbers --------------------------------------------------------------------------


def test_equal_json_numbers_are_one_class_named_as_first_written(tmp_path):
    path = write_jsonl(tmp_path, records([1, 0, 1.0, 0.0] * 3))
    data = load(mapping(path))
    assert data.labels == ["0", "1"] and sorted(set(all_labels(data))) == ["0", "1"]


def test_a_file_of_floats_keeps_its_labels_as_written(tmp_path):
    path = write_jsonl(tmp_path, records([1.0, 0.0] * 6))
    assert load(mapping(path)).labels == ["0.0", "1.0"]


def test_json_numbers_take_the_name_task_labels_gives_them(tmp_path):
    path = write_jsonl(tmp_path, records([1.0, 0.0, 1, 0] * 3))
    data = load(mapping(path, labels=[0, 1]))
    assert data.labels == ["0", "1"] and sorted(set(all_labels(data))) == ["0", "1"]


def test_one_number_written_two_ways_as_text_is_refused(tmp_path):
    # In a CSV, '250' and '250.0' may be two codes (ICD-9) or one class: medpeft does not guess.
    path = tmp_path / "notes.csv"
    path.write_text("note,label\n" + "".join(f'"{n}",{["1", "0", "1.0", "0"][i % 4]}\n' for i, n in enumerate(NOTES)))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 4, "'1.0' is label '1' (line 2)", "task.labels")
    data = load(mapping(str(path), labels=["0", "1", "1.0"]))  # listed: three classes, as the user says
    assert data.labels == ["0", "1", "1.0"]


# --- odd label values -------------------------------------------------------------------


@pytest.mark.parametrize("value, needle", [(None, "empty target"), ("", "empty target"), ("   ", "empty target"),
                                           ("\u200b\u200e", "empty target"), (["urgent"], "holds a list"),
                                           ({"name": "urgent"}, "holds an object")])
def test_a_label_that_is_no_label_is_named(tmp_path, value, needle):
    rows = records(["urgent", "routine"] * 5)
    rows[3]["label"] = value
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, 4, needle)


@pytest.mark.parametrize("variant", ["caf\u0065\u0301", "caf\u00e9\u200b", "\ufeffcaf\u00e9", "\u200fcaf\u00e9 "])
def test_labels_that_look_the_same_are_one_class(tmp_path, variant):
    # NFD (e + combining accent), and zero-width, BOM and direction marks that copy and paste leave.
    path = write_jsonl(tmp_path, records(["caf\u00e9", "th\u00e9", variant, "th\u00e9"] * 3))
    assert load(mapping(path)).labels == ["caf\u00e9", "th\u00e9"]


def test_right_to_left_labels_are_kept_as_written(tmp_path):
    labels = ["\u0639\u0627\u062c\u0644", "\u0631\u0648\u062a\u064a\u0646\u064a"]  # Arabic: urgent, routine
    path = write_jsonl(tmp_path, records(labels * 5))
    assert load(mapping(path)).labels == sorted(labels)


def test_true_and_false_are_classes_named_as_json_writes_them(tmp_path):
    path = write_jsonl(tmp_path, records([True, False] * 5))
    assert load(mapping(path)).labels == ["false", "true"]


def test_the_text_none_is_a_label(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("note,label\n" + "".join(f'"{n}",{["None", "Some"][i % 2]}\n' for i, n in enumerate(NOTES)))
    assert load(mapping(str(path))).labels == ["None", "Some"]


@pytest.mark.parametrize("labels", ["urgent", ["urgent", "urgent", "routine"], ["urgent", None], ["urgent", ["a"]]])
def test_task_labels_must_be_a_list_of_distinct_labels(tmp_path, labels):
    path = write_jsonl(tmp_path, records(["urgent", "routine"] * 5))
    with pytest.raises(ConfigError, match="task.labels must be a list of distinct labels"):
        checked_config({"task": mapping(path, labels=labels), "model": "tiny-bert", "method": "lora"})


def test_an_invisible_ner_token_is_refused(tmp_path):
    rows = [{"tokens": ["Aspirin", "for", "pain", str(i)], "tags": ["B-Drug", "O", "O", "O"]} for i in range(10)]
    rows[2]["tokens"][1] = "\u200b"  # tokenizers drop it: its word, and its tag, would vanish
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load({"type": "ner", "path": path})
    check_error(err, path, 3, "visible character")


def test_multilabel_numbers_in_json_lists_are_labels(tmp_path):
    path = write_jsonl(tmp_path, records([[1, 2], [2.0], [1]] * 4))
    data = load({"type": "multilabel", "path": path, "text_field": "note", "target_field": "label"})
    assert data.labels == ["1", "2"] and json.dumps(all_labels(data)).count('"2"') == 8


@pytest.mark.parametrize("cell", ['"[""I10"", ""E11""]"', "\"['I10', 'E11']\"", "I10;E11"])
def test_a_list_in_a_csv_cell_is_read_as_its_labels(tmp_path, cell):
    # pandas' to_csv writes a list column as ['I10', 'E11']; split on ';' it was one odd label.
    path = tmp_path / "codes.csv"
    path.write_text("note,codes\n" + "".join(f'"{n}",{cell if i % 2 else "I10"}\n' for i, n in enumerate(NOTES * 2)))
    data = load({"type": "multilabel", "path": str(path), "text_field": "note", "target_field": "codes"})
    assert data.labels == ["E11", "I10"]
    assert sorted(map(sorted, all_labels(data))) == [["E11", "I10"]] * 8 + [["I10"]] * 8


def test_a_label_in_brackets_is_still_a_label(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("note,codes\n" + "".join(f'"{n}",{"[redacted];I10" if i % 2 else "I10"}\n' for i, n in enumerate(NOTES)))
    data = load({"type": "multilabel", "path": str(path), "text_field": "note", "target_field": "codes"})
    assert data.labels == ["I10", "[redacted]"]


# --- a label written two ways, a text column read as labels -------------------------------


def test_a_label_in_another_case_is_named_with_its_line(tmp_path):
    """'Positive' once among 'positive' was a class of its own, with no warning."""
    labels = ["positive", "negative"] * 10
    labels[13] = "Positive"
    path = write_jsonl(tmp_path, records(labels, split="train") + records(["positive", "negative"], split="test"))
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, 14, "label 'Positive' (1 training record(s)) is label 'positive' (10)", "list both in task.labels")
    given = load(mapping(path, labels=["positive", "Positive", "negative"]))  # two classes, said so
    assert given.labels == ["positive", "Positive", "negative"]


def test_a_column_of_texts_is_named_as_free_text_not_a_long_list_of_labels(tmp_path):
    """An answer column read as classification labels printed every label (~1,000) in each of 10 problems."""
    answers = [f"The answer is option {i}: a long free-text explanation" for i in range(300)]
    path = write_jsonl(tmp_path, records(answers))
    with pytest.raises(DataError) as err:
        load(mapping(path))
    check_error(err, path, None, "has 240 different values in 240 training records", "type: summarization")
    assert len(str(err.value)) < 400


def test_a_label_outside_a_long_label_set_lists_only_some_of_it(tmp_path):
    labels = [f"code-{i % 120}" for i in range(480)]
    path = write_jsonl(tmp_path, records(labels, split="train") + records(["code-999"], split="test"))
    with pytest.raises(DataError) as err:
        load(mapping(path))
    assert "not in the label set" in str(err.value) and "... (120 labels)" in str(err.value)
    assert len(str(err.value)) < 800
