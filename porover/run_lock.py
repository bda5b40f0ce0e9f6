"""One writer per run folder: a lock file, ``<run folder>/.lock``, held while a run or a stage notebook writes.

The runner takes it for a whole ``porover run``; a stage notebook run by hand takes it in its validation cell
(`porover.config.StageParams.lock_run_folder`) and holds it until its kernel shuts down. The lock is an
``fcntl.flock`` on the file, so the operating system releases it when its holder dies however it dies; the
file's content (pid, host, start time, command) is only there to name the holder in the error a second
writer gets. The holder's children write as part of it: the holder puts its token in ``POROVER_RUN_LOCK``,
which papermill's kernels and ``accelerate launch``'s ranks inherit, and a lock whose token is that one is
theirs already. A lock left by a dead process on this host is taken over with a message; one recorded by
another host is never taken over (its holder may be alive: the error says where it runs). Readers
(``porover status``, ``report``, the browser) take no lock.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".lock"
TOKEN_ENV = "POROVER_RUN_LOCK"
log = logging.getLogger("porover")
_held: dict[Path, "RunLock"] = {}  # run folder -> the lock this process holds on it


class RunLocked(FileExistsError):
    """Another writer holds the run folder (the message names it)."""


def process_token() -> str:
    """This process's writer token: inherited from the process that started it (the runner, a kernel), else new.

    Set in the environment, so everything this process starts writes as the same writer.
    """
    token = os.environ.get(TOKEN_ENV) or uuid.uuid4().hex
    os.environ[TOKEN_ENV] = token
    return token


def describe_process() -> str:
    """What this process is, for the lock record: its command line, or that it is a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return "a Jupyter notebook kernel"
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else sys.executable


def read_holder(run_dir: str | Path) -> dict | None:
    """The record in a run folder's lock file (None: no lock file, or an empty or unreadable one)."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _alive(pid: object) -> bool:
    """Whether a process with this pid runs on this host (signal 0 checks, sends nothing)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "another process (its record is not written yet)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
            f"running: {holder.get('command')}")


class RunLock:
    """The writer lock of one run folder; `acquire` it, `release` it (or use it as a context manager).

    Args:
        run_dir: The run folder (created if missing).
        command: What this writer is, for the error another writer gets (default: `describe_process`).
    """

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / LOCK_FILE
        self.command = command or describe_process()
        self.fd: int | None = None  # open while this process holds the lock itself
        self.shared = False  # the holder is this process's writer family (the runner that started this kernel)

    def acquire(self) -> "RunLock":
        """Take the lock, or join the holder when it is this process's own writer family.

        Raises:
            RunLocked: Another writer holds it, or the record names another host.
        """
        token = process_token()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = read_holder(self.run_dir)
                if holder and holder.get("token") == token:
                    self.shared = True
                    return self
                raise RunLocked(f"{self.run_dir} is being written by {_holder_text(holder)}. One writer per run "
                                "folder: wait for it to finish, stop it, or use another --run-name. (A notebook "
                                "kernel holds the lock until it shuts down.)") from None
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)  # locked a file its holder removed as it let go: lock the new one
        holder = read_holder(self.run_dir)
        if holder and holder.get("token") != token:
            if holder.get("host") != socket.gethostname():
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise RunLocked(f"{self.run_dir} has a lock recorded by host {holder.get('host')} "
                                f"({_holder_text(holder)}), which this host cannot check. If that run is over, "
                                f"delete {self.path}.")
            # Its holder let go of the flock without removing the file: it died (or its pid is now another's).
            gone = "which is no longer running" if not _alive(holder.get("pid")) else "which no longer holds it"
            log.warning("run folder %s: taking over the lock left by %s, %s", self.run_dir, _holder_text(holder), gone)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "token": token,
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Let go (remove the file first, so a writer waiting on it finds the lock free)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def hold_run_lock(run_dir: str | Path, command: str | None = None) -> RunLock:
    """Take a run folder's lock for the rest of this process (a notebook kernel's writer lock); idempotent.

    Raises:
        RunLocked: Another writer holds it.
    """
    key = Path(run_dir).resolve()
    if key not in _held:
        _held[key] = RunLock(key, command).acquire()
    return _held[key]


@atexit.register
def _release_held() -> None:
    for lock in _held.values():
        lock.release()
