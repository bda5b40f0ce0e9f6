"""Append-only JSONL files that survive a kill at any point."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def read_text(path: str | Path) -> str:
    """A data file's text, decoded as UTF-8 (a leading byte-order mark, as spreadsheet exports write, is dropped).

    Raises:
        ValueError: Bytes that are no UTF-8, naming the file, the line and column, and what was expected.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(f"{path}: line {line}, column {column}: byte {data[error.start:error.start + 1]!r} is not "
                         f"UTF-8 ({error.reason}); expected UTF-8 text: save the file as UTF-8 (e.g. from a "
                         "spreadsheet: CSV UTF-8)") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Read every complete row of a JSONL file.

    A last line cut short by a kill mid-write is dropped (and cut off the file by `JsonlStore`), so
    its row is produced again; a damaged line anywhere else is an error that names file and line.

    Args:
        path: The file; a missing file reads as no rows.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = read_text(path).split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            is_last = number == len(lines)  # complete lines end with "\n", so the tail is unterminated
            if is_last:
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({error}); expected one JSON object per "
                             "line") from error
    return rows


class JsonlStore:
    """Rows keyed by a field, appended and flushed one by one so a resumed run skips what exists.

    Args:
        path: The JSONL file (created with its folder on first write).
        key: A function from a row to its unique key.
    """

    def __init__(self, path: str | Path, key) -> None:
        self.path = Path(path)
        self.key = key
        self.rows = read_jsonl(self.path)
        self._drop_unterminated_tail()
        self.done = {self.key(row) for row in self.rows}

    def _drop_unterminated_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def __contains__(self, key) -> bool:
        return key in self.done

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: Iterable[dict]) -> None:
        """Write rows now (flushed and fsynced); rows whose key is already stored are skipped."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for row in rows:
                key = self.key(row)
                if key in self.done:
                    continue
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows.append(row)
                self.done.add(key)
            handle.flush()
            os.fsync(handle.fileno())


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write a whole JSONL file atomically (through a temporary file and a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)
