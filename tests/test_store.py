import json

import pytest

from porover.store import JsonlStore, read_jsonl, write_jsonl


def test_append_skips_known_keys_and_reload_resumes(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = JsonlStore(path, key=lambda r: r["id"])
    store.append([{"id": 1}, {"id": 2}, {"id": 1}])
    again = JsonlStore(path, key=lambda r: r["id"])
    assert 2 in again and 3 not in again and len(again) == 2
    again.append([{"id": 2}, {"id": 3}])
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 3]


def test_a_line_cut_by_a_kill_is_dropped_and_written_again(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": 1}) + "\n" + '{"id": 2, "resp')
    store = JsonlStore(path, key=lambda r: r["id"])
    assert [r["id"] for r in store.rows] == [1] and 2 not in store
    store.append([{"id": 2}])
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]
    assert path.read_text().count("\n") == 2


def test_damage_before_the_last_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl: line 2"):
        read_jsonl(path)


def test_write_jsonl_replaces_whole_file(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    write_jsonl(path, [{"a": 2}, {"a": 3}])
    assert read_jsonl(path) == [{"a": 2}, {"a": 3}]
    assert not list(path.parent.glob("*.partial"))
