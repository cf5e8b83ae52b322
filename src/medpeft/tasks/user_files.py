"""Reading your own data file (JSON lines, CSV or TSV, UTF-8) into (line, record) pairs.

Only UTF-8 is read (a UTF-8 BOM is skipped, as Excel writes one). A file in another encoding fails
here with the way to convert it, named from its bytes where they show it: a UTF-16 or UTF-32 BOM, or
the NUL bytes such text has without one; a spreadsheet saved under a .csv name is told apart too.
A CSV record that spans several lines (a quoted field with line breaks) is named by its first line.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

from medpeft.errors import DataError
from medpeft.tasks.base import data_error

# UTF-32 first: its little-endian BOM begins with UTF-16's.
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
             (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
SPREADSHEETS = {b"PK\x03\x04": "an Excel workbook (.xlsx) or another zip archive",
                b"\xd0\xcf\x11\xe0": "an old Excel workbook (.xls)"}
SNIFF_BYTES = 4096  # enough to see where the NULs of UTF-16/32 text fall
MIN_NUL_SHARE = 0.05  # of the bytes: UTF-16 text of ASCII is half NULs, of CJK fewer, but a data file's
# punctuation and field names are ASCII; below this a NUL is a stray (or binary) byte
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (131,072 characters) is shorter than a long note
CSV_END_IN_QUOTES = "unexpected end of data"  # the csv module's words for a quote never closed
MAX_LISTED = 10  # problems listed in one error
DELIMITERS = {".csv": ",", ".tsv": "\t"}  # a table's suffix and its cell separator; quoting as CSV's ("a ""b""")
RECORD_SUFFIXES = (".jsonl", *DELIMITERS)  # the files a task.path or `medpeft predict --input` reads
SEPARATOR_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}


def utf8_name(path: Path) -> Path:
    """Where the advice writes the converted file: beside it, with the suffix a task.path needs."""
    return path.with_name(f"{path.stem}-utf8{path.suffix}")


def wide_encoding(raw: bytes) -> str | None:
    """UTF-16 or UTF-32 (with the byte order when there is no BOM) when the bytes show one, else None.

    Without a BOM: in UTF-32 text nearly every character has NUL bytes at 2 and 3 (little-endian) or
    0 and 1 (big-endian) of its 4; in UTF-16 the NULs of ASCII characters all fall on odd (little-endian)
    or all on even (big-endian) offsets."""
    for bom, name in WIDE_BOMS:
        if raw.startswith(bom):
            return name
    sample = raw[:SNIFF_BYTES - SNIFF_BYTES % 4]
    nuls = [i for i, byte in enumerate(sample) if byte == 0]
    if len(nuls) < MIN_NUL_SHARE * len(sample):
        return None
    share = [sum(1 for i in nuls if i % 4 == r) / max(len(sample) // 4, 1) for r in range(4)]
    if min(share[2], share[3]) > 0.9:
        return "UTF-32LE"
    if min(share[0], share[1]) > 0.9:
        return "UTF-32BE"
    odd = sum(i % 2 for i in nuls)
    if odd >= 0.95 * len(nuls):
        return "UTF-16LE"
    return "UTF-16BE" if odd <= 0.05 * len(nuls) else None


def check_text_bytes(path: Path, raw: bytes) -> None:
    """Raise a DataError naming the encoding and its conversion when the file is not 8-bit text."""
    for magic, what in SPREADSHEETS.items():
        if raw.startswith(magic):
            raise data_error(str(path), f"this is {what}, not a {path.suffix} text file",
                             "in Excel, File > Save As > 'CSV UTF-8', and point task.path at that file")
    encoding = wide_encoding(raw)
    if encoding is not None:
        raise data_error(str(path), f"the file is {encoding} text; medpeft reads UTF-8",
                         f"re-save it as UTF-8 (e.g. `iconv -f {encoding} -t UTF-8 {path} > {utf8_name(path)}`, "
                         "or your editor's Save As > UTF-8)")
    if b"\x00" in raw:
        line = 1 + line_breaks(raw[: raw.index(b"\x00")])
        raise data_error(f"{path}:{line}", "a NUL byte: this is not a text file",
                         f"give a {path.suffix} text file in UTF-8 (re-export it from the program that wrote it)")


def line_breaks(raw: bytes) -> int:
    """Line breaks in `raw`: \\n, \\r\\n or a lone \\r, as the readers count them."""
    return raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")


def decode_error(path: Path, err: UnicodeDecodeError, first_line: int = 1) -> DataError:
    """The bad byte and its line, from the bytes the decoder saw (`err.object`): for utf-8-sig
    they start after the BOM, for a JSONL line at that line, so offsets into the raw file are wrong.
    Windows-1252 is the likeliest other encoding (Excel on Windows); for its letters it agrees with Latin-1."""
    line = first_line + line_breaks(err.object[: err.start])
    return data_error(f"{path}:{line}", f"byte 0x{err.object[err.start]:02x} is not UTF-8 text",
                      f"re-save the file as UTF-8 (from Windows or Excel most likely Windows-1252: "
                      f"`iconv -f CP1252 -t UTF-8 {path} > {utf8_name(path)}`; in Excel, Save As > 'CSV UTF-8')")


def csv_rows(path: Path, text: str, strict: bool, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """(first line, cells) of every row but blank lines; a record with quoted line breaks spans lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=strict, delimiter=delimiter)
    rows, first = [], 1
    limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        for cells in reader:
            if cells:
                rows.append((first, cells))
            first = reader.line_num + 1
    except csv.Error as err:
        if strict and CSV_END_IN_QUOTES not in str(err):
            raise
        closing = "a quoted field on it is never closed: the file ends inside it" if CSV_END_IN_QUOTES in str(err) \
            else f"not valid CSV ({err})"
        raise data_error(f"{path}:{first}", f"the record starting on this line: {closing}",
                         'close the quote; a quote inside a quoted field is written twice ("")') from None
    finally:
        csv.field_size_limit(limit)
    return rows


def read_csv_records(path: Path, text: str, delimiter: str = ",") -> list[tuple[int, dict]]:
    """(first line, row) for every non-empty CSV (or TSV: `delimiter` a tab) row. Strict quoting finds a
    quote never closed (else the rest of the file reads as one field); text after a closing quote
    (`"a" ,b`) is let through, as before. A repeated column name, or a row longer than the header, is an
    error: DictReader keeps only the last column of a name, and files extra cells under None."""
    try:
        rows = csv_rows(path, text, strict=True, delimiter=delimiter)
    except csv.Error:
        rows = csv_rows(path, text, strict=False, delimiter=delimiter)
    if not rows:
        return []
    (header_line, header), records = rows[0], []
    other = next((sep for sep in SEPARATOR_NAMES if sep != delimiter and len(header) == 1 and sep in header[0]), None)
    if other:  # Excel in many European locales writes ';'; a file renamed has the other one's separator
        fix = ("rename it .tsv, or save it as comma-separated CSV (Excel: Save As > 'CSV UTF-8 (Comma delimited)')"
               if other == "\t" else "save it as comma-separated CSV (Excel: Save As > 'CSV UTF-8 (Comma delimited)') "
               "and name it .csv") + ", or as JSON lines"
        raise data_error(f"{path}:{header_line}", f"the header is one column, {header[0]!r}: the file is separated by "
                         f"{SEPARATOR_NAMES[other]}, not {SEPARATOR_NAMES[delimiter]}", fix)
    twice = sorted({name for name in header if name and header.count(name) > 1})  # Excel leaves empty ones
    if twice:
        raise data_error(f"{path}:{header_line}", f"the header names column {twice[0]!r} twice",
                         "give every column its own name")
    for line, cells in rows[1:]:
        if len(cells) > len(header):
            raise data_error(f"{path}:{line}", f"{len(cells)} cells, but the header has {len(header)} columns",
                             'quote fields that contain commas ("a, b"), or add the missing column to the header')
        if any(cell.strip() for cell in cells):
            records.append((line, dict(zip(header, cells + [None] * (len(header) - len(cells))))))
    return records


def reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_jsonl_records(path: Path, raw: bytes) -> list[tuple[int, dict]]:
    """(line, record) for every non-empty line; NaN and Infinity, which Python's json would read, are
    refused (they are not JSON, and a NaN label would become a class 'nan')."""
    records = []
    for number, line in enumerate(raw.splitlines(), 1):  # bytes split on \n, \r\n and \r only
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise decode_error(path, err, number) from None
        if not text:
            continue
        try:
            record = json.loads(text, parse_constant=reject_constant)
        except ValueError as err:
            msg = f"{err.msg}: column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)
            raise data_error(f"{path}:{number}", f"not valid JSON ({msg})",
                             "write one JSON object per line (a missing value is null)") from None
        if not isinstance(record, dict):
            raise data_error(f"{path}:{number}", "a JSON line must be an object", 'write {"field": value, ...} per line')
        try:  # JSON may escape half of a character (\\ud800); no tokenizer or file write takes it
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise data_error(f"{path}:{number}", "an escape \\ud800-\\udfff that is half of a character (a lone "
                             "surrogate)", "write the character itself, or both halves of its pair") from None
        records.append((number, record))
    return records


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-empty record of a JSONL, CSV or TSV file (UTF-8, a BOM skipped)."""
    raw = path.read_bytes()
    check_text_bytes(path, raw)
    raw = raw.removeprefix(codecs.BOM_UTF8)
    delimiter = DELIMITERS.get(path.suffix.lower())
    if delimiter is None:
        return read_jsonl_records(path, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise decode_error(path, err) from None
    return read_csv_records(path, text, delimiter)


def raise_problems(problems: list[str]) -> None:
    if problems:
        more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in the data:\n" + "\n".join(problems[:MAX_LISTED]) + more)
