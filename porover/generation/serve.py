"""A real OpenAI-compatible server on loopback: ``transformers serve`` of a local model folder.

The endpoint tests and rehearsals (`porover.rehearsal`) talk to it exactly as to GPT-4o: the same client,
retries, usage accounting. It runs in its own process session, so stopping it stops it and nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_server(folder: str | Path, log_file: str | Path, timeout: float = 180) -> Iterator[str]:
    """Serve ``folder`` with ``transformers serve`` on 127.0.0.1 (CPU); yields the base URL (``.../v1``).

    Needs ``transformers[serving]`` (fastapi, uvicorn). Requests name the model by the folder's path.

    Raises:
        RuntimeError: The server did not answer within ``timeout`` seconds (its log says why).
    """
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if executable is None:
        raise RuntimeError("the `transformers` command is not installed (pip install 'transformers[serving]')")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            [executable, "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2)
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"transformers serve did not start; see {log_file}") from None
                    time.sleep(1)
            yield url + "/v1"
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: stops the server and nothing else
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
