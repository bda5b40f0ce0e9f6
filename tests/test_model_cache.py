"""The merged-model cache stays bounded: least recently used merges go first, recent ones and the new one stay."""

import os
import time

from porover.models import prune_merged


def test_prune_drops_least_recently_used_merges_beyond_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("POROVER_CACHE", str(tmp_path))
    merged = tmp_path / "merged"
    now = time.time()
    folders = {}
    for name, age_minutes in [("oldest", 300), ("older", 200), ("old", 100), ("recent", 5), ("new", 500)]:
        folder = merged / name
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 1024)
        os.utime(folder, (now - age_minutes * 60, now - age_minutes * 60))
        folders[name] = folder
    (merged / "half.partial-123").mkdir()  # another process's merge in progress

    limit_gb = 3.5 * 1024 / 2**30  # room for three and a half folders
    removed = prune_merged(keep=folders["new"], limit_gb=limit_gb, idle_minutes=30)
    assert [f.name for f in removed] == ["oldest", "older"]
    assert sorted(f.name for f in merged.iterdir()) == ["half.partial-123", "new", "old", "recent"]
    # under the limit nothing goes; "recent" is protected by idle_minutes even when over it
    assert prune_merged(keep=folders["new"], limit_gb=10) == []
    assert [f.name for f in prune_merged(keep=folders["new"], limit_gb=0, idle_minutes=30)] == ["old"]
