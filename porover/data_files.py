"""Reading the files a dataset or a user's prompt set comes in (CSV with a header, JSON, JSONL), with errors that
name the file, the line and the expected form."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from porover.store import read_text

_CSV_FORM = ("expected a header line, then one row per line with the header's columns (a field holding a comma, "
             "a quote or a line break is quoted: \"...\")")


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of a UTF-8 CSV file with a header; a row with more or fewer fields than the header is an error.

    Raises:
        ValueError: Undecodable bytes or a malformed row, naming the file, the line and the expected form.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows: list[dict] = []
    try:
        header = next(reader, None)
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}: line {reader.line_num} has {len(fields)} field(s), the header has "
                                 f"{len(header)} ({', '.join(header)}); {_CSV_FORM}")
            rows.append(dict(zip(header, fields)))
    except csv.Error as error:
        raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({error}); {_CSV_FORM}") from None
    return rows


def read_json_records(path: Path) -> Any:
    """A JSON file's value, or a JSONL file's objects (one per line; blank lines skipped).

    Raises:
        ValueError: Undecodable bytes or invalid JSON, naming the file, the line and the expected form.
    """
    text = read_text(path)
    if path.suffix.lower() == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: line {number}, column {error.colno}: not valid JSON ({error.msg}); "
                                     "expected one JSON object per line, e.g. {\"prompt\": \"...\"}") from None
        return records
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}); expected "
                         "a list of objects, e.g. [{\"prompt\": \"...\"}]") from None
