"""One writer per run folder: a second runner or a notebook run by hand is refused, a dead holder's lock is taken
over, a record from another host is never, and the manifest a reader sees is always whole."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from porover.run_lock import LOCK_FILE, TOKEN_ENV, RunLock, RunLocked, read_holder

ROOT = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time\nfrom porover.run_lock import RunLock\n"
        "RunLock(sys.argv[1], 'porover run holder.yaml').acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process (another token) holding the lock of ``tmp_path/smoke`` until it is killed."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "smoke")], stdout=subprocess.PIPE, text=True,
                               env=env, cwd=ROOT)
    assert process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_a_second_runner_exits_nonzero_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, holder,
                                                                                                  caplog):
    run_dir = tmp_path / "smoke"
    done = subprocess.run([sys.executable, "-m", "porover", "run", str(ROOT / "params" / "smoke.yaml"), "--stages",
                           "evaluate_base", "--outputs", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert f"is being written by pid {holder.pid} on host" in done.stderr and "porover run holder.yaml" in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # no manifest, no params copy: nothing ran

    holder.send_signal(signal.SIGKILL)  # pre-empted: no chance to remove its lock file
    holder.wait()
    assert read_holder(run_dir)["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="porover"), RunLock(run_dir, "the next run") as lock:
        assert f"taking over the lock left by pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
        assert read_holder(run_dir)["pid"] == os.getpid() and read_holder(run_dir)["command"] == "the next run"
        assert RunLock(run_dir).acquire().shared  # this process's own family (the runner's kernels) joins it
    assert lock.fd is None and not (run_dir / LOCK_FILE).exists()  # released: the file is gone


def test_a_lock_recorded_by_another_host_is_never_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "gpu-node-17", "token": "theirs",
                                                 "command": "porover run paper.yaml",
                                                 "started": "2025-01-01T00:00:00+00:00"}))
    with pytest.raises(RunLocked, match=r"recorded by host gpu-node-17 .*pid 4242.*porover run paper\.yaml.*delete"):
        RunLock(run_dir).acquire()
    assert read_holder(run_dir)["host"] == "gpu-node-17"  # left as it was


def test_a_notebook_run_by_hand_on_a_locked_run_stops_at_its_validation_cell(tmp_path, holder):
    import papermill

    out = tmp_path / "by_hand.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(ROOT / "notebooks" / "06_analysis.ipynb"), str(out), cwd=str(ROOT),
                                   parameters={"run_dir": str(tmp_path / "smoke")}, progress_bar=False)
    assert error.value.ename == "RunLocked" and f"pid {holder.pid}" in error.value.evalue
    assert not (tmp_path / "smoke" / "analysis").exists()


def test_every_stage_notebook_takes_the_lock_in_its_validation_cell():
    from porover.run_file import STAGE_TYPES, stage_type

    for name in STAGE_TYPES:
        kind = stage_type(name)
        code = ["".join(c["source"]) for c in json.loads((ROOT / "notebooks" / kind.notebook).read_text())["cells"]
                if c["cell_type"] == "code"]
        assert any(f"params = {kind.params.__name__}.from_namespace(globals()).lock_run_folder()" in c for c in code), \
            kind.notebook


def test_a_manifest_read_while_it_is_rewritten_is_never_partial(tmp_path):
    from porover.runner import _write_manifest, read_manifest

    path, stop, seen = tmp_path / "manifest.json", threading.Event(), []

    def write() -> None:
        for i in range(300):  # sizes vary, so a torn read would show as invalid JSON or a short stage list
            _write_manifest(path, {"stages": {f"s{j}": {"status": "x" * (i % 50) * 200} for j in range(i % 7 + 1)}})
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not stop.is_set():
        if path.exists():
            seen.append(len(read_manifest(tmp_path)["stages"]))  # raises on a partial file
    writer.join()
    assert len(seen) > 10 and set(seen) <= set(range(1, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left behind
