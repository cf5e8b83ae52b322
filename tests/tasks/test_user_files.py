"""Reading your own data file: encodings (UTF-16/32, BOMs, NULs, spreadsheets), line endings, and CSV
records over several lines, each error naming the file, the line and the fix."""
from __future__ import annotations

import json

import pytest

from medpeft.tasks import DataError
from medpeft.tasks.user import read_user_examples

from test_user import NOTES, check_error, load, mapping, notes

WIDE = [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
        ("utf-32", "UTF-32"), ("utf-32-le", "UTF-32LE"), ("utf-32-be", "UTF-32BE")]


def csv_text(rows: list[tuple[str, str]]) -> str:
    return "note,label\n" + "".join(f'"{note}",{label}\n' for note, label in rows)


def jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def file_text(suffix: str) -> str:
    """Ten notes, some not ASCII (the NULs of UTF-16 must be found among CJK characters too)."""
    records = notes()
    records[1]["note"] = "患者诉胸痛，运动后加重。"
    records[2]["note"] = "Kopfschmerzen seit Tagen, Übelkeit."
    return csv_text([(r["note"], r["label"]) for r in records]) if suffix == ".csv" else jsonl_text(records)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("codec, named", WIDE)
def test_utf16_and_utf32_are_named_with_the_conversion_that_works(tmp_path, codec, named, suffix):
    path = tmp_path / f"notes{suffix}"
    text = file_text(suffix)
    path.write_bytes(text.encode(codec))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), None, f"{named} text", f"iconv -f {named} -t UTF-8 {path}", "notes-utf8")
    assert "latin" not in str(err.value).lower(), str(err.value)
    # The advice's encoding decodes the file: converted, it loads.
    fixed = tmp_path / f"notes-utf8{suffix}"
    fixed.write_text(path.read_bytes().decode(named).removeprefix("\ufeff"), encoding="utf-8")
    assert load(mapping(str(fixed))).labels == ["routine", "urgent"]


def test_other_encodings_are_told_the_likeliest_one(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes(csv_text([(n, "ab"[i % 2]) for i, n in enumerate(NOTES)]).replace("Fever", "Fi\u00e8vre")
                     .encode("cp1252"))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 8, "byte 0xe8 is not UTF-8", "iconv -f CP1252 -t UTF-8", "notes-utf8.csv")


def test_a_nul_byte_in_utf8_text_is_not_taken_for_utf16(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes(csv_text([(n, "ab"[i % 2]) for i, n in enumerate(NOTES)]).encode().replace(b"Fever", b"Fe\x00ver"))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 8, "NUL byte")
    assert "UTF-16" not in str(err.value)


@pytest.mark.parametrize("magic, needle", [(b"PK\x03\x04", "Excel workbook (.xlsx)"),
                                           (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "old Excel workbook (.xls)")])
def test_a_spreadsheet_saved_under_a_csv_name_is_recognised(tmp_path, magic, needle):
    path = tmp_path / "notes.csv"
    path.write_bytes(magic + b"\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb5\x9c" * 40)
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), None, needle, "CSV UTF-8")


@pytest.mark.parametrize("name", ["notes.jsonl", "notes.csv"])
@pytest.mark.parametrize("bom, newline", [(b"", b"\n"), (b"\xef\xbb\xbf", b"\n"), (b"", b"\r\n"),
                                          (b"\xef\xbb\xbf", b"\r\n"), (b"", b"\r")])
def test_bom_and_line_endings_read_the_same_examples(tmp_path, name, bom, newline):
    records = notes()
    text = file_text(name[-4:] if name.endswith(".csv") else ".jsonl")
    plain, odd = tmp_path / "plain" / name, tmp_path / "odd" / name
    for path, data in ((plain, text.encode()), (odd, bom + text.encode().replace(b"\n", newline))):
        path.parent.mkdir()
        path.write_bytes(data)
    assert len(records) == 10
    got, want = load(mapping(str(odd))), load(mapping(str(plain)))
    assert got.splits == want.splits and got.labels == want.labels


def test_an_error_in_a_multi_line_csv_record_names_its_first_line(tmp_path):
    # Lines 5-7 hold one record (a quoted note with line breaks) whose label is empty.
    path = tmp_path / "notes.csv"
    path.write_text('note,label\n"one",a\n"two",b\n"three",a\n"Chest pain.\nWorse on exertion.\nNo fever.",\n'
                    '"eight",b\n"nine",a\n"ten",b\n\n"Also\nlong",\n')
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 5, "empty target")
    check_error(err, str(path), 12, "empty target")  # after a blank line and two multi-line records
    assert f"{path}:7:" not in str(err.value) and f"{path}:13:" not in str(err.value)


def test_multi_line_records_are_numbered_by_their_first_line(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text('note,label\n"a\nb",x\n"c",y\n"d\n\ne",x\n"f",y\n"g",x\n')
    examples, _ = read_user_examples(mapping(str(path)))
    assert [(ex["id"], ex["text"]) for ex in examples] == [
        ("line-000002", "a\nb"), ("line-000004", "c"), ("line-000005", "d\n\ne"), ("line-000008", "f"), ("line-000009", "g")]


def test_an_unclosed_quote_names_the_line_it_opens_on(tmp_path):
    # Read leniently, the rest of the file would be one field of one record.
    path = tmp_path / "notes.csv"
    path.write_text(csv_text([(n, "ab"[i % 2]) for i, n in enumerate(NOTES)]) + '"Open quote,a\n'
                    + "".join(f"more {i},{'ab'[i % 2]}\n" for i in range(5)))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 10, "never closed", '""')


def test_text_after_a_closing_quote_is_still_read(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("note,label\n" + "".join(f'"{n}" ,{"ab"[i % 2]}\n' for i, n in enumerate(NOTES)))
    data = load(mapping(str(path)))
    assert sorted(ex["text"] for s in data.splits.values() for ex in s) == sorted(NOTES)


def test_a_repeated_column_name_is_an_error(tmp_path):
    # DictReader would keep the last 'label' column and drop the first without a word.
    path = tmp_path / "notes.csv"
    path.write_text("note,label,label\n" + "".join(f'"{n}",a,{"bc"[i % 2]}\n' for i, n in enumerate(NOTES)))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 1, "'label' twice")


@pytest.mark.parametrize("suffix, sep, shown, fix", [(".csv", ";", "semicolons, not commas", "Comma delimited"),
                                                    (".csv", "\t", "tabs, not commas", "rename it .tsv"),
                                                    (".tsv", ",", "commas, not tabs", "name it .csv")])
def test_a_file_separated_by_another_character_is_named(tmp_path, suffix, sep, shown, fix):
    path = tmp_path / f"notes{suffix}"
    path.write_text(f"note{sep}label\n" + "".join(f"{n}{sep}{'ab'[i % 2]}\n" for i, n in enumerate(NOTES)))
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 1, f"separated by {shown}", fix)


def test_a_tsv_file_reads_as_its_csv_twin(tmp_path):
    """A TSV as Drugs.com's reviews ship (pandas' to_csv(sep='\\t')): an unnamed index column, quoted cells
    with doubled quotes, commas and a line break inside a cell, Unicode; read as the same file in CSV."""
    import csv

    rows = [{"": str(40000 + i), "note": note, "label": "ab"[i % 2]} for i, note in enumerate(NOTES)]
    rows[1]["note"] = '"I recently received an injection, and it worked" (10 to 6 on the pain scale).'
    rows[2]["note"] = "Kopfschmerzen seit Tagen,\nÜbelkeit; 患者诉胸痛\tstarke"
    tables = {}
    for suffix, sep in ((".tsv", "\t"), (".csv", ",")):
        path = tmp_path / f"notes{suffix}"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["", "note", "label"], delimiter=sep)
            writer.writeheader()
            writer.writerows(rows)
        tables[suffix] = read_user_examples(mapping(str(path), id_field=""))[0]
    assert [(ex["text"], ex["target"]) for ex in tables[".tsv"]] == [(r["note"], r["label"]) for r in rows]
    assert tables[".tsv"] == tables[".csv"]
    assert [ex["_line"] for ex in tables[".tsv"]][:4] == [2, 3, 4, 6]  # the record with a line break spans 4-5


def test_empty_column_names_may_repeat(tmp_path):
    # Excel writes trailing empty columns ("note,label,,"): unnamed, so nothing is lost.
    path = tmp_path / "notes.csv"
    path.write_text("note,label,,\n" + "".join(f'"{n}",{"ab"[i % 2]},,\n' for i, n in enumerate(NOTES)))
    assert load(mapping(str(path))).labels == ["a", "b"]


def test_a_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    long_note = "Long discharge summary. " * 8000  # 192,000 characters; the csv default limit is 131,072
    path = tmp_path / "notes.csv"
    path.write_text(csv_text([(n, "ab"[i % 2]) for i, n in enumerate(NOTES)] + [(long_note, "a")]))
    data = load(mapping(str(path)))
    assert max(len(ex["text"]) for s in data.splits.values() for ex in s) == len(long_note.strip())


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_json_lines_is_refused(tmp_path, constant):
    path = tmp_path / "notes.jsonl"
    path.write_text(jsonl_text(notes()[:4]) + f'{{"note": "x", "label": {constant}}}\n')
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 5, "not valid JSON", f"{constant} is not JSON", "null")


def test_a_lone_surrogate_escape_is_refused(tmp_path):
    # json reads "\ud800" as half a character; the tokenizer would fail on it mid-run.
    path = tmp_path / "notes.jsonl"
    path.write_text(jsonl_text(notes()[:3]) + '{"note": "pain \\ud800 score", "label": "urgent"}\n'
                    + '{"note": "smile \\ud83d\\ude00 fine", "label": "routine"}\n')
    with pytest.raises(DataError) as err:
        load(mapping(str(path)))
    check_error(err, str(path), 4, "lone surrogate")
